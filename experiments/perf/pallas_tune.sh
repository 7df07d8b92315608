#!/usr/bin/env bash
# Session 12: the pallas kernels' settings swept, each kernel alone on the 10,125-atom water graph
# (NequIP-M shapes), fp32 and bf16-mixed; then the models. Each sweep variant sets the node kernel
# (BLOCK_NODES, NUM_WARPS), its transpose (BLOCK_NODES_T, NUM_WARPS_T) and the edge kernel
# (BLOCK_EDGES, EDGE_WARPS) at once: the three kernels are independent, so one variant is three
# data points.
# Usage (GPU machine, repo root):
#   source experiments/gpu_env.sh && bash experiments/perf/pallas_tune.sh OUT [sweep] [models]
set -euo pipefail
out=${1:?output folder}
shift
steps=${*:-sweep models}
N=NBR_IN_ORDER=1
if [[ " $steps " == *" sweep "* ]]; then
python3 experiments/perf/pallas_conv.py --out "$out/pallas_tune.json" --cases --no-ceilings \
  --parts-only --repeats 20 --kernel-variants \
  pallas \
  pallas:$N \
  pallas:$N,BLOCK_NODES=4,NUM_WARPS=1,BLOCK_NODES_T=4,NUM_WARPS_T=1,BLOCK_EDGES=8,EDGE_WARPS=1 \
  pallas:$N,BLOCK_NODES=8,NUM_WARPS=2,BLOCK_NODES_T=16,NUM_WARPS_T=4,BLOCK_EDGES=16,EDGE_WARPS=2 \
  pallas:$N,BLOCK_NODES=16,NUM_WARPS=4,BLOCK_NODES_T=32,NUM_WARPS_T=8,BLOCK_EDGES=8,EDGE_WARPS=2 \
  pallas:$N,BLOCK_NODES=16,NUM_WARPS=8,BLOCK_NODES_T=8,NUM_WARPS_T=2,BLOCK_EDGES=32,EDGE_WARPS=8 \
  pallas:$N,BLOCK_NODES=32,NUM_WARPS=8,BLOCK_NODES_T=4,NUM_WARPS_T=2,BLOCK_EDGES=16,EDGE_WARPS=4 \
  pallas:$N,NUM_STAGES=2,BLOCK_NODES=8,NUM_WARPS=2,BLOCK_NODES_T=16,NUM_WARPS_T=4,BLOCK_EDGES=8,EDGE_WARPS=2 \
  pallas:$N,NUM_STAGES=3,BLOCK_NODES=16,NUM_WARPS=4,BLOCK_EDGES=8,EDGE_WARPS=2
fi
if [[ " $steps " == *" models "* ]]; then
B=${BEST:-pallas:$N,BLOCK_NODES=8,NUM_WARPS=2,BLOCK_EDGES=8,EDGE_WARPS=2}
python3 experiments/perf/pallas_conv.py --out "$out/pallas_models.json" --kernels --repeats 20 \
  --cases nequip-M:water:10000:fp32:ef nequip-M:water:10000:bf16-mixed:ef \
          nequip-M:water:10000:fp32:train nequip-M:water:10000:bf16-mixed:train \
  --variants e3nn pallas "$B,sorted=receivers"
fi
