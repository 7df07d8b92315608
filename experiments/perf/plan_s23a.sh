#!/usr/bin/env bash
# Session 23, GPU call 1 (diagnostics, ~6 min on one H100; JSON and text under OUT):
#   1. MACE MP-S E+F at 52,728 atoms profiled per kernel, fp32 and bf16-mixed, default and
#      EDGE_STREAM=2 (is the edge kernel's in-model time its time alone? PERFORMANCE_LOG 22, 24);
#   2. the edge kernel alone at the same size in the same process order (pallas_conv.py --parts);
#   3. XLA's own register counts (xla_kernel_registers.sh);
#   4. the `auto` backend test on a GPU (never run there).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s23a.sh "$OUT"
set -u
out=$1; mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" >> "$out/times.txt"; }
cases="mace-mp-s:water:50000:fp32:ef:pallas mace-mp-s:water:50000:bf16-mixed:ef:pallas"
XLA_FLAGS=--xla_gpu_enable_command_buffer= python3 experiments/perf/profile.py \
    --out "$out/profile_default" --cases $cases > "$out/profile_default.txt" 2>&1
stamp profile_default
XLA_FLAGS=--xla_gpu_enable_command_buffer= python3 - "$out/profile_stream" $cases \
    > "$out/profile_stream.txt" 2>&1 <<'PY'
import runpy, sys
import mpnn_jax.nn.pallas_conv as pc
pc.EDGE_STREAM = 2
out, *cases = sys.argv[1:]
sys.argv = ["profile.py", "--out", out, "--cases", *cases]
runpy.run_path("experiments/perf/profile.py", run_name="__main__")
PY
stamp profile_stream
python3 experiments/perf/pallas_conv.py --out "$out/edge_alone.json" --kernels water:50000 \
    --parts-only --parts edge --parts-shape mace-mp-s --kernel-variants pallas \
    pallas:EDGE_STREAM=2 --cases --no-ceilings --repeats 20 > "$out/edge_alone.txt" 2>&1
stamp edge_alone
timeout 120 bash experiments/perf/xla_kernel_registers.sh "$out/xla_regs" mace-mp-s fp32 pallas \
    > "$out/xla_regs.txt" 2>&1
stamp xla_regs
timeout 150 python3 -m pytest -x -q -m "" tests/nn/test_linear_conv.py -k auto \
    > "$out/auto_test.txt" 2>&1
stamp auto_test
tail -n 3 "$out"/*.txt
