#!/usr/bin/env bash
# Session 27's GPU calls on one H100 (PERFORMANCE_LOG entry 29). Everything packed into
# OUT/CALL.tgz (experiments/perf/plan_lib.sh).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s27.sh "$OUT" CALL
# CALL:
#   c  (session 26's plan_s26.sh c, run first this session: the two stage-output settings
#      together made bf16-mixed E+F 8% slower and training 1% faster)
#   a  which of the two stage-output settings slows E+F: MACE MP-S E+F at 10,125 atoms,
#      bf16-mixed with each setting alone and both, in one set of rounds; per-kernel profiles
#      of bf16-mixed E+F with both off and both on; and the 3,000-atom E+F profiles (fp32 and
#      bf16-mixed) that entry 28's two-size fit asked for
#   b  call a without the 3,000-atom profiles (for little device time)
#   p  the two profiles of call a alone (for little device time)
#   t  the node kernel and its transpose alone at MACE MP-S's shapes (C = 128, weights per pair),
#      10,125 water atoms, fp32 and bf16-mixed, under block, warp and prefetch settings: tuned on
#      NequIP-M's C = 32 (entry 14), they were never swept at MACE's; in session 23's training
#      profile the bf16-mixed node kernels gain 1.24x over fp32 where the edge kernel gains 1.65x
#      (log entry 29)
#   d  NequIP-M training at 10,125 atoms in interleaved rounds, fp32 against bf16-mixed
#      (plan_s26.sh d)
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
both=SPARSE_STAGE_OUTPUT=1,DX_STAGE_OUTPUT=1
stage_cases="mace-mp-s:water:10000:bf16-mixed:ef:pallas mace-mp-s:water:10000:bf16-mixed:ef:pallas:$both"
case $call in
  a|b)
    inter mace_ef_stage 140 mace-mp-s:water:10000:ef pallas@bf16-mixed \
        pallas:SPARSE_STAGE_OUTPUT=1@bf16-mixed pallas:DX_STAGE_OUTPUT=1@bf16-mixed \
        pallas:$both@bf16-mixed
    profile profile_stage 110 $stage_cases
    [ "$call" = b ] || profile profile_3k 70 mace-mp-s:water:3000:fp32:ef:pallas \
        mace-mp-s:water:3000:bf16-mixed:ef:pallas ;;
  p)
    profile profile_stage 110 $stage_cases ;;
  t)
    timeout 150 python3 experiments/perf/pallas_conv.py --out "$out/node_parts_mace.json" \
        --kernels water:10000 --parts-only --parts node transposed --parts-shape mace-mp-s \
        --kernel-variants pallas pallas:BLOCK_NODES=4 pallas:BLOCK_NODES=16 pallas:NUM_WARPS=4 \
        pallas:PREFETCH=1 pallas:BLOCK_NODES_T=8 pallas:NUM_WARPS_T=4 \
        --cases --no-ceilings --repeats 20 2>&1 | grep -v Warning | tee "$out/node_parts_mace.txt"
    stamp node_parts_mace ;;
  d)
    inter nequip_train 240 nequip-M:water:10000:train pallas@fp32 pallas@bf16-mixed ;;
  *) echo "CALL must be a, b, p, t or d" >&2; exit 2 ;;
esac
finish
