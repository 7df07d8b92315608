#!/usr/bin/env bash
# XLA fusion passes against NequIP-M at 10,000 atoms (e3nn backend), side by side in one call.
#
#   source experiments/gpu_env.sh && bash experiments/perf/fusion_flags.sh "$OUT"
#   QUICK=1 PYTHON=.venv/bin/python bash experiments/perf/fusion_flags.sh /tmp/ff   # CPU check
#
# Why: the session-6 profile (`experiments/perf/profile.py`, H200) of the bf16-mixed E+F program
# spent 14.3 of its 51.9 ms of kernels in one multi-output loop fusion: XLA fused the weight
# gradients of layers 1-3 (three [547k edges, 352] outputs, 37 operands, six in-fusion gathers of
# the receivers' cotangents and the senders' features) into a single kernel. Each setting of
# FLAGS (one per line below, "default" = none) runs `experiments/benchmark.py` for fp32 and
# bf16-mixed, E+F and training, in a process of its own (XLA_FLAGS is read once per process):
# OUT/<name>.json, each recording its XLA_FLAGS in `info`. Then the per-kernel profile of both
# presets' E+F under each setting (OUT/profile_<name>.json; HLO texts in OUT/hlo_<name>.tgz).
set -u -o pipefail
OUT=${1:?usage: bash experiments/perf/fusion_flags.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then SYS=water:24; REPEATS=1; else SYS=water:10000; REPEATS=20; fi
SIZE=${SIZE:-nequip-M}
declare -A FLAGS=(
  [default]=""
  [no_mof]="--xla_disable_hlo_passes=multi_output_fusion"
)
FAILED=0
for name in default no_mof; do
  echo "== $name: XLA_FLAGS=${FLAGS[$name]}"
  XLA_FLAGS="${FLAGS[$name]}" "$PY" experiments/benchmark.py --sizes "$SIZE" --systems "$SYS" \
    --presets fp32 bf16-mixed --modes ef train --repeats "$REPEATS" --out "$OUT/$name.json" \
    | grep -v '^{' || FAILED=1
done
for name in default no_mof; do
  XLA_FLAGS="${FLAGS[$name]} --xla_gpu_enable_command_buffer=" "$PY" experiments/perf/profile.py \
    --out "$OUT/p_$name" --top 8 --cases "$SIZE:$SYS:fp32:ef" "$SIZE:$SYS:bf16-mixed:ef" \
    || FAILED=1
  mv "$OUT/p_$name/profile.json" "$OUT/profile_$name.json" 2>/dev/null
  mv "$OUT/p_$name/hlo.tgz" "$OUT/hlo_$name.tgz" 2>/dev/null
  rm -rf "$OUT/p_$name"
done
exit $FAILED
