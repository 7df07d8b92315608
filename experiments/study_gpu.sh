#!/usr/bin/env bash
# The GPU precision study: training under each policy, side by side on one GPU (one process per
# data set and policy), then merged. Run from a checkout with the data sets under data/ (see
# experiments/results/precision_study/README.md) after `source experiments/gpu_env.sh`:
#   SETS="ethanol aspirin" bash experiments/study_gpu.sh OUT [MINUTES]
# SETS (default: all four) and POLICIES pick the data sets and policies, so that the study fits in
# several shorter calls; NFP64 (default 100) test configs for each model against its fp64 self.
# Each process is stopped after LIMIT seconds (default 540); every minute OUT/partial.tgz gets the
# logs and whatever has been written so far, so a call cut short still returns something; a
# failed run is named on stderr and makes the script exit 1 (after merging and packing the rest).
# Writes OUT/study_results_<sets>.tgz (<set>/{comparison.md,comparison.json,learning_curves.png,
# loss_scale.png}, logs) and OUT/fp32_models_<sets>.tgz (the fp32 runs, best checkpoints only, for
# experiments/study_gpu_nve.sh). With STAGES=1 the ethanol fp32 model also gets the per-stage
# table on the GPU (precision_study.py --workdir; BF16 and FP16 columns) in OUT/.
set -u
OUT=$1; MIN=${2:-4}; LIMIT=${LIMIT:-540}; W=/tmp/study_gpu
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # many processes share the GPU
# the study's model: MACE, 64x0e+64x1o, L=2, correlation 3, 2 interactions
SIZE=(--set model.sizes.num_channels=64 --set model.sizes.max_ell=2 --set train.max_minutes=$MIN)
declare -A CFG=(
  [ethanol]="experiments/configs/ethanol_mace.yaml --set data.train=data/ethanol/train.xyz --set data.test=data/ethanol/test_MD.xyz --set data.e0s=data/ethanol/isolated_atoms.xyz"
  [aspirin]="experiments/configs/aspirin_mace.yaml --set data.train=data/aspirin/train.xyz --set data.test=data/aspirin/test.xyz --set data.e0s=data/ethanol/isolated_atoms.xyz"
  [acac]="experiments/configs/acac_mace.yaml --set data.train=data/acac/train_300K.xyz --set data.test=data/acac/test_MD_300K.xyz --set data.e0s=data/acac/isolated_atoms.xyz"
  [cu]="experiments/configs/zuo_cu_mace.yaml --set data.train=data/zuo2020/Cu_train.xyz --set data.test=data/zuo2020/Cu_test.xyz --set data.max_buckets=1"
)
POLICIES=${POLICIES:-fp32 bf16-mixed fp16-mixed bf16-seed bf16-pure}; SETS=${SETS:-ethanol aspirin acac cu}
NFP64=${NFP64:-100}; NSTAGE=100
if [ "${QUICK:-0}" = 1 ]; then  # a CPU check of the script itself: tiny, a few steps
  SIZE+=(--set model.sizes.num_channels=4 --set train.max_steps=3 --set data.n_train=10 --set train.steps_per_call=1
         --set data.n_valid=4 --set train.eval_every=3)
  POLICIES="fp32 bf16-mixed"; NFP64=3; NSTAGE=2
fi
TAG=$(echo "$SETS" | tr ' ' '_')
PIDS=(); NAMES=(); LOGS=()
snapshot() {  # logs and finished outputs so far (small files only)
  (cd /tmp && tar -czf "$OUT/partial.tgz" --exclude='*.msgpack' study_gpu.*.log \
     $(ls -d study_gpu/*/*/comparison.* study_gpu/*/*/*/summary.json 2>/dev/null)) 2>/dev/null
}
for set in $SETS; do
  for p in $POLICIES; do
    rm -rf "$W/$set/$p"  # no stale results of an earlier call in the merge
    log=$W.$set.$p.log
    # shellcheck disable=SC2086
    timeout "$LIMIT" python3 experiments/precision_study.py train --config ${CFG[$set]} \
      "${SIZE[@]}" --workdir $W/$set/$p --policies $p --vs-fp64 $NFP64 > "$log" 2>&1 &
    PIDS+=("$!"); NAMES+=("$set/$p"); LOGS+=("$log")
  done
done
while [ -n "$(jobs -r)" ]; do snapshot; sleep 60; done
FAILED=0
for i in "${!PIDS[@]}"; do  # a failed or timed-out run is named (124: stopped after LIMIT s)
  wait "${PIDS[$i]}"; rc=$?
  if [ "$rc" != 0 ]; then
    FAILED=1; echo "FAILED ${NAMES[$i]} rc=$rc; last lines of its log:" >&2
    tail -n 5 "${LOGS[$i]}" >&2
  fi
done
snapshot
R=/tmp/study_results_$TAG; rm -rf "$R"; mkdir -p "$R"
for set in $SETS; do
  dirs=$(for p in $POLICIES; do [ -f $W/$set/$p/comparison.json ] && echo $W/$set/$p; done)
  echo "## $set"; python3 experiments/precision_study.py merge $dirs --out $R/$set 2>&1 | grep "^|"
done
tail -n 3 $W.*.log > "$R/logs.txt"
if [ "${STAGES:-0}" = 1 ] && [ -d $W/ethanol/fp32/fp32 ]; then  # the per-stage table on the GPU
  python3 experiments/precision_study.py --workdir $W/ethanol/fp32/fp32 \
    --data data/ethanol/test_MD.xyz --n-configs $NSTAGE --out $R/ethanol_stages \
    --note "H100 GPU run" > "$R/stages.log" 2>&1; tail -n 30 "$R/stages.log"
fi
tar -C "$R" -czf "$OUT/study_results_$TAG.tgz" .
tar -C $W -czf "$OUT/fp32_models_$TAG.tgz" \
  $(cd $W && ls -d */fp32/fp32/config.yaml */fp32/fp32/checkpoints/best* */fp32/fp32/summary.json)
[ "$FAILED" = 0 ] || { echo "some runs failed; their policies are missing from the merge" >&2; exit 1; }
