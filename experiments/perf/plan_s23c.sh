#!/usr/bin/env bash
# Session 23, GPU call 3 (~5 min on one H100): the species-indexed linear kernel with its rows
# blocked in species order (call 2 timed the unsorted kernel: plan_s23b.sh). Its tests compiled;
# MACE MP-S E+F and training at 10,125 atoms, fp32 and bf16-mixed, kernel off / on with 32 rows
# x 4 warps (default) / 64 x 8 / 16 x 4; E+F at 52,728 atoms off / on; a profile at 10k.
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s23c.sh "$OUT"
set -u
dest=$1; out=$1/work; mkdir -p "$out"  # everything is packed into one archive at the end
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" >> "$out/times.txt"; }
timeout 100 python3 -m pytest -q -m "" tests/nn/test_pallas_linear.py > "$out/tests_gpu.txt" 2>&1
stamp tests
off=pallas:INDEXED_LINEAR=0 on=pallas
timeout 330 python3 experiments/perf/pallas_conv.py --out "$out/whole_10k.json" --kernels \
    --no-ceilings --repeats 20 --variants $off $on pallas:INDEXED_BLOCK_ROWS=64,INDEXED_WARPS=8 \
    pallas:INDEXED_BLOCK_ROWS=16 --cases \
    mace-mp-s:water:10000:fp32:ef mace-mp-s:water:10000:bf16-mixed:ef \
    mace-mp-s:water:10000:fp32:train mace-mp-s:water:10000:bf16-mixed:train \
    > "$out/whole_10k.txt" 2>&1
stamp whole_10k
timeout 100 python3 experiments/perf/pallas_conv.py --out "$out/whole_53k.json" --kernels \
    --no-ceilings --repeats 20 --variants $off $on --cases \
    mace-mp-s:water:50000:fp32:ef mace-mp-s:water:50000:bf16-mixed:ef > "$out/whole_53k.txt" 2>&1
stamp whole_53k
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 80 python3 experiments/perf/profile.py \
    --out "$out/profile_10k" --cases mace-mp-s:water:10000:fp32:ef:pallas \
    mace-mp-s:water:10000:bf16-mixed:ef:pallas > "$out/profile_10k.txt" 2>&1
stamp profile_10k
tar czf "$dest/s23c.tgz" -C "$out" . && cp "$out/times.txt" "$out/tests_gpu.txt" "$dest/"
grep -A20 "^model " "$out/whole_10k.txt" "$out/whole_53k.txt"; tail -n 3 "$out/tests_gpu.txt"
rm -rf "$out"
