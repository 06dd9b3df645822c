#!/usr/bin/env bash
# Every balancing pass through the binary a user runs (moempi train with the pass in the YAML),
# alone and combined, at 1 and 2 ranks; the balance metrics in the step line and metrics.jsonl.
source "$(dirname "$0")/lib.bash"

short=(--set train.steps=12 --set eval.interval=6 --set eval.batches=1 --set train.log_interval=6)
run() {  # name, then moempi train arguments (run on one rank)
  local name=$1; shift
  if "$MOEMPI" train configs/tiny.yaml "${short[@]}" --set job.run_dir="$TMP/$name" "$@" > "$TMP/$name.log" 2>&1; then
    pass "$name trains"
  else
    fail "$name: $(tail -3 "$TMP/$name.log")"
  fi
}
run seq --set "moe.balancing.0={type: seq_aux_loss, coeff: 0.0001}"
run global --set "moe.balancing.0={type: global_batch_aux_loss, coeff: 0.01}"
run bias_sigmoid --set "moe.balancing.0={type: loss_free_bias, rate: 0.001}" --set moe.score=sigmoid
run bias_proportional --set "moe.balancing.0={type: loss_free_bias, update: proportional, rate: 0.01, freeze_after: 6}"
run combined --set "moe.balancing.0={type: global_batch_aux_loss, coeff: 0.01}" \
  --set "moe.balancing.1={type: loss_free_bias}" --set "moe.balancing.2={type: seq_aux_loss, coeff: 0.0001}" \
  --set "moe.balancing.3={type: z_loss, coeff: 0.001}"

m="$TMP/combined/metrics.jsonl"
for key in maxvio load_cv load_cv_layers bias bias_max_abs maxvio_global maxvio_global_layers specialisation \
           specialisation_norm expert_load aux_loss; do
  grep -q "\"$key\":" "$m" && pass "jsonl has $key" || fail "jsonl lacks $key"
done
[ "$(grep -c '"maxvio_global":' "$m")" -eq 2 ] && pass "maxvio_global at each of the 2 evaluations" \
  || fail "maxvio_global lines: $(grep -c '"maxvio_global":' "$m")"
grep -q '"bias":' "$TMP/global/metrics.jsonl" && fail "bias reported without loss_free_bias" || pass "no bias without the pass"
grep -qE '^step 12/12 \| .*maxvio [0-9.]+ \| a2a [0-9]+% \| eta [^|]+ \| cv [0-9.]+ \| bias [0-9.e+-]+ \| maxvio_g [0-9.]+ \| spec [0-9.]+' \
  "$TMP/combined.log" && pass "step line has cv, bias, maxvio_g, spec" || fail "step line: $(grep '^step 12' "$TMP/combined.log")"
# freeze_after 6: the biases of the last two logged steps (6 and 12) are the same.
b=$(grep -o '"bias":\[\[[^]]*\]' "$TMP/bias_proportional/metrics.jsonl" | tail -2 | sort -u | wc -l)
[ "$b" -eq 1 ] && pass "freeze_after stops the bias" || fail "bias changed after freeze_after: $b distinct"
b=$(grep -o '"bias":\[\[[^]]*\]' "$TMP/bias_proportional/metrics.jsonl" | sort -u | wc -l)
[ "$b" -eq 2 ] && pass "the bias moved before freeze_after" || fail "bias values over steps 1, 6, 12: $b distinct"

# Two ranks (data parallel and expert parallel) with every pass: same biases on every rank is
# checked in tests/balancing_mpitest.cpp; here the run must work and report.
for layout in "parallel.strategy=dp" "parallel.strategy=ep --set parallel.ep=2"; do
  name="np2_${layout%%=*}_${layout##*=}"; name=${name//[^a-z0-9_]/_}
  # shellcheck disable=SC2086
  if timeout 300 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny.yaml "${short[@]}" --set $layout \
      --set "moe.balancing.0={type: global_batch_aux_loss, coeff: 0.01}" --set "moe.balancing.1={type: loss_free_bias}" \
      --set job.run_dir="$TMP/$name" > "$TMP/$name.log" 2>&1 && grep -q '"maxvio_global":' "$TMP/$name/metrics.jsonl"; then
    pass "2 ranks, $layout: trains and reports"
  else
    fail "2 ranks, $layout: $(tail -3 "$TMP/$name.log")"
  fi
done
finish
