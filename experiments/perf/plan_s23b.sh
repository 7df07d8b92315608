#!/usr/bin/env bash
# Session 23, GPU calls 2 and 3 (~5-7 min on one H100; JSON and text under OUT): the species-indexed
# linear kernel (mpnn_jax/nn/pallas_linear.py).
#   1. its tests with the kernel compiled by Triton (FP64 values and derivatives, the layer,
#      a MACE model with the kernel against the dense path);
#   2. MACE MP-S E+F and training at 10,125 atoms, fp32 and bf16-mixed, kernel off / on
#      (32 rows x 4 warps, the default) / 64 rows x 8 warps, one process, median of 20;
#   3. E+F at 52,728 atoms, off / on;
#   4. the per-kernel profile of E+F at 10,125 atoms with the kernel on.
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s23b.sh "$OUT"
set -u
dest=$1; out=$1/work; mkdir -p "$out"  # everything is packed into one archive at the end
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" >> "$out/times.txt"; }
timeout 150 python3 -m pytest -q -m "" tests/nn/test_pallas_linear.py > "$out/tests_gpu.txt" 2>&1
stamp tests
on=pallas off=pallas:INDEXED_LINEAR=0 wide=pallas:INDEXED_BLOCK_ROWS=64,INDEXED_WARPS=8
timeout 330 python3 experiments/perf/pallas_conv.py --out "$out/whole_10k.json" --kernels \
    --no-ceilings --repeats 20 --variants $off $on $wide --cases \
    mace-mp-s:water:10000:fp32:ef mace-mp-s:water:10000:bf16-mixed:ef \
    mace-mp-s:water:10000:fp32:train mace-mp-s:water:10000:bf16-mixed:train \
    > "$out/whole_10k.txt" 2>&1
stamp whole_10k
timeout 120 python3 experiments/perf/pallas_conv.py --out "$out/whole_53k.json" --kernels \
    --no-ceilings --repeats 20 --variants $off $on --cases \
    mace-mp-s:water:50000:fp32:ef mace-mp-s:water:50000:bf16-mixed:ef > "$out/whole_53k.txt" 2>&1
stamp whole_53k
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 90 python3 experiments/perf/profile.py \
    --out "$out/profile_10k" --cases mace-mp-s:water:10000:fp32:ef:pallas \
    mace-mp-s:water:10000:bf16-mixed:ef:pallas > "$out/profile_10k.txt" 2>&1
stamp profile_10k
tar czf "$dest/s23b.tgz" -C "$out" . && cp "$out/times.txt" "$out/tests_gpu.txt" "$dest/"
tail -n 25 "$out/whole_10k.txt" "$out/whole_53k.txt" "$out/tests_gpu.txt"
rm -rf "$out"
