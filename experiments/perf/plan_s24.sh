#!/usr/bin/env bash
# Session 24's GPU calls on one H100 (PERFORMANCE_LOG entry 26): the radial MLP as fused Pallas
# kernels (mpnn_jax/nn/pallas_radial.py) timed in MACE MP-S, E+F and training at 10,125 atoms and
# E+F at 52,728, fp32 and bf16-mixed, median of 20, one process per step; everything packed into
# OUT/CALL.tgz (the device tool brings back at most 8 files).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s24.sh "$OUT" CALL
# CALL:
#   a  tests; 10k: XLA's radial MLP (RADIAL_FUSED=0) / kernels / 32-row forward and derivative;
#      E+F profile at 10k with the kernels
#   b  10k with the variants and cases reversed; 53k E+F: XLA / kernels; training profile
#   c  tests; the kernels alone, a sweep of tile settings (radial_kernels.py); 10k: XLA / the
#      sweep's fastest settings
set -u
dest=$1 call=$2; out=$1/work; mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" >> "$out/times.txt"; }
off=pallas:RADIAL_FUSED=0
ef="mace-mp-s:water:10000:fp32:ef mace-mp-s:water:10000:bf16-mixed:ef"
train="mace-mp-s:water:10000:fp32:train mace-mp-s:water:10000:bf16-mixed:train"
whole() {  # OUT-NAME LIMIT-S "VARIANTS" CASES...
  local name=$1 limit=$2 variants=$3; shift 3
  timeout "$limit" python3 experiments/perf/pallas_conv.py --out "$out/$name.json" --kernels \
      --no-ceilings --repeats 20 --variants $variants --cases "$@" > "$out/$name.txt" 2>&1
  stamp "$name"
}
profile() {  # OUT-NAME CASES...
  local name=$1; shift
  XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 120 python3 experiments/perf/profile.py \
      --out "$out/$name" --cases "$@" > "$out/$name.txt" 2>&1
  stamp "$name"
}
tests() {
  timeout 70 python3 -m pytest -q -m "" tests/nn/test_pallas_radial.py > "$out/tests_gpu.txt" 2>&1
  stamp tests
}
case $call in
  a)
    tests
    # (call a ran with the kernels on by default and 16-row derivative blocks: "pallas" below)
    whole whole_10k 260 "$off pallas pallas:RADIAL_BLOCK_ROWS=32,RADIAL_DX_BLOCK_ROWS=32" $ef $train
    profile profile_10k mace-mp-s:water:10000:fp32:ef:pallas mace-mp-s:water:10000:bf16-mixed:ef:pallas ;;
  b)
    whole whole_10k_rev 200 "pallas $off" mace-mp-s:water:10000:bf16-mixed:train \
        mace-mp-s:water:10000:fp32:train mace-mp-s:water:10000:bf16-mixed:ef mace-mp-s:water:10000:fp32:ef
    whole whole_53k 130 "$off pallas" mace-mp-s:water:50000:fp32:ef mace-mp-s:water:50000:bf16-mixed:ef
    profile profile_train mace-mp-s:water:10000:fp32:train:pallas \
        mace-mp-s:water:10000:bf16-mixed:train:pallas ;;
  c)
    tests
    timeout 170 python3 experiments/perf/radial_kernels.py --out "$out/radial_kernels.json" \
        --best "$out/best.txt" --block-out 128 > "$out/radial_kernels.txt" 2>&1
    stamp radial_kernels
    best=$(cat "$out/best.txt" 2>/dev/null); best=${best:-pallas:RADIAL_FUSED=1}
    whole whole_10k 170 "$off $best" $ef $train ;;
  *) echo "CALL must be a, b or c" >&2; exit 2 ;;
esac
tar czf "$dest/$call.tgz" -C "$out" . && cp "$out/times.txt" "$dest/"
grep -h -A20 "^model " "$out"/whole*.txt; tail -n 3 "$out/tests_gpu.txt" 2>/dev/null
rm -rf "$out"
