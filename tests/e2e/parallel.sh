#!/usr/bin/env bash
# Multi-rank training through the binary under mpirun: data parallel and expert parallel at 2
# ranks (auto = shm, and flat) log the same training and validation losses as one rank with the same
# global batch (one rank runs the two micro-batches the two ranks split). Tolerance 1e-5 relative over 30 steps (measured: ~1e-8) (fp32 summation
# order of the gradient all-reduce; tests/train_mpitest.cpp holds the tighter per-step bound).
source "$(dirname "$0")/lib.bash"

common=(--set train.steps=30 --set train.log_interval=1 --set eval.interval=15 --set train.micro_batch=4)
"$MOEMPI" train configs/tiny.yaml "${common[@]}" --set train.grad_accum=2 --set job.run_dir="$TMP/one" > "$TMP/one.log" 2>&1
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" --set job.run_dir="$TMP/dp" > "$TMP/dp.log" 2>&1
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" --set job.run_dir="$TMP/ep" > "$TMP/ep.log" 2>&1
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" --set moe.dispatch.type=flat \
  --set job.run_dir="$TMP/ep_flat" > "$TMP/ep_flat.log" 2>&1
# Expert parallel from the single-rank config with nothing but the strategy and ep set (auto).
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${common[@]}" --set parallel.strategy=ep \
  --set parallel.ep=2 --set job.run_dir="$TMP/ep_set" > "$TMP/ep_set.log" 2>&1

compare() {  # name file key expected-count [reference file]
  local worst
  worst=$(paste <(jsonl_values "${5:-$TMP/one/metrics.jsonl}" "$3") <(jsonl_values "$2" "$3") |
          awk -v want="$4" 'NF == 2 { den = $1 < 0 ? -$1 : $1; if (den < 1e-12) den = 1e-12
                                       d = ($1 - $2) / den; if (d < 0) d = -d; if (d > w) w = d; n++ }
               END { if (n != want) print "missing"; else printf "%.3g", w }')
  if [ "$worst" != "missing" ] && awk -v w="$worst" 'BEGIN { exit !(w < 1e-5) }'; then
    pass "$1: $4 values of $3, worst relative difference to one rank $worst"
  else
    fail "$1: $3: worst relative difference $worst"
  fi
}
# Every model and MoE option at once, expert parallel: sigmoid router without renormalisation,
# SwiGLU experts, RMSNorm, a shared expert, a dense FFN layer, capacity drops, z-loss.
options=(--set moe.score=sigmoid --set moe.normalize_topk=false --set model.activation=swiglu
         --set model.norm=rmsnorm --set moe.num_shared_experts=1 --set model.n_layers=3
         --set moe.every_n_layers=2 --set moe.capacity_factor=1.0 --set moe.balancing.1.type=z_loss
         --set moe.balancing.1.coeff=0.001)
"$MOEMPI" train configs/tiny.yaml "${common[@]}" "${options[@]}" --set train.grad_accum=2 \
  --set job.run_dir="$TMP/one_opt" > "$TMP/one_opt.log" 2>&1
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" "${options[@]}" \
  --set job.run_dir="$TMP/ep_opt" > "$TMP/ep_opt.log" 2>&1

compare "dp at 2 ranks" "$TMP/dp/metrics.jsonl" loss 30
compare "dp at 2 ranks" "$TMP/dp/metrics.jsonl" val_loss 2
compare "ep=2 auto (shm) at 2 ranks" "$TMP/ep/metrics.jsonl" loss 30
compare "ep=2 auto (shm) at 2 ranks" "$TMP/ep/metrics.jsonl" val_loss 2
compare "ep=2 flat all-to-all at 2 ranks" "$TMP/ep_flat/metrics.jsonl" loss 30
compare "ep=2 from tiny.yaml with --set strategy and ep only" "$TMP/ep_set/metrics.jsonl" loss 30
grep -q 'moe.dispatch.type auto: chose shm' "$TMP/ep.log" && pass "auto announces its choice (shm)" \
  || fail "no auto line in ep log: $(grep -m1 dispatch "$TMP/ep.log")"
# The transports differ in order of summation nowhere: shm and flat log bit-identical losses.
if [ "$(jsonl_values "$TMP/ep/metrics.jsonl" loss)" = "$(jsonl_values "$TMP/ep_flat/metrics.jsonl" loss)" ]; then
  pass "shm and flat: bit-identical losses"
else
  fail "shm and flat losses differ"
fi
shm_inter=$(jsonl_values "$TMP/ep/metrics.jsonl" a2a_bytes_inter | sort -u)
shm_intra=$(jsonl_values "$TMP/ep/metrics.jsonl" a2a_bytes_intra | tail -1)
[ "$shm_inter" = "0" ] && [ "$shm_intra" -gt 0 ] && pass "dispatch bytes: $shm_intra intra-node, 0 inter-node" \
  || fail "dispatch bytes intra $shm_intra inter $shm_inter"
compare "every option, ep=2" "$TMP/ep_opt/metrics.jsonl" loss 30 "$TMP/one_opt/metrics.jsonl"
compare "every option, ep=2" "$TMP/ep_opt/metrics.jsonl" dropped_frac 30 "$TMP/one_opt/metrics.jsonl"
first=$(jsonl_values "$TMP/ep_opt/metrics.jsonl" loss | head -1); last=$(jsonl_values "$TMP/ep_opt/metrics.jsonl" loss | tail -1)
awk -v f="$first" -v l="$last" 'BEGIN { exit !(l < f - 1.0) }' && pass "every option: loss falls $first -> $last" \
  || fail "every option: loss $first -> $last"
drop=$(jsonl_values "$TMP/ep_opt/metrics.jsonl" dropped_frac | tail -1)
awk -v d="$drop" 'BEGIN { exit !(d > 0 && d < 0.5) }' && pass "capacity drops logged: $drop" || fail "dropped_frac $drop"
grep -q 'world 2 = dp 1 × ep 2' "$TMP/ep.log" && pass "rank map announces dp 1 × ep 2" || fail "no layout line in ep log"
finish
