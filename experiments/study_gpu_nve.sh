#!/usr/bin/env bash
# NVE energy conservation of the study's fp32-trained models (experiments/study_gpu.sh's
# fp32_models_*.tgz) evaluated under each policy: 20 ps at 0.5 fs from a 300 K start, one process
# per system and policy side by side on one GPU, merged per system. After
# `source experiments/gpu_env.sh`:
#   SYSTEMS="ethanol aspirin" bash experiments/study_gpu_nve.sh MODELS.tgz|- OUT [STEPS] [SECONDS]
# (- : the models are still in /tmp/study_gpu, as study_gpu.sh left them). Each process is stopped
# after SECONDS (default: no limit); nve_drift.json is written after each finished policy.
# Structures: the first frame of the test sets; for cu a periodic fcc 2x2x2 conventional cell
# (32 atoms, a = 3.615 Å) written here with ASE. Writes OUT/study_nve_<systems>.tgz.
set -u
TGZ=$1; OUT=$2; STEPS=${3:-40000}; LIMIT=${4:-0}; W=/tmp/study_gpu; R=/tmp/study_nve
SYSTEMS=${SYSTEMS:-ethanol aspirin cu}; POLICIES=${POLICIES:-fp32 bf16-mixed fp16-mixed bf16-seed}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p $W $R && { [ "$TGZ" = - ] || tar -C $W -xzf "$TGZ"; }
python3 -c "from ase.build import bulk; from ase.io import write; \
write('$R/cu_fcc_32.xyz', bulk('Cu', 'fcc', a=3.615, cubic=True).repeat(2))"
declare -A STRUCT=(
  [ethanol]=data/ethanol/test_MD.xyz [aspirin]=data/aspirin/test.xyz [cu]=$R/cu_fcc_32.xyz
)
for set in $SYSTEMS; do
  for p in $POLICIES; do
    timeout "$LIMIT" python3 experiments/precision_study.py nve --workdir $W/$set/fp32/fp32 \
      --structure "${STRUCT[$set]}" --policies "$p" --steps "$STEPS" --dt 0.5 \
      --temperature 300 --out $R/$set.$p > $R/$set.$p.log 2>&1 &
  done
done
wait
for set in $SYSTEMS; do
  dirs=$(for p in $POLICIES; do [ -f $R/$set.$p/nve_drift.json ] && echo $R/$set.$p; done)
  # shellcheck disable=SC2086
  [ -n "$dirs" ] && python3 experiments/precision_study.py merge-nve $dirs --out $R/$set
done
tail -n 5 $R/*.log
TAG=$(echo "$SYSTEMS" | tr ' ' '_')
tar -C $R -czf "$OUT/study_nve_$TAG.tgz" .
