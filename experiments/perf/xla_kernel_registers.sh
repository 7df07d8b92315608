#!/usr/bin/env bash
# On a GPU machine: the registers XLA's own Triton gives the pallas convolution kernels, to set
# beside the static figures of kernel_registers.py (the `triton` package's). Compiles the kernels
# of SHAPE/PRESET under each VARIANT with XLA's dump on, then runs ptxas -v (found on the machine)
# over the dumped PTX (session 22's first run found no .ptx in the dump: the listing below says
# what XLA wrote; a later XLA may need another flag).  Usage: bash experiments/perf/xla_kernel_registers.sh OUT SHAPE PRESET VARIANT...
set -u
out=$1 shape=$2 preset=$3; shift 3
mkdir -p "$out"
ptxas=$(command -v ptxas || find / -name ptxas -type f -perm -u+x 2>/dev/null | head -1)
echo "ptxas: ${ptxas:-none found}"
for v in "$@"; do
  d=$(mktemp -d)
  JAX_ENABLE_COMPILATION_CACHE=false XLA_FLAGS="--xla_dump_to=$d --xla_dump_hlo_as_text --xla_gpu_dump_llvmir" python3 - "$shape" "$preset" "$v" <<'PY'
import sys, jax
sys.path.insert(0, "experiments/perf")
from kernel_registers import kernel_calls
from pallas_conv import apply_variant
apply_variant(sys.argv[3])
for kernel, (fn, args) in kernel_calls(sys.argv[1], sys.argv[2]).items():
    jax.jit(lambda *a, fn=fn: fn(*a)).lower(*args).compile()
PY
  tag=$(echo "$v" | tr ':=,' '___')
  echo "dumped: $(find "$d" -type f | wc -l) files, $(find "$d" -name '*.ptx' | wc -l) .ptx"
  find "$d" -type f -printf '%s %P\n' | sort -k2 > "$out/dump_listing_${tag}.txt"
  for f in $(find "$d" -name '*.ptx'); do
    [ -n "$ptxas" ] || break
    grep -q "mpnn_" "$f" || continue
    "$ptxas" -arch=sm_90a -v "$f" -o /dev/null 2>&1 | grep -E "entry function|Used|spill" \
      | grep -A2 "mpnn_" >> "$out/xla_registers_${shape}_${preset}_${tag}.txt"
  done
  echo "== $v"; cat "$out/xla_registers_${shape}_${preset}_${tag}.txt" 2>/dev/null
  rm -rf "$d"
done
