#!/usr/bin/env bash
# Session 28's GPU calls on one H100 (PERFORMANCE_LOG entry 30). Everything packed into
# OUT/CALL.tgz (experiments/perf/plan_lib.sh).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s28.sh "$OUT" CALL
# CALL:
#   t  the node kernel and its transpose alone at MACE MP-S's shapes (C = 128, weights per pair,
#      10,125 water atoms, fp32 and bf16-mixed) under block, warp and prefetch settings (tuned at
#      NequIP-M's C = 32, entry 14; never at MACE's). In session 23's training profile the
#      bf16-mixed transposed kernels gain 1.24x over fp32 where the edge kernel gains 1.65x: at
#      C = 128 their default 8 warps give each thread 2 values of a [4, 128] tile, one 4-byte
#      load per row in BF16 (entry 30). Then pick_parts.py's fastest settings per preset, in
#      interleaved rounds of MACE MP-S training and E+F against the defaults.
#   e  after call t's picks became the BF16 default (pallas_conv.BF16_BLOCK_SCALE = 2): the edge
#      kernel alone at MACE MP-S's shapes under block and warp settings (never swept at C = 128
#      either), then interleaved training and E+F rounds: fp32, bf16-mixed (new defaults),
#      bf16-mixed with BF16_BLOCK_SCALE=1 (call t's defaults) and each preset's edge pick
#   c  call e's rounds without the edge sweep (for little device time)
#   i  the interleaved rounds of call t alone, for programs given in PICK_FP32 / PICK_BF16
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
case $call in
  t)
    sweep node_sweep 90 mace-mp-s node pallas pallas:NUM_WARPS=2 pallas:NUM_WARPS=4 pallas:BLOCK_NODES=4 \
        pallas:BLOCK_NODES=16 pallas:BLOCK_NODES=16,NUM_WARPS=4 pallas:PREFETCH=1 pallas:PREFETCH=3
    sweep trans_sweep 120 mace-mp-s transposed pallas pallas:NUM_WARPS_T=2 pallas:NUM_WARPS_T=4 \
        pallas:NUM_WARPS_T=16 pallas:BLOCK_NODES_T=2 pallas:BLOCK_NODES_T=8 \
        pallas:BLOCK_NODES_T=16 pallas:BLOCK_NODES_T=8,NUM_WARPS_T=4 \
        pallas:BLOCK_NODES_T=16,NUM_WARPS_T=4 pallas:PREFETCH=1 pallas:PREFETCH=3
    picks picks "$out/trans_sweep.json" "$out/node_sweep.json"
    rounds mace-mp-s 200 110 ;;
  e)
    sweep edge_sweep 110 mace-mp-s edge pallas pallas:BLOCK_EDGES=4 pallas:BLOCK_EDGES=16 \
        pallas:EDGE_WARPS=4 pallas:EDGE_WARPS=16 pallas:BLOCK_EDGES=16,EDGE_WARPS=16
    picks picks "$out/edge_sweep.json"
    EXTRA=pallas:BF16_BLOCK_SCALE=1@bf16-mixed rounds mace-mp-s 200 110 ;;
  c)
    PICK_FP32=pallas PICK_BF16=pallas EXTRA=pallas:BF16_BLOCK_SCALE=1@bf16-mixed rounds mace-mp-s 200 110 ;;
  i)
    PICK_FP32=${PICK_FP32:-pallas} PICK_BF16=${PICK_BF16:-pallas}
    rounds mace-mp-s 200 110 ;;
  *) echo "CALL must be t, e, c or i" >&2; exit 2 ;;
esac
finish
