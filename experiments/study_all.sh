#!/usr/bin/env bash
# The whole precision study from one command, on one GPU (or, slowly, a CPU):
#   bash experiments/study_all.sh OUT [MINUTES]          (after `source experiments/gpu_env.sh`)
# with the data sets under data/ (ethanol, aspirin, acac, zuo2020: see study_gpu.sh). Steps:
#   1. training under each policy (fp32, bf16-mixed, fp16-mixed, bf16-seed, bf16-pure), same seed,
#      MINUTES per run (default 4), one data set pair at a time, side by side on the device
#      (experiments/study_gpu.sh): ethanol + aspirin, acac (300 K model, 300 and 600 K tests), Zuo
#      Cu (stress against fp64);
#   2. 20 ps NVE of the fp32 models under each policy (experiments/study_gpu_nve.sh);
#   3. per-stage tables (20 single-stage ablations + 6 presets against fp64) of the trained fp32
#      ethanol MACE and of a trained fp32 ethanol NequIP, and of both at random init;
#   4. OUT/SUMMARY.md: every table, with the plots beside it in OUT.
# QUICK=1: a CPU smoke run of the whole chain (tiny models, a few steps; ~10 min on 2 cores).
set -u
OUT=$(realpath -m "$1"); MIN=${2:-4}; W=/tmp/study_gpu; R=$OUT/work
# the project's virtual environment (make demo / make test create it) where there is one; the
# GPU machine's python3 has the packages itself
if [ -x .venv/bin/python3 ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
mkdir -p "$OUT" "$R"
if [ ! -d data ] && [ -d ../shared/data ]; then  # this project's layout: link the shared data sets
  mkdir data && ln -s ../../shared/data/rmd17_ethanol data/ethanol && \
    ln -s ../../shared/data/rmd17_aspirin data/aspirin && ln -s ../../shared/data/acac data/acac && \
    ln -s ../../shared/data/zuo2020 data/zuo2020
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false
STEPS=40000; NCONF=100; EXTRA=(); STAGE_POLICIES=()
if [ "${QUICK:-0}" = 1 ]; then
  STEPS=20; NCONF=2; export POLICIES="fp32 bf16-mixed" NFP64=2
  EXTRA=(--set model.sizes.channels=4 --set model.sizes.n_layers=2 --set train.max_steps=3
         --set data.n_train=10 --set data.n_valid=4 --set train.eval_every=3
         --set train.steps_per_call=1)
  STAGE_POLICIES=(--policies fp32+messages=bf16,bf16-mixed)
fi
run() { echo "+ $*" >&2; "$@"; }
# 1. training under each policy
run env SETS="ethanol aspirin" bash experiments/study_gpu.sh "$R" "$MIN"
run env SETS="acac" bash experiments/study_gpu.sh "$R" "$MIN"
run env SETS="cu" NFP64=${NFP64:-20} bash experiments/study_gpu.sh "$R" "$MIN"
# 2. NVE of the fp32 models (still in /tmp/study_gpu)
run bash experiments/study_gpu_nve.sh - "$R" $STEPS
# 3. per-stage tables: the fp32 ethanol MACE of step 1, an fp32 ethanol NequIP, random init
NEQ=$W/ethanol_nequip
run python3 experiments/precision_study.py train --config experiments/configs/ethanol_nequip.yaml \
  --set data.train=data/ethanol/train.xyz --set data.test=data/ethanol/test_MD.xyz \
  --set data.e0s=data/ethanol/isolated_atoms.xyz --set train.max_minutes="$MIN" "${EXTRA[@]}" \
  --workdir $NEQ --policies fp32 --vs-fp64 0 > "$R/nequip_train.log" 2>&1
for m in mace nequip; do
  run_dir=$W/ethanol/fp32/fp32; [ $m = nequip ] && run_dir=$NEQ/fp32
  run python3 experiments/precision_study.py --workdir $run_dir --data data/ethanol/test_MD.xyz \
    --n-configs $NCONF "${STAGE_POLICIES[@]}" --out "$OUT/stages_${m}_trained"
  run python3 experiments/precision_study.py --workdir $run_dir --random-init \
    --data data/ethanol/test_MD.xyz --n-configs $NCONF "${STAGE_POLICIES[@]}" \
    --out "$OUT/stages_${m}_random_init"
done > "$R/stages.log" 2>&1
# 4. one summary
mkdir -p "$OUT/training" "$OUT/nve"
for f in "$R"/study_results_*.tgz; do tar -C "$OUT/training" -xzf "$f"; done
tar -C "$OUT/nve" -xzf "$R"/study_nve_*.tgz
{
  echo "# Precision study ($(date -u +%F), $(python3 -c 'import jax; print(jax.devices()[0].device_kind)'))"
  echo; echo "Command: bash experiments/study_all.sh $* (QUICK=${QUICK:-0})"
  for s in ethanol aspirin acac cu; do
    [ -f "$OUT/training/$s/comparison.md" ] || continue
    echo; echo "## Training under each policy: $s"; echo; cat "$OUT/training/$s/comparison.md"
  done
  echo; echo "## NVE, $STEPS steps x 0.5 fs"; echo
  echo "| system | policy | drift (meV/atom/ps) | fluctuation (meV/atom) |"; echo "|---|---|---|---|"
  python3 - "$OUT/nve" <<'PY'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("*/nve_drift.json")):
    if "." in f.parent.name:
        continue  # the per-policy folders; the merged one per system is enough
    for spec, r in json.loads(f.read_text())["runs"].items():
        print(f"| {f.parent.name} | {spec} | {r['drift_meV_per_atom_per_ps']:.4g} | "
              f"{r['fluctuation_meV_per_atom']:.4g} |")
PY
  for d in "$OUT"/stages_*; do
    echo; echo "## Per-stage errors: $(basename "$d")"; echo; cat "$d/stage_table.md"
  done
} > "$OUT/SUMMARY.md"
echo "wrote $OUT/SUMMARY.md"
