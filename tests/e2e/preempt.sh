#!/usr/bin/env bash
# Preemption (runtime/preemption.h) at 2 ranks through the binary: SIGTERM, SIGUSR1 or SIGINT
# stops every rank after the same step, saves a whole checkpoint of that step (`latest` moved,
# `ckpt verify` ok), exits with code 75 and one line naming the signal, the step and the checkpoint;
# a rerun with checkpoint.resume auto (the default) continues to the end, and its losses equal an
# uninterrupted run's bit for bit. checkpoint.interval is 0, so every checkpoint here is the
# preemption's. Cases:
# 1. a signal raised on rank 1 only (MOEMPI_TEST_SIGNAL, test binary) at a known step;
# 2. SIGUSR1 sent to mpirun mid-run (Open MPI forwards it to every rank);
# 3. SIGTERM sent to one rank's process only, every 20 ms until it exits (signals during the save);
# 4. signals in the very first step (three on rank 0), and SIGUSR1 during start-up, before any step.
source "$(dirname "$0")/lib.bash"

common=(--set train.steps=40 --set train.log_interval=1 --set eval.interval=0 --set checkpoint.interval=0)
train() {  # run_dir, then extra arguments; "$BIN" is the binary
  local dir=$1; shift
  "${MPIRUN[@]}" -x MOEMPI_TEST_SIGNAL -np 2 "${BIN:-$MOEMPI}" train configs/tiny_ep.yaml "${common[@]}" \
    --set job.run_dir="$dir" "$@"
}
# In the background (`train_bg DIR > LOG &`): the subshell becomes mpirun, so $! is mpirun's pid.
train_bg() { local dir=$1; shift; exec "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" \
  --set job.run_dir="$dir" "$@"; }
last_step() { jsonl_values "$1/metrics.jsonl" step | tail -1; }

code=0; help=$("$MOEMPI" train --help 2>&1) || code=$?
[ "$code" -eq 0 ] && grep -q "exits with code 75" <<<"$help" && pass "train --help documents exit code 75" ||
  fail "train --help: exit $code: $(tail -3 <<<"$help")"

export MOEMPI_TEST_SIGNAL=
train "$TMP/full" > "$TMP/full.log" 2>&1 || fail "uninterrupted run: $(tail -3 "$TMP/full.log")"
[ "$(last_step "$TMP/full")" = 40 ] && pass "uninterrupted run: 40 steps" || fail "uninterrupted run did not reach step 40"

# Checks a preempted run (exit code, the line, the checkpoint), resumes it and compares the losses.
check_preempted() {  # name run_dir code signal-name [expected step]
  local name=$1 dir=$2 code=$3 sig=$4 want=${5:-} step line
  step=$(last_step "$dir")
  if [ "$code" -ne 75 ]; then fail "$name: exit code $code, expected 75: $(tail -3 "$dir.log")"; return; fi
  if [ -n "$want" ] && [ "$step" != "$want" ]; then fail "$name: stopped after step $step, expected $want"; return; fi
  line=$(grep "preempted by" "$dir.log" || true)
  if [ "$(grep -c "preempted by" "$dir.log")" -ne 1 ] ||
     ! grep -q "preempted by $sig after step $step/40: checkpoint $dir/ckpt/step_$step ('latest'); exit code 75" <<<"$line"; then
    fail "$name: no single line 'preempted by $sig after step $step/40: checkpoint ...step_$step': $line"; return
  fi
  pass "$name: exit 75 after step $step: ${line#*] }"
  if [ "$(cat "$dir/ckpt/latest")" = "step_$step" ] && [ "$(ls "$dir/ckpt" | tr '\n' ' ')" = "latest step_$step " ] &&
     "$MOEMPI" ckpt verify "$dir" > "$dir.verify" 2>&1; then
    pass "$name: latest = step_$step, ckpt verify: $(cat "$dir.verify")"
  else
    fail "$name: checkpoint: latest '$(cat "$dir/ckpt/latest" 2>/dev/null)', $(ls "$dir/ckpt" | tr '\n' ' '), verify: $(cat "$dir.verify")"
  fi
  local rc=0
  MOEMPI_TEST_SIGNAL= train "$dir" > "$dir.resume.log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ] && grep -q "resuming from $dir/ckpt/step_$step (step $step;" "$dir.resume.log" &&
     cmp -s <(jsonl_values "$TMP/full/metrics.jsonl" loss) <(jsonl_values "$dir/metrics.jsonl" loss) &&
     [ "$(jsonl_values "$dir/metrics.jsonl" step | tr '\n' ' ')" = "$(seq -s ' ' 1 40) " ]; then
    pass "$name: resumed from step $step to 40; every loss bit-identical to the uninterrupted run (final $(jsonl_values "$dir/metrics.jsonl" loss | tail -1))"
  else
    fail "$name: resume exit $rc: $(grep -E 'resuming|error' "$dir.resume.log" | head -3); losses: $(paste -d/ <(jsonl_values "$TMP/full/metrics.jsonl" loss) <(jsonl_values "$dir/metrics.jsonl" loss) | tr '\n' ' ')"
  fi
}

# --- 1. a signal on one rank only: every rank stops after that step -------------------------------
code=0
MOEMPI_TEST_SIGNAL=1:13:15 BIN=$MOEMPI_HOOKS train "$TMP/one" > "$TMP/one.log" 2>&1 || code=$?
check_preempted "SIGTERM on rank 1 only, in step 13" "$TMP/one" "$code" SIGTERM 13
code=0
MOEMPI_TEST_SIGNAL=1:13:15 train "$TMP/prod" > "$TMP/prod.log" 2>&1 || code=$?
[ "$code" -eq 0 ] && [ "$(last_step "$TMP/prod")" = 40 ] && pass "the production binary ignores MOEMPI_TEST_SIGNAL" ||
  fail "MOEMPI_TEST_SIGNAL in the production binary: exit $code"

# --- 2. SIGUSR1 to mpirun mid-run -------------------------------------------------------------
wait_for() {  # file pattern: waits up to 120 s for the pattern in the file
  for _ in $(seq 1200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
train_bg "$TMP/usr1" > "$TMP/usr1.log" 2>&1 &
job=$!
wait_for "$TMP/usr1/metrics.jsonl" '"step":5,' || fail "usr1: no step 5"
kill -USR1 "$job"
code=0; wait "$job" || code=$?
check_preempted "SIGUSR1 to mpirun after step 5" "$TMP/usr1" "$code" SIGUSR1

# --- 3. SIGTERM to rank 1's process only, repeated until it exits ----------------------------------
rank_pid() {  # mpirun pid, rank
  local p
  for p in $(pgrep -P "$1"); do
    tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" && { echo "$p"; return; }
  done
}
train_bg "$TMP/storm" > "$TMP/storm.log" 2>&1 &
job=$!
wait_for "$TMP/storm/metrics.jsonl" '"step":8,' || fail "storm: no step 8"
pid=$(rank_pid "$job" 1)
sent=0
while kill -TERM "$pid" 2>/dev/null; do sent=$((sent + 1)); sleep 0.02; done
code=0; wait "$job" || code=$?
echo "storm: $sent SIGTERMs sent to rank 1 (pid $pid)"
[ "$sent" -ge 2 ] && pass "storm: $sent SIGTERMs reached rank 1 before it exited" || fail "storm: only $sent signal sent"
check_preempted "SIGTERM storm on rank 1 only" "$TMP/storm" "$code" SIGTERM

# --- 4. the first step, and start-up -------------------------------------------------------------
code=0
MOEMPI_TEST_SIGNAL=0:1:2:3 BIN=$MOEMPI_HOOKS train "$TMP/first" > "$TMP/first.log" 2>&1 || code=$?
check_preempted "three SIGINTs on rank 0 in step 1" "$TMP/first" "$code" SIGINT 1
grep -q "(2 further signals on rank 0 ignored)" "$TMP/first.log" && pass "first step: the two further signals ignored, and said so" ||
  fail "first step: no 'further signals' note: $(grep preempted "$TMP/first.log")"
# SIGUSR1 to mpirun as soon as both ranks catch it (SigCgt in /proc: the handler is installed, the
# first thing main does), long before the first step ends: the job still trains one step, saves it
# and exits 75 (the step is reported, not asserted: the machine may be slow).
catches_usr1() { [ -n "$1" ] && (( 0x$(sed -n 's/^SigCgt:\s*//p' "/proc/$1/status" 2>/dev/null || echo 0) & 0x200 )); }
train_bg "$TMP/startup" > "$TMP/startup.log" 2>&1 &
job=$!
for _ in $(seq 1200); do
  catches_usr1 "$(rank_pid "$job" 0)" && catches_usr1 "$(rank_pid "$job" 1)" && break
  sleep 0.01
done
kill -USR1 "$job"
code=0; wait "$job" || code=$?
check_preempted "SIGUSR1 to mpirun during start-up (stopped after step $(last_step "$TMP/startup"))" "$TMP/startup" "$code" SIGUSR1
finish
