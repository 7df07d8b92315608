#!/usr/bin/env bash
# Session 23, GPU call 4 (~6 min on one H100): MACE layer 0's linear and species-indexed linear
# composed into one indexed kernel (linear.linear_then_indexed). Tests compiled; MACE MP-S E+F
# and training at 10,125 atoms, fp32 and bf16-mixed: composed (default) / two maps
# (COMPOSE_INDEXED=0) / no indexed kernel (INDEXED_LINEAR=0, session 22's program); E+F at
# 52,728 atoms, default / no indexed kernel.
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s23d.sh "$OUT"
set -u
dest=$1; out=$1/work; mkdir -p "$out"  # everything is packed into one archive at the end
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" >> "$out/times.txt"; }
timeout 100 python3 -m pytest -q -m "" tests/nn/test_pallas_linear.py > "$out/tests_gpu.txt" 2>&1
stamp tests
off=pallas:INDEXED_LINEAR=0 two=pallas:COMPOSE_INDEXED=0 on=pallas
timeout 300 python3 experiments/perf/pallas_conv.py --out "$out/whole_10k.json" --kernels \
    --no-ceilings --repeats 20 --variants $off $two $on --cases \
    mace-mp-s:water:10000:fp32:ef mace-mp-s:water:10000:bf16-mixed:ef \
    mace-mp-s:water:10000:fp32:train mace-mp-s:water:10000:bf16-mixed:train \
    > "$out/whole_10k.txt" 2>&1
stamp whole_10k
timeout 100 python3 experiments/perf/pallas_conv.py --out "$out/whole_53k.json" --kernels \
    --no-ceilings --repeats 20 --variants $off $on --cases \
    mace-mp-s:water:50000:fp32:ef mace-mp-s:water:50000:bf16-mixed:ef > "$out/whole_53k.txt" 2>&1
stamp whole_53k
tar czf "$dest/s23d.tgz" -C "$out" . && cp "$out/times.txt" "$out/tests_gpu.txt" "$dest/"
grep -h -A20 "^model " "$out/whole_10k.txt" "$out/whole_53k.txt"; tail -n 3 "$out/tests_gpu.txt"
rm -rf "$out"
