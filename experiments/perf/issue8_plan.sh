#!/usr/bin/env bash
# Issue #8 measurements on one H100 in about 6 minutes, every result a JSON file under OUT.
#
#   source experiments/gpu_env.sh && bash experiments/perf/issue8_plan.sh "$OUT"
#   QUICK=1 PYTHON=.venv/bin/python bash experiments/perf/issue8_plan.sh /tmp/plan  # CPU check
#
# Steps, run in the order STEPS names them (default "d b a2": what sessions 2 and 3 left
# unmeasured besides e; a1 and c ran in session 2); a later step gets what is left of BUDGET_S
# seconds, default 360, and is skipped with under 25 s left; every JSON is rewritten after each
# row, so a step cut short keeps its finished rows:
#   d   mace-mp-s on water:3000, fp32 and bf16-mixed, ef and train, backend e3nn vs cueq (the
#       cuEquivariance kernels: install the wheels of `.whl_cueq/` first, see
#       experiments/perf/cueq_vs_xla.py; skipped when `cueq` is not an available backend).
#   a1  mace-mp-s on water:3000 (~160k edges), fp32 and bf16-mixed, ef and train, take_rows
#       one-hot vs take, with --ceilings (matmul/copy ceilings) and the roofline columns.
#   c   largest E+F water system that fits, mace-mp-s, fp32 vs bf16-mixed: one probe at 3000
#       atoms (bytes/atom as the slope), the predicted size verified by a run, shrunk 15% after
#       an out-of-memory error (memory only: the GEMM autotuner is off to keep compiles short;
#       95% of the GPU memory is the allocator's).
#   b   nequip-M on water:10000, fp32 vs bf16-mixed, ef and train, roofline (a1's ceilings).
#   e   throughput against atoms (the README's plot): mace-mp-s and nequip-M E+F on water of
#       1,000, 3,000 and 10,000 atoms, fp32, bf16-mixed, fp16-mixed (the accurate 16-bit policy:
#       never timed on a GPU so far) and fp32-highest; OUT/e_sweep.png. 24 cases, ~360-500 s: a
#       call of its own (STEPS=e BUDGET_S=540).
#   f   the cueq backend where the 1.5x / 1.3x goals are measured: nequip-M and mace-mp-s on
#       water:10000, fp32 and bf16-mixed, ef and train, backends e3nn and cueq (16 cases,
#       ~400 s: a call of its own, STEPS=f BUDGET_S=540; skipped without cueq). Session 5 timed
#       cueq at 3,000 atoms only (MACE: 2.0-2.4x faster than e3nn, bf16 1.10-1.12x fp32).
#   g   the precision ceiling of E+F (session 9): nequip-M and mace-mp-s on water:10000, backends
#       e3nn and cueq, fp32, bf16-mixed, fp16-seed (the radial MLP in FP16 too) and CEILING_POLICY
#       (every stage BF16 but the two whose 16-bit versions are scatter-adds of 16-bit atomics,
#       which entry 3 of the performance log found slow: the neighbour sums and the geometry,
#       whose transposes sum 547k edge vectors onto the positions as bf16 scatters (seen in the
#       lowered program, log entry 12); with geometry BF16 too, E+F took 100-130 ms against
#       15-50 in fp32, h200_ceiling/g_ceiling_ef_geometry_bf16.json). The fastest policy of
#       these programs, accurate or not. 16 cases, ~240 s (skips the cueq rows without cueq).
#   h   the same ceiling for the training step, backend e3nn (8 cases, ~200 s); i: backend
#       cueq (8 cases, ~480 s, its compiles take 45-115 s: a call of its own, BUDGET_S=540).
#   a2  mace-mp-s on water:3000, fp32 (take_rows): sorted-edge promises, no promise vs
#       sorted senders (the neighbour list's own order) vs sorted receivers (edges re-sorted);
#       ef first, then train as far as the budget goes. The no-promise programs come from the
#       persistent compilation cache that a1 filled.
# Estimated from earlier H100 runs (compiles of 12-28 s per case): a1 ~220 s, c ~60 s, b ~130 s,
# a2 ~90 s. With the default budget, b is cut after its ef rows; BUDGET_S=520 runs d, b and a2.
# Logs: OUT/logs.tgz (<step>.log, packed at the end: the device tool brings back at most 8 files,
# so OUT holds one JSON per step, the sweep's PNG, plan_times.txt and logs.tgz); the elapsed time
# per step: OUT/plan_times.txt.
set -u -o pipefail
OUT=${1:?usage: bash experiments/perf/issue8_plan.sh OUT_DIR}
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then BUDGET_S=${BUDGET_S:-1800}; else BUDGET_S=${BUDGET_S:-360}; fi
mkdir -p "$OUT"
T0=$SECONDS
# one compilation cache for the steps (a2 reuses a1's no-promise programs); kept out of OUT
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/issue8_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
FAILED=0

if [ "$QUICK" = 1 ]; then  # tiny CPU settings: the same commands, the same flags
  MACE_SYS=water:24; NEQUIP_SYS=water:24; BIG_SYS=water:24; REPEATS=1; CEIL_N=256
  SWEEP=(water:24 water:48)
  LARGEST=(--systems water:24 --largest-probes 81 --largest-budget-mib 600)
else
  MACE_SYS=water:3000; NEQUIP_SYS=water:10000; BIG_SYS=water:10000; REPEATS=20; CEIL_N=8192
  SWEEP=(water:1000 water:3000 water:10000)
  LARGEST=(--systems water:3000 --largest-probes 3000)
fi

step() {  # step NAME [ENV=VALUE ...] -- ARGS...: one benchmark run under the remaining budget
  local name=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local left=$((BUDGET_S - (SECONDS - T0)))
  if [ "$left" -lt 25 ]; then
    echo "skip $name: ${left}s left" | tee -a "$OUT/plan_times.txt"
    return
  fi
  local t=$SECONDS
  echo "== $name (budget ${left}s): $*"
  env "${envs[@]}" timeout -k 10 "$left" "$PY" experiments/benchmark.py "$@" \
    --repeats "$REPEATS" --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" | grep -v '^{'
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || FAILED=1
  echo "$name rc=$rc $((SECONDS - t))s" | tee -a "$OUT/plan_times.txt"
}

have_cueq() {  # is the cuEquivariance backend available (steps d and f need it)?
  "$PY" -c "import sys; from mpnn_jax.nn.backends import available_backends as a; \
sys.exit('cueq' not in a())"
}

# every stage BF16 except the two whose transposes would be 16-bit atomics: steps g-i
CEILING_POLICY="params=f32,compute=bf16,output=f32,geometry=f32,aggregation=f32"
CEIL_PRESETS=(fp32 bf16-mixed fp16-seed "$CEILING_POLICY")
BACKENDS_G=(e3nn)
have_cueq && BACKENDS_G+=(cueq)

CEIL=()  # CEILINGS_FROM=<an earlier JSON of this device>: its measured ceilings for the roofline
[ -n "${CEILINGS_FROM:-}" ] && CEIL=(--ceilings-from "$CEILINGS_FROM")
find_ceilings() {  # the first step with --ceilings gives the others its ceilings
  for f in "$OUT/a1_mace_take_rows.json" "$OUT/d_cueq.json"; do
    [ ${#CEIL[@]} = 0 ] && [ -s "$f" ] && CEIL=(--ceilings-from "$f")
  done
  return 0
}
find_ceilings

run_step() {
  case $1 in
    a1) step a1_mace_take_rows -- --ceilings --ceilings-n "$CEIL_N" --sizes mace-mp-s \
          --systems "$MACE_SYS" --presets fp32 bf16-mixed --modes ef train \
          --variants onehot/none take/none ;;
    d)  if have_cueq; then
          step d_cueq -- --ceilings --ceilings-n "$CEIL_N" --sizes mace-mp-s \
            --systems "$MACE_SYS" --presets fp32 bf16-mixed --modes ef train --backends e3nn cueq
        else echo "skip d: the cueq backend is not available" | tee -a "$OUT/plan_times.txt"; fi ;;
    c)  step c_largest XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 \
          XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" -- \
          --only-largest --sizes mace-mp-s "${LARGEST[@]}" --modes ef --presets fp32 bf16-mixed \
          --largest-tries 3 ;;
    b)  step b_nequip -- "${CEIL[@]}" --sizes nequip-M --systems "$NEQUIP_SYS" \
          --presets fp32 bf16-mixed --modes ef train ;;
    f)  if have_cueq; then
          step f_cueq_10k -- --ceilings --ceilings-n "$CEIL_N" \
            --sizes nequip-M mace-mp-s --systems "$BIG_SYS" --presets fp32 bf16-mixed \
            --modes ef train --backends e3nn cueq
        else echo "skip f: the cueq backend is not available" | tee -a "$OUT/plan_times.txt"; fi ;;
    e)  step e_sweep -- "${CEIL[@]}" --sizes mace-mp-s nequip-M --systems "${SWEEP[@]}" \
          --presets fp32 bf16-mixed fp16-mixed fp32-highest --modes ef \
          --plot "$OUT/e_sweep.png" ;;
    g)  step g_ceiling_ef -- "${CEIL[@]}" --sizes nequip-M mace-mp-s --systems "$BIG_SYS" \
          --presets "${CEIL_PRESETS[@]}" --modes ef --backends "${BACKENDS_G[@]}" ;;
    h)  step h_ceiling_train -- "${CEIL[@]}" --sizes nequip-M mace-mp-s --systems "$BIG_SYS" \
          --presets "${CEIL_PRESETS[@]}" --modes train --backends e3nn ;;
    i)  if have_cueq; then
          step i_ceiling_train_cueq -- "${CEIL[@]}" --sizes nequip-M mace-mp-s \
            --systems "$BIG_SYS" --presets "${CEIL_PRESETS[@]}" --modes train --backends cueq
        else echo "skip i: the cueq backend is not available" | tee -a "$OUT/plan_times.txt"; fi ;;
    a2) step a2_mace_sorted -- "${CEIL[@]}" --sizes mace-mp-s --systems "$MACE_SYS" \
          --presets fp32 --modes ef train --variants take/none take/senders take/receivers ;;
    *)  echo "unknown step $1 (a1 d c b e f g h i a2)" >&2; FAILED=1 ;;
  esac
  find_ceilings
}
for s in ${STEPS:-d b a2}; do run_step "$s"; done

echo "total $((SECONDS - T0))s" | tee -a "$OUT/plan_times.txt"
if ls "$OUT"/*.log > /dev/null 2>&1; then
  tar -C "$OUT" -czf "$OUT/logs.tgz" $(cd "$OUT" && ls *.log) && rm -f "$OUT"/*.log
fi
exit $FAILED
