#!/usr/bin/env bash
# Session 30's GPU calls on one H100 (PERFORMANCE_LOG entry 32). Everything packed into
# OUT/CALL.tgz (experiments/perf/plan_lib.sh).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s30.sh "$OUT" CALL
# CALL:
#   a  MACE MP-S at 10,125 water atoms: interleaved training and E+F rounds of the defaults of
#      both presets (entry 31's one-warp edge tile, on a second machine) and bf16-mixed with
#      linear.STORE_SINGLE_PATH (the linears' single-path outputs stored in BF16 by the GEMM, so
#      that the backward GEMMs take BF16 cotangents, not FP32 x BF16); a per-kernel profile of
#      the defaults' training and E+F (which 16-bit stages lag FP32 most, for the stage bound);
#      MACE's node kernel and its transpose alone as one-warp programs over 1 or 2 receivers
#      (plan_s29.sh's call s), picks printed
#   b  MACE-L's second-layer edge kernel alone (9 input, 71 output components; 10,125 water
#      atoms) in one call and split over 3, 5 and 9 calls (pallas_conv.EDGE_GROUPS; ptxas, fp32 /
#      bf16-mixed, bytes spilled per thread: one call 3,156 / 1,472; 3 calls at most 208 / 148;
#      5 calls at most 0 / 76 (8 warps: 17 outputs at most); 9 calls of at most 10 outputs run
#      one-warp programs, at most 24 / 468), then MACE-L E+F in interleaved rounds of the pick
#      against the defaults
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
case $call in
  a)
    EXTRA=pallas:STORE_SINGLE_PATH=1@bf16-mixed PICK_FP32=pallas PICK_BF16=pallas \
        rounds mace-mp-s 170 90
    profile profile_10k 170 mace-mp-s:water:10000:fp32:train:pallas \
        mace-mp-s:water:10000:bf16-mixed:train:pallas mace-mp-s:water:10000:fp32:ef:pallas \
        mace-mp-s:water:10000:bf16-mixed:ef:pallas
    SWEEP_ARGS=--no-agreement sweep node_one_warp 90 mace-mp-s "node transposed" pallas \
        pallas:BLOCK_NODES=1,NUM_WARPS=1 pallas:BLOCK_NODES=2,NUM_WARPS=2 \
        pallas:BLOCK_NODES_T=1,NUM_WARPS_T=1 pallas:BLOCK_NODES_T=2,NUM_WARPS_T=1
    picks picks_node "$out/node_one_warp.json" ;;
  b)
    SWEEP_ARGS=--no-agreement sweep macel_edge 150 mace-L edge pallas pallas:EDGE_GROUPS=3 \
        pallas:EDGE_GROUPS=5 pallas:EDGE_GROUPS=9
    picks picks_macel "$out/macel_edge.json"
    rounds mace-L 0 240 ;;
  *) echo "CALL must be a or b" >&2; exit 2 ;;
esac
finish
