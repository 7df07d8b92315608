#!/usr/bin/env bash
# The harness's size questions with our fastest GPU program (backend "pallas", the radial
# MLPs once per pair of reverse edges), one GPU, after `source experiments/gpu_env.sh`:
#   largest_ef     the largest water system MACE MP-S's E+F program fits, fp32 and bf16-mixed
#                  (one 3,000-atom probe for the bytes per atom, then a verified run at the
#                  predicted size; the goal: bf16-mixed >= 1.7x the atoms of fp32)
#   largest_train  the same for the training step (energy + force loss, its parameter gradient)
#   sweep          E+F throughput against atoms, water of 300 to 50,000 atoms, MACE MP-S and
#                  NequIP-M, fp32 and bf16-mixed, median of 20 synchronised calls; OUT/sweep.png
#                  (the README's plot)
#   cueq_pairs     the cueq backend's tests of the pairs (the convolution in FP64, the MACE model
#                  to second order) with its CUDA kernels, if .whl_cueq is carried (see experiments/perf/cueq_vs_xla.py)
# Usage: bash experiments/perf/sweep_and_largest.sh OUT [STEP ...]   (default: every step)
# Each step has a time limit (LIMIT_<step>, seconds) and writes its JSON even when cut short
# (the harness rewrites it after every row); OUT/times.txt holds each step's elapsed time.
set -u -o pipefail
OUT=${1:?usage: bash experiments/perf/sweep_and_largest.sh OUT [STEP ...]}
shift
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(cueq_pairs sweep largest_ef largest_train)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
quiet() { grep -v "^W0000\|^I0000" | tail -"${1:-40}"; }

for s in "${STEPS[@]}"; do
  t0=$SECONDS
  case $s in
    largest_ef | largest_train)
      mode=${s#largest_}
      limit_var="LIMIT_$s"
      timeout "${!limit_var:-200}" "$PY" experiments/benchmark.py --only-largest \
        --sizes mace-mp-s --systems water:3000 --largest-probes 3000 --largest-tries 2 \
        --modes "$mode" --presets fp32 bf16-mixed --backends pallas \
        --out "$OUT/$s.json" 2>&1 | quiet 12 ;;
    sweep)
      timeout "${LIMIT_sweep:-330}" "$PY" experiments/benchmark.py --sizes mace-mp-s nequip-M \
        --systems water:300 water:3000 water:10000 water:50000 --presets fp32 bf16-mixed \
        --modes ef --backends pallas --repeats 20 --out "$OUT/sweep.json" \
        --plot "$OUT/sweep.png" 2>&1 | quiet 30 ;;
    cueq_pairs)
      if [ -d .whl_cueq ]; then
        "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl_cueq/*.whl &&
          tar -xJf .whl_cueq/cueq_site.tar.xz -C /tmp/site &&
          timeout "${LIMIT_cueq_pairs:-150}" "$PY" -m pytest -q -p no:cacheprovider \
            -m "" -k cueq tests/nn/test_pairs.py 2>&1 | tail -5 | tee "$OUT/cueq_pairs.txt"
      else
        echo "cueq_pairs: no .whl_cueq carried, skipped"
      fi ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
  echo "$s $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
done
