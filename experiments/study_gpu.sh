#!/usr/bin/env bash
# The GPU precision study: training under each policy, side by side on one GPU (one process per
# data set and policy), then merged. Run from a checkout with the data sets under data/ (see
# experiments/results/precision_study/h100_policies/README.md) after `source experiments/gpu_env.sh`:
#   bash experiments/study_gpu.sh OUT [MINUTES]
# Writes OUT/study_results.tgz (<set>/{comparison.md,comparison.json,learning_curves.png,
# loss_scale.png}, logs) and OUT/fp32_models.tgz (the fp32 runs, best checkpoints only, for the NVE runs).
set -u
OUT=$1; MIN=${2:-4.5}; W=/tmp/study_gpu
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # many processes share the GPU
# the study's model: MACE, 64x0e+64x1o, L=2, correlation 3, 2 interactions
SIZE=(--set model.sizes.num_channels=64 --set model.sizes.max_ell=2 --set train.max_minutes=$MIN)
declare -A CFG=(
  [ethanol]="experiments/configs/ethanol_mace.yaml --set data.train=data/ethanol/train.xyz --set data.test=data/ethanol/test_MD.xyz --set data.e0s=data/ethanol/isolated_atoms.xyz"
  [aspirin]="experiments/configs/aspirin_mace.yaml --set data.train=data/aspirin/train.xyz --set data.test=data/aspirin/test.xyz --set data.e0s=data/ethanol/isolated_atoms.xyz"
  [acac]="experiments/configs/acac_mace.yaml --set data.train=data/acac/train_300K.xyz --set data.test=data/acac/test_MD_300K.xyz --set data.e0s=data/acac/isolated_atoms.xyz"
  [cu]="experiments/configs/zuo_cu_mace.yaml --set data.train=data/zuo2020/Cu_train.xyz --set data.test=data/zuo2020/Cu_test.xyz"
)
POLICIES="fp32 bf16-mixed fp16-mixed bf16-seed"; SETS="ethanol aspirin acac cu"; NFP64=100
if [ "${QUICK:-0}" = 1 ]; then  # a CPU check of the script itself: tiny, a few steps
  SIZE+=(--set model.sizes.num_channels=4 --set train.max_steps=3 --set data.n_train=10
         --set data.n_valid=4 --set train.eval_every=3)
  POLICIES="fp32 bf16-mixed"; SETS="acac cu"; NFP64=3
fi
for set in $SETS; do
  pols=$POLICIES; [ "$set" = ethanol ] && [ "${QUICK:-0}" != 1 ] && pols="$pols bf16-pure"
  for p in $pols; do
    # shellcheck disable=SC2086
    python3 experiments/precision_study.py train --config ${CFG[$set]} "${SIZE[@]}" \
      --workdir $W/$set/$p --policies $p --vs-fp64 $NFP64 > $W.$set.$p.log 2>&1 &
  done
done
wait
R=/tmp/study_results; rm -rf $R; mkdir -p $R
for set in $SETS; do
  dirs=$(for p in $POLICIES bf16-pure; do [ -d $W/$set/$p ] && echo $W/$set/$p; done)
  echo "## $set"; python3 experiments/precision_study.py merge $dirs --out $R/$set 2>&1 | grep "^|"
done
tail -n 3 $W.*.log > $R/logs.txt
tar -C $R -czf $OUT/study_results.tgz .
tar -C $W -czf $OUT/fp32_models.tgz \
  $(cd $W && ls -d */fp32/fp32/config.yaml */fp32/fp32/checkpoints/best* */fp32/fp32/summary.json)
