#!/usr/bin/env bash
# Session 23's GPU calls 2-5 on one H100 (PERFORMANCE_LOG entry 25; call 1: plan_s23a.sh): the
# species-indexed linear kernel (mpnn_jax/nn/pallas_linear.py) timed in MACE MP-S, E+F and
# training at 10,125 atoms and E+F at 52,728, fp32 and bf16-mixed, median of 20, one process per
# step; everything packed into OUT/CALL.tgz (the device tool brings back at most 8 files).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s23.sh "$OUT" CALL
# CALL (each ran on the commit the log names):
#   b  tests; 10k: dense (INDEXED_LINEAR=0) / kernel (32 rows x 4 warps) / 64 x 8; 53k: dense /
#      kernel; E+F profile at 90 10k (the first kernel: rows in node order, every set per block)
#   c  the same with 16 x 4 added (the kernel with rows in species order)
#   d  tests; 10k: dense / two maps (COMPOSE_INDEXED=0) / composed; 53k: dense / composed
#   e  10k with the cases and variants reversed (default / dense), then a training profile
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
off=pallas:INDEXED_LINEAR=0
case $call in
  b|c)
    tests 100 tests/nn/test_pallas_linear.py
    extra=""; [ "$call" = c ] && extra=pallas:INDEXED_BLOCK_ROWS=16
    whole whole_10k 330 "$off pallas pallas:INDEXED_BLOCK_ROWS=64,INDEXED_WARPS=8 $extra" $ef $train
    whole whole_53k 110 "$off pallas" mace-mp-s:water:50000:fp32:ef mace-mp-s:water:50000:bf16-mixed:ef
    profile profile_10k 90 mace-mp-s:water:10000:fp32:ef:pallas mace-mp-s:water:10000:bf16-mixed:ef:pallas ;;
  d)
    tests 100 tests/nn/test_pallas_linear.py
    whole whole_10k 300 "$off pallas:COMPOSE_INDEXED=0 pallas" $ef $train
    whole whole_53k 100 "$off pallas" mace-mp-s:water:50000:fp32:ef mace-mp-s:water:50000:bf16-mixed:ef ;;
  e)
    whole whole_10k_rev 150 "pallas $off" mace-mp-s:water:10000:bf16-mixed:train \
        mace-mp-s:water:10000:fp32:train mace-mp-s:water:10000:bf16-mixed:ef mace-mp-s:water:10000:fp32:ef
    profile profile_train 90 mace-mp-s:water:10000:fp32:train:pallas \
        mace-mp-s:water:10000:bf16-mixed:train:pallas ;;
  *) echo "CALL must be b, c, d or e" >&2; exit 2 ;;
esac
finish
