#!/usr/bin/env bash
# XLA's multi-output fusion on (XLA's default) and off (mpnn_jax's GPU default, `mpnn_jax.xla`),
# side by side in one call, for each target "size:system:backend".
#
#   source experiments/gpu_env.sh && bash experiments/perf/fusion_flags.sh "$OUT"
#   QUICK=1 PYTHON=.venv/bin/python bash experiments/perf/fusion_flags.sh /tmp/ff   # CPU check
#
# Why: the session-6 profile (`experiments/perf/profile.py`, H200) of NequIP-M's bf16-mixed E+F
# program spent 14.3 of its 51.9 ms of kernels in one multi-output loop fusion: XLA fused the
# weight gradients of layers 1-3 (three [547k edges, 352] outputs, 37 operands, six in-fusion
# gathers of the receivers' cotangents and the senders' features) into a single kernel.
#
# For each target and each setting of MPNN_JAX_XLA_OPTIONS ("none": XLA's defaults; "gpu": the
# options of `mpnn_jax.xla.GPU_OPTIONS`), `experiments/benchmark.py` times fp32 and bf16-mixed,
# E+F and training, in a process of its own: OUT/<size>_<backend>_<setting>.json (each records its
# options in `info.xla_options`). Targets run in order under BUDGET_S seconds (default 540); one
# with under 60 s left is skipped. With PROFILE=1, also the per-kernel profile of the first
# target's E+F under both settings (OUT/profile_<setting>.json). With the XLA_FLAGS of an earlier
# version of this script, `--xla_disable_hlo_passes=multi_output_fusion`, the same comparison
# ran in session 6 (the first JSONs of PERFORMANCE_LOG entry 8).
set -u -o pipefail
OUT=${1:?usage: bash experiments/perf/fusion_flags.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then
  TARGETS=${TARGETS:-"nequip-S:water:24:e3nn"}; REPEATS=1
else
  TARGETS=${TARGETS:-"mace-mp-s:water:3000:e3nn nequip-M:water:10000:cueq nequip-M:water:10000:e3nn"}
  REPEATS=20
fi
BUDGET_S=${BUDGET_S:-540}
T0=$SECONDS
FAILED=0
for target in $TARGETS; do
  IFS=: read -r size kind n backend <<< "$target"
  for setting in none gpu; do
    left=$((BUDGET_S - (SECONDS - T0)))
    if [ "$left" -lt 60 ]; then echo "skip $target $setting: ${left}s left"; continue; fi
    echo "== $target MPNN_JAX_XLA_OPTIONS=$setting (budget ${left}s)"
    MPNN_JAX_XLA_OPTIONS=$setting timeout -k 10 "$left" "$PY" experiments/benchmark.py \
      --sizes "$size" --systems "$kind:$n" --backends "$backend" --presets fp32 bf16-mixed \
      --modes ef train --repeats "$REPEATS" --out "$OUT/${size}_${backend}_${setting}.json" \
      | grep -v '^{' || FAILED=1
  done
done
if [ "${PROFILE:-0}" = 1 ]; then
  IFS=: read -r size kind n backend <<< "${TARGETS%% *}"
  for setting in none gpu; do
    MPNN_JAX_XLA_OPTIONS=$setting XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" \
      "$PY" experiments/perf/profile.py --out "$OUT/p_$setting" --top 8 \
      --cases "$size:$kind:$n:fp32:ef:$backend" "$size:$kind:$n:bf16-mixed:ef:$backend" \
      || FAILED=1
    mv "$OUT/p_$setting/profile.json" "$OUT/profile_$setting.json" 2>/dev/null
    rm -rf "$OUT/p_$setting"
  done
fi
echo "total $((SECONDS - T0))s"
exit $FAILED
