#!/usr/bin/env bash
# Non-finite values (issue 12, defect 16 and "what else" 4): a step whose gradient norm is not
# finite (a NaN put into one gradient by the test binary's MOEMPI_TEST_NAN_GRAD hook) is never
# applied. train.nonfinite: abort (default) ends the job naming the step and the first offending
# tensor and rank; skip leaves the parameters unchanged, warns, and marks the step in
# metrics.jsonl. train.loss_spike_factor warns about a loss above that factor × the recent mean.
source "$(dirname "$0")/lib.bash"

T=layers.1.attn.proj.w
expect_error "non-finite gradient aborts by default" "step 3: the gradient norm is nan" \
  "first non-finite gradient: $T (element 0 is nan)" "train.nonfinite: skip" -- \
  env MOEMPI_TEST_NAN_GRAD=1:3:$T timeout 120 "${MPIRUN[@]}" -x MOEMPI_TEST_NAN_GRAD -np 2 "$MOEMPI_HOOKS" train \
  configs/tiny.yaml --set train.steps=5 --set job.run_dir="$TMP/abort"
expect_error "non-finite gradient aborts at 1 rank" "step 2: the gradient norm is nan" "first non-finite gradient: $T" -- \
  env MOEMPI_TEST_NAN_GRAD=0:2:$T "$MOEMPI_HOOKS" train configs/tiny.yaml --set train.steps=5 --set job.run_dir="$TMP/abort1"

# skip: the run finishes, the step is marked in the log and the JSONL, later losses are finite.
code=0
MOEMPI_TEST_NAN_GRAD=1:3:$T timeout 120 "${MPIRUN[@]}" -x MOEMPI_TEST_NAN_GRAD -np 2 "$MOEMPI_HOOKS" train configs/tiny.yaml \
  --set train.steps=6 --set train.log_interval=1 --set train.nonfinite=skip --set job.run_dir="$TMP/skip" \
  > "$TMP/skip.log" 2>&1 || code=$?
skipped=$(grep -c '"skipped":true' "$TMP/skip/metrics.jsonl" || true)
step3=$(grep '"step":3,' "$TMP/skip/metrics.jsonl" | grep -c '"skipped":true' || true)
last=$(jsonl_values "$TMP/skip/metrics.jsonl" loss | tail -1)
if [ "$code" -eq 0 ] && [ "$skipped" -eq 1 ] && [ "$step3" -eq 1 ] \
   && grep -q "step 3: the gradient norm is nan .*first non-finite gradient: .*$T .*step skipped (train.nonfinite: skip)" "$TMP/skip.log" \
   && grep -q "step 3/6 .*SKIPPED (non-finite)" "$TMP/skip.log" && [ "$last" != "null" ]; then
  pass "train.nonfinite: skip: step 3 skipped and marked, final loss $last"
else
  fail "skip: exit $code, $skipped skipped lines: $(grep -m2 'skip\|error' "$TMP/skip.log")"
fi
# The poisoned step's forward is the clean run's (same loss, bit for bit); only its update is dropped.
MOEMPI_TEST_NAN_GRAD=0:1:$T "$MOEMPI_HOOKS" train configs/tiny.yaml --set train.steps=2 --set train.log_interval=1 \
  --set train.nonfinite=skip --set job.run_dir="$TMP/skip1" > /dev/null 2>&1
"$MOEMPI" train configs/tiny.yaml --set train.steps=2 --set train.log_interval=1 --set job.run_dir="$TMP/clean" > /dev/null 2>&1
a=$(jsonl_values "$TMP/skip1/metrics.jsonl" loss | head -1); b=$(jsonl_values "$TMP/clean/metrics.jsonl" loss | head -1)
[ -n "$a" ] && [ "$a" = "$b" ] && pass "the poisoned step's loss is the clean run's ($a): only its update is dropped" \
  || fail "step 1 loss: skip run $a, clean run $b"

expect_error "train.nonfinite value" "train.nonfinite" "abort, skip" -- "$MOEMPI" validate configs/tiny.yaml --set train.nonfinite=ignore

# Loss spikes: a factor below 1 makes every step after the 5th a "spike" (the wiring); the default
# (2) stays quiet on a normal run.
out=$("$MOEMPI" train configs/tiny.yaml --set train.steps=8 --set train.loss_spike_factor=0.5 --set job.run_dir="$TMP/spike" 2>&1)
grep -q "step 6: loss spike: .* is more than 0.5 × the recent mean .* (train.loss_spike_factor)" <<<"$out" \
  && pass "loss spike warning: $(grep -m1 'loss spike' <<<"$out")" || fail "no loss spike warning: $out"
out=$("$MOEMPI" train configs/tiny.yaml --set train.steps=60 --set job.run_dir="$TMP/quiet" 2>&1)
! grep -q "loss spike" <<<"$out" && pass "no spike warning on a normal run at the default factor" || fail "spurious spike: $out"
finish
