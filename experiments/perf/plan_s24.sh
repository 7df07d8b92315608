#!/usr/bin/env bash
# Session 24's GPU calls on one H100 (PERFORMANCE_LOG entry 26): the radial MLP as fused Pallas
# kernels (mpnn_jax/nn/pallas_radial.py) timed in MACE MP-S, E+F and training at 10,125 atoms,
# fp32 and bf16-mixed, median of 20, one process per step; everything packed into OUT/CALL.tgz
# (experiments/perf/plan_lib.sh). Call a ran at 09faa2c, call c at 0de4f76.
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s24.sh "$OUT" CALL
# CALL:
#   a  tests; 10k: XLA's radial MLP (RADIAL_FUSED=0) / kernels / 32-row forward and derivative;
#      E+F profile at 10k with the kernels
#   c  tests; the kernels alone, a sweep of tile settings (radial_kernels.py); 10k: XLA / the
#      sweep's fastest settings (the 170-s limit cut the last case, bf16-mixed training with
#      the kernels; the 70-s limit cut the tests after 6 of 12)
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
off=pallas:RADIAL_FUSED=0
case $call in
  a)
    tests 70 tests/nn/test_pallas_radial.py
    # (call a ran with the kernels on by default and 16-row derivative blocks: "pallas" below)
    whole whole_10k 260 "$off pallas pallas:RADIAL_BLOCK_ROWS=32,RADIAL_DX_BLOCK_ROWS=32" $ef $train
    profile profile_10k 120 mace-mp-s:water:10000:fp32:ef:pallas mace-mp-s:water:10000:bf16-mixed:ef:pallas ;;
  c)
    tests 70 tests/nn/test_pallas_radial.py
    timeout 170 python3 experiments/perf/radial_kernels.py --out "$out/radial_kernels.json" \
        --best "$out/best.txt" --block-out 128 > "$out/radial_kernels.txt" 2>&1
    stamp radial_kernels
    best=$(cat "$out/best.txt" 2>/dev/null); best=${best:-pallas:RADIAL_FUSED=1}
    whole whole_10k 170 "$off $best" $ef $train ;;
  *) echo "CALL must be a or c" >&2; exit 2 ;;
esac
finish
