# Helpers shared by the GPU plans (`plan_s23.sh`, `plan_s24.sh`): source after setting `dest`
# and `call` from the arguments. Each step writes under "$out" and stamps its end in times.txt.
set -u
out=$dest/work; mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" >> "$out/times.txt"; }
ef="mace-mp-s:water:10000:fp32:ef mace-mp-s:water:10000:bf16-mixed:ef"
train="mace-mp-s:water:10000:fp32:train mace-mp-s:water:10000:bf16-mixed:train"
whole() {  # OUT-NAME LIMIT-S "VARIANTS" CASES...
  local name=$1 limit=$2 variants=$3; shift 3
  timeout "$limit" python3 experiments/perf/pallas_conv.py --out "$out/$name.json" --kernels \
      --no-ceilings --repeats 20 --variants $variants --cases "$@" > "$out/$name.txt" 2>&1
  stamp "$name"
}
profile() {  # OUT-NAME LIMIT-S CASES...
  local name=$1 limit=$2; shift 2
  XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout "$limit" python3 experiments/perf/profile.py \
      --out "$out/$name" --cases "$@" > "$out/$name.txt" 2>&1
  stamp "$name"
}
inter() {  # OUT-NAME LIMIT-S CASE PROGRAMS... (interleaved rounds; CONSECUTIVE=N also in a row)
  local name=$1 limit=$2 case=$3; shift 3
  timeout "$limit" python3 experiments/perf/interleaved.py --out "$out/interleaved_$name.json" \
      --case "$case" --programs "$@" --repeats 60 ${CONSECUTIVE:+--consecutive $CONSECUTIVE} > "$out/interleaved_$name.txt" 2>&1
  stamp "interleaved_$name"
}
tests() {  # LIMIT-S TEST-FILE [PYTEST-ARGS...]
  local limit=$1; shift
  timeout "$limit" python3 -m pytest -q -m "" "$@" > "$out/tests_gpu.txt" 2>&1
  stamp tests
}
finish() {  # pack everything into one archive (the device tool brings back at most 8 files)
  tar czf "$dest/$call.tgz" -C "$out" . && cp "$out/times.txt" "$dest/"
  grep -h -A20 "^model " "$out"/whole*.txt 2>/dev/null; grep -h -v "^compiled\|^jax\|Warning\|warn" "$out"/interleaved*.txt 2>/dev/null
  tail -n 3 "$out/tests_gpu.txt" 2>/dev/null; tail -n 40 "$out"/profile_*.txt 2>/dev/null
  rm -rf "$out"
}
