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
#   orders         E+F of MACE MP-S at 50,000 water atoms in four atom orders (input: molecule by
#                  molecule on a grid; morton; species: all O then all H, as many files list
#                  them; random), fp32 and bf16-mixed (mpnn_jax.data.order)
#   profile        per-kernel time of MACE MP-S E+F at 10,000 and 50,000 atoms, fp32 and
#                  bf16-mixed (experiments/perf/profile.py; OUT/profile/profile.json)
#   auto_tests     the "auto" backend's tests and the pallas backend's model tests on this GPU
#   small          (not run yet) e3nn against pallas at small sizes (one ethanol molecule, 375 water atoms),
#                  E+F and training, fp32 (is "auto" = pallas right where launches dominate?)
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
    orders)
      timeout "${LIMIT_orders:-240}" "$PY" experiments/benchmark.py --sizes mace-mp-s \
        --systems water:50000 water:50000:morton water:50000:species water:50000:random \
        --presets fp32 bf16-mixed --modes ef --backends pallas --repeats 20 \
        --out "$OUT/orders.json" 2>&1 | quiet 12 ;;
    profile)
      XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout "${LIMIT_profile:-240}" "$PY" \
        experiments/perf/profile.py --out "$OUT/profile" --top 12 --cases \
        mace-mp-s:water:10000:fp32:ef:pallas mace-mp-s:water:10000:bf16-mixed:ef:pallas \
        mace-mp-s:water:50000:fp32:ef:pallas mace-mp-s:water:50000:bf16-mixed:ef:pallas \
        2>&1 | quiet 120 ;;
    auto_tests)  # the auto test first (pytest would collect the pallas file first; session 20's
      # 130 s limit cut the run before it), then the pallas backend's tests (about 150 s on an H100)
      { "$PY" -m pytest -q -p no:cacheprovider tests/nn/test_linear_conv.py -k "auto or registry" &&
        timeout "${LIMIT_auto_tests:-240}" "$PY" -m pytest -q -p no:cacheprovider \
          tests/nn/test_pallas_backend.py; } 2>&1 | tail -8 | tee "$OUT/auto_tests.txt" ;;
    small)
      timeout "${LIMIT_small:-240}" "$PY" experiments/benchmark.py --sizes nequip-M mace-mp-s \
        --systems ethanol:9 water:375 --presets fp32 --modes ef train --backends e3nn pallas \
        --repeats 20 --out "$OUT/small.json" 2>&1 | quiet 12 ;;
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
