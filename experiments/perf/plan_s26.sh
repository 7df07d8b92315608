#!/usr/bin/env bash
# Session 26's GPU calls on one H100 (PERFORMANCE_LOG entry 28): the goals' speed-ups measured in
# interleaved rounds (experiments/perf/interleaved.py: every program once per round, the ratio the
# median over rounds), so that the 5% drift of one program's median between rows of a process
# (entry 27) cancels. Everything packed into OUT/CALL.tgz (experiments/perf/plan_lib.sh).
#   source experiments/gpu_env.sh && bash experiments/perf/plan_s26.sh "$OUT" CALL
# CALL:
#   a  MACE MP-S at 10,125 atoms: training and E+F (E+F with XLA's radial MLP in bf16-mixed too);
#      NequIP-M at 10,125 atoms: E+F and training; MACE MP-S E+F at 3,000 atoms
#      (ran at 88cd9aa; the limits cut the last three: setup and compiles took longer)
#   b  the edge budgets in multiples of 8192 (the pairs of 4096, entry 28) against 1024, MACE MP-S
#      at 10,125 atoms, training and E+F, fp32 and bf16-mixed in one set of rounds each; then
#      NequIP-M E+F at 10,125 atoms and MACE MP-S E+F at 3,000 atoms, with longer limits
#      (ran at 79db1a3, whose grammar wrote the padding `@1024`)
#   c  (not run: no machine started, then too little device time; for the next session) two
#      changes built on the CPU, each against the defaults in one set of rounds, MACE MP-S at
#      10,125 atoms, training then E+F: node budgets in multiples of 512 (10,240 nodes) against
#      the buckets' 8 (10,128): XLA pads ~50 node-sized copies for its split dots; and
#      the kernels storing their caller's BF16 in bf16-mixed (pallas_symmetric.SPARSE_STAGE_OUTPUT
#      and pallas_conv.DX_STAGE_OUTPUT: eight [n, 16, 128] conversions fewer per training step,
#      bit-identical values). Each program is also timed
#      20 times in a row after the rounds (call a's interleaved E+F medians were 11% above
#      session 25's consecutive rows on another machine). Entry 28.
#   d  (not run; for the next session) NequIP-M training at 10,125 atoms in interleaved rounds
#      (call a's limit cut it), fp32 against bf16-mixed
dest=$1 call=$2
source "$(dirname "$0")/plan_lib.sh"
case $call in
  a)
    inter mace_train 160 mace-mp-s:water:10000:train pallas@fp32 pallas@bf16-mixed
    inter mace_ef 100 mace-mp-s:water:10000:ef pallas@fp32 pallas@bf16-mixed \
        pallas:RADIAL_FUSED=0@bf16-mixed
    inter nequip_ef 80 nequip-M:water:10000:ef pallas@fp32 pallas@bf16-mixed
    inter nequip_train 120 nequip-M:water:10000:train pallas@fp32 pallas@bf16-mixed
    inter mace_3k_ef 60 mace-mp-s:water:3000:ef pallas@fp32 pallas@bf16-mixed ;;
  b)
    both="pallas@fp32@edges=1024 pallas@fp32 pallas@bf16-mixed@edges=1024 pallas@bf16-mixed"
    inter mace_train_pad 210 mace-mp-s:water:10000:train $both
    inter mace_ef_pad 140 mace-mp-s:water:10000:ef $both
    inter nequip_ef 120 nequip-M:water:10000:ef pallas@fp32 pallas@bf16-mixed
    inter mace_3k_ef 70 mace-mp-s:water:3000:ef pallas@fp32 pallas@bf16-mixed ;;
  c)
    export CONSECUTIVE=20
    progs="pallas@fp32 pallas@bf16-mixed pallas:SPARSE_STAGE_OUTPUT=1,DX_STAGE_OUTPUT=1@bf16-mixed
           pallas@fp32@nodes=512 pallas@bf16-mixed@nodes=512"
    inter mace_train_c 220 mace-mp-s:water:10000:train $progs
    inter mace_ef_c 120 mace-mp-s:water:10000:ef $progs ;;
  d)
    inter nequip_train 240 nequip-M:water:10000:train pallas@fp32 pallas@bf16-mixed ;;
  *) echo "CALL must be a, b, c or d" >&2; exit 2 ;;
esac
finish
