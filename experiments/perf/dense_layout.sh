#!/usr/bin/env bash
# The receiver-dense edge layout (mpnn_jax.data.dense) against the flat one, side by side in one
# process per model: fp32 and bf16-mixed, E+F and the training step, backend e3nn.
#
#   source experiments/gpu_env.sh && MPNN_JAX_COMMIT=<commit> bash experiments/perf/dense_layout.sh "$OUT"
#   QUICK=1 PYTHON=.venv/bin/python bash experiments/perf/dense_layout.sh /tmp/dense   # CPU check
#
# TARGETS: "size:system" pairs (default nequip-M:water:10000 mace-mp-s:water:10000); each is one
# benchmark.py run writing OUT/dense_<size>_<system>.json, given what is left of BUDGET_S seconds
# (default 560) and skipped with under 30 s left. MODES (default "ef train").
set -u -o pipefail
OUT=${1:?usage: bash experiments/perf/dense_layout.sh OUT_DIR}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-560}
TARGETS=${TARGETS:-"nequip-M:water:10000 mace-mp-s:water:10000"}
MODES=${MODES:-"ef train"}
EXTRA=()
if [[ -n "${QUICK:-}" ]]; then
    TARGETS="nequip-S:water:48"
    EXTRA=(--repeats 2)
fi
mkdir -p "$OUT"
start=$(date +%s)
for target in $TARGETS; do
    size=${target%%:*}
    system=${target#*:}
    left=$((BUDGET_S - ($(date +%s) - start)))
    if ((left < 30)); then
        echo "skip $target: ${left}s left" | tee -a "$OUT/dense_times.txt"
        continue
    fi
    t0=$(date +%s)
    # shellcheck disable=SC2086
    timeout "$left" "$PY" experiments/benchmark.py --sizes "$size" --systems "$system" \
        --presets fp32 bf16-mixed --modes $MODES --variants take/none take/none/dense \
        "${EXTRA[@]}" --out "$OUT/dense_${size}_${system//:/}.json" \
        >"$OUT/dense_${size}_${system//:/}.log" 2>&1
    echo "$target rc=$? $(($(date +%s) - t0))s" | tee -a "$OUT/dense_times.txt"
    tail -n 12 "$OUT/dense_${size}_${system//:/}.log"
done
