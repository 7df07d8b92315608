#!/usr/bin/env bash
# Session 29's GPU calls on one H100 (PERFORMANCE_LOG entry 31). Everything packed into
# OUT/CALL.tgz (experiments/perf/plan_lib.sh). Call e of plan_s28.sh ran first this session
# (`h100_s29/call_e/`): fp32's edge kernel is 14% faster alone at BLOCK_EDGES=4 (4 warps) and
# makes fp32 MACE MP-S E+F 1.030x and training 1.025x faster; BF16's is not.
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s29.sh "$OUT" CALL
# CALL:
#   m  MACE MP-S's edge kernel alone (C = 128, weights per pair, 10,125 water atoms) at smaller
#      blocks and fewer warps in both presets (2-byte operands at 8 values per thread: the bytes
#      per thread of FP32's 4), pick_parts.py's picks in interleaved rounds of training and E+F
#      against the defaults and call e's FP32 pick; then NequIP-M's three kernels alone (C = 32)
#      at 8 BF16 values per thread (picks printed, not timed in the model). Ran at 091886d,
#      before pallas_conv.edge_tile: its `pallas` is the old edge tile, now `pallas:BLOCK_EDGES=8`
#   f  with call m's edge tile the default (pallas_conv.edge_tile: one warp over 2 edges at
#      C = 128): MACE MP-S training and E+F in interleaved rounds against the old tile
#      (BLOCK_EDGES=8: 8 warps) in both presets; the edge kernel alone at one edge per warp; then
#      NequIP-M's edge kernel alone at one warp (blocks 4 and 2; C = 32 keeps block 8 over 2
#      warps by default) and its pick in interleaved E+F rounds
#   g  call f without NequIP (for little device time)
#   r  call f's MACE rounds alone
#   q  call r for little device time: E+F rounds as in r, training rounds of the two defaults
#      alone (TRAIN_S seconds, 90; 0: none)
#   s  MACE MP-S's node kernel and its transpose alone as one-warp programs over 1 or 2 receivers
#      (ptxas: no spills, 96-136 registers, 15-21 programs per multiprocessor; smaller blocks
#      wait less on their receivers' largest degree), then call r
#   n  NequIP-M training and E+F at 10,125 atoms in interleaved rounds: the defaults of both
#      presets and the programs given in PICK_FP32 / PICK_BF16 (call m's NequIP picks)
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
case $call in
  m)
    sweep edge_sweep 110 mace-mp-s edge pallas pallas:BLOCK_EDGES=4 pallas:BLOCK_EDGES=2 \
        pallas:BLOCK_EDGES=4,EDGE_WARPS=2 pallas:BLOCK_EDGES=2,EDGE_WARPS=1 \
        pallas:BLOCK_EDGES=8,EDGE_WARPS=2 pallas:BLOCK_EDGES=4,EDGE_WARPS=8
    picks picks_mace "$out/edge_sweep.json"
    EXTRA=pallas:BLOCK_EDGES=4@fp32 rounds mace-mp-s 190 95
    sweep nq_node 50 nequip-M node pallas pallas:NUM_WARPS=1 pallas:BLOCK_NODES=16,NUM_WARPS=2 \
        pallas:BLOCK_NODES=4 pallas:BLOCK_NODES=16
    sweep nq_trans 50 nequip-M transposed pallas pallas:NUM_WARPS_T=1 \
        pallas:BLOCK_NODES_T=8,NUM_WARPS_T=2 pallas:BLOCK_NODES_T=2 pallas:BLOCK_NODES_T=8
    sweep nq_edge 50 nequip-M edge pallas pallas:EDGE_WARPS=1 pallas:BLOCK_EDGES=16,EDGE_WARPS=2 \
        pallas:BLOCK_EDGES=4 pallas:BLOCK_EDGES=16
    picks picks_nequip "$out/nq_node.json" "$out/nq_trans.json" "$out/nq_edge.json" ;;
  s)
    sweep node_one_warp 90 mace-mp-s "node transposed" pallas pallas:BLOCK_NODES=1,NUM_WARPS=1 \
        pallas:BLOCK_NODES=2,NUM_WARPS=2 pallas:BLOCK_NODES_T=1,NUM_WARPS_T=1 \
        pallas:BLOCK_NODES_T=2,NUM_WARPS_T=1
    python3 experiments/perf/pick_parts.py "$out/node_one_warp.json" | tee "$out/picks_node.txt"
    PICK_FP32=pallas PICK_BF16=pallas EXTRA="pallas:BLOCK_EDGES=8@fp32 pallas:BLOCK_EDGES=8@bf16-mixed" \
        rounds mace-mp-s 160 90 ;;
  q)
    inter mace_ef 90 mace-mp-s:water:10000:ef pallas@fp32 pallas@bf16-mixed \
        pallas:BLOCK_EDGES=8@fp32 pallas:BLOCK_EDGES=8@bf16-mixed
    [ "${TRAIN_S:-90}" -gt 0 ] && inter mace_train "${TRAIN_S:-90}" mace-mp-s:water:10000:train \
        pallas@fp32 pallas@bf16-mixed ;;
  f|g|r)
    PICK_FP32=pallas PICK_BF16=pallas EXTRA="pallas:BLOCK_EDGES=8@fp32 pallas:BLOCK_EDGES=8@bf16-mixed" \
        rounds mace-mp-s 160 90
    [ "$call" = r ] && { finish; exit 0; }
    sweep edge_sweep_1 70 mace-mp-s edge pallas pallas:BLOCK_EDGES=1 pallas:BLOCK_EDGES=8
    [ "$call" = g ] && { finish; exit 0; }
    SWEEP_ARGS=--no-agreement sweep nq_edge 90 nequip-M edge pallas pallas:BLOCK_EDGES=4 \
        pallas:BLOCK_EDGES=2
    picks picks_nequip "$out/nq_edge.json"
    EXTRA= rounds nequip-M 0 120 ;;
  n)
    PICK_FP32=${PICK_FP32:-pallas} PICK_BF16=${PICK_BF16:-pallas}
    rounds nequip-M 300 130 ;;
  *) echo "CALL must be m, f, g, q, r, s or n" >&2; exit 2 ;;
esac
finish
