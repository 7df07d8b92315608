#!/usr/bin/env bash
# NVE energy conservation of the study's fp32-trained models (from experiments/study_gpu.sh's
# fp32_models.tgz) evaluated under each policy: 20 ps at 0.5 fs from a 300 K start, one process
# per system side by side on one GPU. After `source experiments/gpu_env.sh`:
#   bash experiments/study_gpu_nve.sh MODELS.tgz|- OUT [STEPS] [SECONDS]
# (- : the models are still in /tmp/study_gpu, as study_gpu.sh left them). Each system's process
# runs the policies one after the other and is stopped after SECONDS (default: no limit); the
# policies it finished are kept (nve_drift.json is rewritten after each).
set -u
TGZ=$1; OUT=$2; STEPS=${3:-40000}; LIMIT=${4:-0}; W=/tmp/study_gpu; R=/tmp/study_nve
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p $W $R && { [ "$TGZ" = - ] || tar -C $W -xzf "$TGZ"; }
declare -A STRUCT=(
  [ethanol]=data/ethanol/test_MD.xyz [aspirin]=data/aspirin/test.xyz [cu]=data/zuo2020/Cu_test.xyz
)
for set in ethanol aspirin cu; do
  timeout $LIMIT python3 experiments/precision_study.py nve --workdir $W/$set/fp32/fp32 \
    --structure ${STRUCT[$set]} --policies ${POLICIES:-fp32,bf16-mixed,fp16-mixed} \
    --steps $STEPS --dt 0.5 --temperature 300 --out $R/$set > $R/$set.log 2>&1 &
done
wait
tail -n 5 $R/*.log
tar -C $R -czf $OUT/study_nve.tgz .
