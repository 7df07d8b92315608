#!/usr/bin/env bash
# Issue #5's accuracy bar on one GPU: the rMD17 ethanol MACE config trained under several policies
# side by side (one process each, same config and seed, XLA_PYTHON_CLIENT_PREALLOCATE=false), then
# each evaluated on the 1000 test configurations under its own policy. From the repository root on
# the GPU machine, with the ethanol files under data/ethanol/ and after `source
# experiments/gpu_env.sh`:
#   POLICIES="fp32 fp16-mixed" bash experiments/train_side_by_side.sh OUT MINUTES
# Writes OUT/side_by_side.tgz (<policy>/{config.yaml,metrics.jsonl,learning_curve.png,summary.json},
# test_<policy>.json, train_<policy>.log, learning_curves.png: the policies overlaid) and prints
# one table row per policy.
# QUICK=1: a tiny CPU check of the script (a few steps, 4 channels).
set -u
OUT=${1:?usage: train_side_by_side.sh OUT [MINUTES]}; MIN=${2:-7.7}
PY=${PYTHON:-python3}; POLICIES=${POLICIES:-fp32 fp16-mixed}; W=${WORK:-/tmp/side_by_side}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
D=data/ethanol
ARGS=(--config experiments/configs/ethanol_mace.yaml --set data.train=$D/train.xyz
      --set data.test=$D/test_MD.xyz --set data.e0s=$D/isolated_atoms.xyz
      --set train.max_minutes="$MIN")
TEST=$D/test_MD.xyz
if [ "${QUICK:-0}" = 1 ]; then
  ARGS+=(--set model.sizes.num_channels=4 --set model.sizes.max_ell=1 --set train.max_steps=4
         --set train.steps_per_call=2 --set train.eval_every=2 --set data.n_train=10 --set data.n_valid=4)
fi
rm -rf "$W"; mkdir -p "$W" "$OUT"
for p in $POLICIES; do
  "$PY" -m mpnn_jax.cli train "${ARGS[@]}" --set precision.policy="$p" --workdir "$W/$p" \
    > "$W/train_$p.log" 2>&1 &
done
wait
for p in $POLICIES; do  # the evaluations side by side too
  ( "$PY" -m mpnn_jax.cli evaluate --workdir "$W/$p" --data "$TEST" --json "$W/test_$p.json" \
    > "$W/eval_$p.log" 2>&1 || echo "evaluate $p failed: $(tail -n 3 "$W/eval_$p.log")" ) &
done
wait
echo "| policy | steps | minutes | energy MAE (meV/molecule) | force MAE (meV/Å) | force RMSE (meV/Å) |"
echo "|---|---|---|---|---|---|"
for p in $POLICIES; do
  "$PY" - "$W/$p/summary.json" "$W/test_$p.json" "$p" <<'PYEOF' || echo "| $p | failed | | | | |"
import json, sys
s, t = (json.load(open(f)) for f in sys.argv[1:3])
print(f"| {sys.argv[3]} | {s['step']:,} | {s['minutes']:.2f} | {t['energy_mae_mev']:.3f} "
      f"| {t['forces_mae_mev_per_A']:.2f} | {t['forces_rmse_mev_per_A']:.2f} |")
PYEOF
done
"$PY" -c "import sys; from mpnn_jax.training.plots import plot_comparison as c
c({p: f'$W/{p}/metrics.jsonl' for p in sys.argv[1:]}, '$W/learning_curves.png')" $POLICIES \
  || echo "learning-curve plot failed"
(cd "$W" && tar -czf "$OUT/side_by_side.tgz" --exclude='checkpoints' --exclude='*.msgpack' .)
