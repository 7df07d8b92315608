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
sweep() {  # OUT-NAME LIMIT-S SHAPE "PART..." VARIANTS...: kernels alone (pallas_conv.py --parts-only;
  # PART... one word per kernel, e.g. "node transposed")
  local name=$1 limit=$2 shape=$3 parts=$4; shift 4
  timeout "$limit" python3 experiments/perf/pallas_conv.py --out "$out/$name.json" \
      --kernels water:10000 --parts-only --parts $parts --parts-shape "$shape" \
      --kernel-variants "$@" --cases --no-ceilings --small --repeats 20 ${SWEEP_ARGS:-} 2>&1 \
      | grep -v Warning > "$out/$name.txt"
  stamp "$name"
}
picks() {  # OUT-NAME SWEEP-JSON...: PICK_FP32 / PICK_BF16 from pick_parts.py (pallas where none)
  local name=$1; shift
  python3 experiments/perf/pick_parts.py "$@" > "$out/$name.txt" 2>&1
  cat "$out/$name.txt"
  PICK_FP32=$(awk '$1 == "fp32" {print $2}' "$out/$name.txt")
  PICK_BF16=$(awk '$1 == "bf16-mixed" {print $2}' "$out/$name.txt")
  PICK_FP32=${PICK_FP32:-pallas} PICK_BF16=${PICK_BF16:-pallas}
}
rounds() {  # MODEL TRAIN-S EF-S: interleaved training (TRAIN-S > 0) and E+F rounds at 10k atoms of
  # the defaults of both presets, EXTRA, then PICK_BF16 / PICK_FP32 (where not pallas)
  local model=$1 train_s=$2 ef_s=$3 progs="pallas@fp32 pallas@bf16-mixed ${EXTRA:-}"
  [ "$PICK_BF16" != pallas ] && progs="$progs $PICK_BF16@bf16-mixed"
  [ "$PICK_FP32" != pallas ] && [[ " $progs " != *" $PICK_FP32@fp32 "* ]] && progs="$progs $PICK_FP32@fp32"
  echo "programs: $progs" | tee -a "$out/times.txt"
  [ "$train_s" -gt 0 ] && inter "${model%%-*}_train" "$train_s" "$model:water:10000:train" $progs
  inter "${model%%-*}_ef" "$ef_s" "$model:water:10000:ef" $progs
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
