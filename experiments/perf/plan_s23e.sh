#!/usr/bin/env bash
# Session 23, GPU call 5 (~4 min on one H100): call 4's 10k rows again with the cases and the
# variants in reverse order (default / no indexed kernel), then the per-kernel profile of the
# training step at 10,125 atoms with the defaults.
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s23e.sh "$OUT"
set -u
dest=$1; out=$1/work; mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" >> "$out/times.txt"; }
timeout 150 python3 experiments/perf/pallas_conv.py --out "$out/whole_10k_rev.json" --kernels \
    --no-ceilings --repeats 20 --variants pallas pallas:INDEXED_LINEAR=0 --cases \
    mace-mp-s:water:10000:bf16-mixed:train mace-mp-s:water:10000:fp32:train \
    mace-mp-s:water:10000:bf16-mixed:ef mace-mp-s:water:10000:fp32:ef \
    > "$out/whole_10k_rev.txt" 2>&1
stamp whole_10k_rev
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 90 python3 experiments/perf/profile.py \
    --out "$out/profile_train" --cases mace-mp-s:water:10000:fp32:train:pallas \
    mace-mp-s:water:10000:bf16-mixed:train:pallas > "$out/profile_train.txt" 2>&1
stamp profile_train
tar czf "$dest/s23e.tgz" -C "$out" . && cp "$out/times.txt" "$dest/"
grep -h -A12 "^model " "$out/whole_10k_rev.txt"; grep "^==" "$out/profile_train.txt"
rm -rf "$out"
