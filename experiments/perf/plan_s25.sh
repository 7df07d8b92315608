#!/usr/bin/env bash
# Session 25's GPU calls on one H100 (PERFORMANCE_LOG entry 27): the radial kernels in programs
# that do not differentiate the weights (RADIAL_FUSED=1, the new default) against XLA's radial
# MLP (RADIAL_FUSED=0); median of 20, one process per step; everything packed into OUT/CALL.tgz
# (experiments/perf/plan_lib.sh).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s25.sh "$OUT" CALL
# CALL:
#   a  the radial tests compiled by Triton (the new default, the presets' dtypes, MACE);
#      MACE MP-S at 10,125 atoms: E+F with XLA's radial MLP / the default / INDEXED_DX_ROWS=1,
#      training with XLA's radial MLP / the default
#      (call a ran at dc98b93: training with the rules' fallback, before training_program)
#   b  training at 10k again (the library's step now inside backends.training_program);
#      MACE MP-S E+F at 52,728 atoms and NequIP-M E+F at 10,125 atoms, XLA's radial MLP / the
#      default; MACE MP-S E+F at 3,000 atoms (the size of cuEquivariance's example)
#      (the 120-s limit cut NequIP's last row, bf16-mixed with the default)
#   c  training at 10k as default / XLA's radial MLP / default again (the same program, by
#      its jaxpr: the order effect of one process's rows); NequIP-M bf16-mixed E+F, default /
#      XLA's radial MLP
#   d  the defaults' training step and E+F at 10k, fp32 and bf16-mixed timed in interleaved
#      rounds (experiments/perf/interleaved.py): the speed-up as the median of 60 rounds' ratios
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
off=pallas:RADIAL_FUSED=0
case $call in
  a)
    tests 80 tests/nn/test_pallas_radial.py -k "default or dtypes or mace"
    whole whole_10k_ef 170 "$off pallas pallas:INDEXED_DX_ROWS=1" $ef
    whole whole_10k_train 190 "$off pallas" $train ;;
  b)
    whole whole_10k_train 170 "$off pallas" $train
    whole whole_53k 130 "$off pallas" mace-mp-s:water:50000:fp32:ef mace-mp-s:water:50000:bf16-mixed:ef
    whole whole_nequip 120 "$off pallas" nequip-M:water:10000:fp32:ef nequip-M:water:10000:bf16-mixed:ef
    whole whole_3k 90 "$off pallas" mace-mp-s:water:3000:fp32:ef mace-mp-s:water:3000:bf16-mixed:ef ;;
  c)
    whole whole_10k_train_aba 250 "pallas $off pallas" $train
    whole whole_nequip_bf16 90 "pallas $off" nequip-M:water:10000:bf16-mixed:ef ;;
  d)
    for mode in train ef; do
      timeout $([ $mode = train ] && echo 150 || echo 20) python3 experiments/perf/interleaved.py \
          --out "$out/interleaved_$mode.json" --case mace-mp-s:water:10000:$mode \
          --programs pallas@fp32 pallas@bf16-mixed --repeats 60 > "$out/interleaved_$mode.txt" 2>&1
      stamp interleaved_$mode
    done ;;
  *) echo "CALL must be a, b, c or d" >&2; exit 2 ;;
esac
finish
