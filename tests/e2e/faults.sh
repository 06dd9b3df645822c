#!/usr/bin/env bash
# Faults with restart (issue 12, "What else to build" 3). At 2 and 3 ranks, tiny model, short
# comm.timeout_s:
#  - kill -9 of one rank mid-run, SIGSTOP of one rank mid-run, and a rank killed in the middle of
#    a checkpoint save (after the shards, before the manifest): the job ends within comm.timeout_s
#    plus slack, with a non-zero exit code and a message naming the rank (and, for the watchdog,
#    the collective);
#  - the restart with checkpoint.resume: auto continues from the last complete checkpoint (never
#    the one being written) and logs the same losses, bit for bit, as an uninterrupted run;
#  - the watchdog sees every blocking MPI call: the test binary's audit (launch/watchdog_audit.cpp)
#    ends a run that makes one outside a watchdog scope; training over every dispatcher and
#    strategy, with checkpoint saves, evaluation and a resume, passes it.
source "$(dirname "$0")/lib.bash"

TIMEOUT=5    # comm.timeout_s of the faulted runs
SLACK=40     # seconds allowed past it (a shared, noisy machine; mpirun's own teardown)
STEPS=40
common=(--set train.steps=$STEPS --set train.log_interval=1 --set eval.interval=0 --set checkpoint.interval=4
        --set comm.timeout_s=$TIMEOUT)

# Each rank through a wrapper that records its pid (exec keeps it).
cat > "$TMP/wrap.sh" <<WRAP
#!/usr/bin/env bash
echo \$\$ > "$TMP/pid.\${OMPI_COMM_WORLD_RANK}"
exec "\$@"
WRAP
chmod +x "$TMP/wrap.sh"

losses() { jsonl_values "$1/metrics.jsonl" loss; }
steps_logged() { wc -l < "$1/metrics.jsonl" 2>/dev/null || echo 0; }

# The uninterrupted references: ep over 2 ranks (auto = shm), and dp over 3 ranks.
ep2=(-np 2 "$MOEMPI" train configs/tiny_ep.yaml)
dp3=(-np 3 "$MOEMPI" train configs/tiny.yaml)
"${MPIRUN[@]}" "${ep2[@]}" "${common[@]}" --set job.run_dir="$TMP/ref_ep2" > "$TMP/ref_ep2.log" 2>&1
"${MPIRUN[@]}" "${dp3[@]}" "${common[@]}" --set job.run_dir="$TMP/ref_dp3" > "$TMP/ref_dp3.log" 2>&1
[ "$(losses "$TMP/ref_ep2" | wc -l)" -eq $STEPS ] && [ "$(losses "$TMP/ref_dp3" | wc -l)" -eq $STEPS ] \
  && pass "uninterrupted references: $STEPS steps each, final losses $(losses "$TMP/ref_ep2" | tail -1) (ep2)," \
          "$(losses "$TMP/ref_dp3" | tail -1) (dp3)" \
  || fail "references: $(tail -3 "$TMP/ref_ep2.log" "$TMP/ref_dp3.log")"

# Starts a run in the background through the wrapper and waits for a complete checkpoint and
# `min_steps` logged steps. Sets $job (the mpirun pid).
start_run() {  # name min_steps mpirun-args...
  local name=$1 min=$2; shift 2
  rm -f "$TMP"/pid.*
  "${MPIRUN[@]}" "${@:1:2}" "$TMP/wrap.sh" "${@:3}" "${common[@]}" --set job.run_dir="$TMP/$name" \
    > "$TMP/$name.log" 2>&1 &
  job=$!
  for _ in $(seq 1200); do
    [ -f "$TMP/$name/ckpt/latest" ] && [ "$(steps_logged "$TMP/$name")" -ge "$min" ] && return 0
    sleep 0.05
  done
  fail "$name: no progress: $(tail -3 "$TMP/$name.log")"
  return 1
}

# Waits for the faulted job; checks the exit code, the time since the fault and the message.
check_end() {  # name t0 message-regex
  local code=0 end
  wait "$job" || code=$?
  end=$(date +%s.%N)
  local took
  took=$(awk -v a="$2" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [ "$code" -eq 0 ]; then fail "$1: exited 0 after the fault"; return 1; fi
  if awk -v t="$took" -v lim=$((TIMEOUT + SLACK)) 'BEGIN { exit !(t > lim) }'; then
    fail "$1: took $took s to end (limit $TIMEOUT + $SLACK s)"; return 1
  fi
  if ! grep -Eq "$3" "$TMP/$1.log"; then fail "$1: no message matching '$3': $(tail -8 "$TMP/$1.log")"; return 1; fi
  pass "$1: ended $took s after the fault, exit $code: $(grep -Em1 "$3" "$TMP/$1.log" | cut -c1-300)"
}

# Restarts the run directory with checkpoint.resume: auto and compares it with the reference.
check_resume() {  # name reference expected-step mpirun-args...
  local name=$1 ref=$2 want=$3; shift 3
  local code=0
  "${MPIRUN[@]}" "$@" "${common[@]}" --set checkpoint.resume=auto --set job.run_dir="$TMP/$name" \
    > "$TMP/$name.resume.log" 2>&1 || code=$?
  if [ "$code" -ne 0 ]; then fail "$name: the restart exited $code: $(tail -5 "$TMP/$name.resume.log")"; return; fi
  if ! grep -q "resuming from $TMP/$name/ckpt/step_$want (step $want;" "$TMP/$name.resume.log"; then
    fail "$name: not resumed from step_$want: $(grep -m2 -E 'resum|checkpoint' "$TMP/$name.resume.log")"; return
  fi
  if [ "$(losses "$TMP/$name")" = "$(losses "$TMP/$ref")" ]; then
    pass "$name: resumed from step $want; all $STEPS losses equal the uninterrupted run's bit for bit (final" \
         "$(losses "$TMP/$name" | tail -1))"
  else
    fail "$name: losses differ from the uninterrupted run: $(diff <(losses "$TMP/$ref") <(losses "$TMP/$name") | head -5)"
  fi
}

# The checkpoint `latest` names (moved only once a checkpoint is complete), as a step number.
last_complete() { local s; s=$(cat "$TMP/$1/ckpt/latest"); echo "${s#step_}"; }

# 1. kill -9 of rank 1 mid-run (ep over 2 ranks): mpirun ends the job and names the rank.
if start_run kill9 6 "${ep2[@]}"; then
  t0=$(date +%s.%N)
  kill -9 "$(cat "$TMP/pid.1")"
  check_end kill9 "$t0" "process rank 1 .*exited on signal 9" && \
    check_resume kill9 ref_ep2 "$(last_complete kill9)" "${ep2[@]}"
fi

# 2. SIGSTOP of rank 2 mid-run (dp over 3 ranks): the other ranks' watchdogs end the job within
# comm.timeout_s, naming the collective and the stopped rank.
if start_run sigstop 6 "${dp3[@]}"; then
  stopped=$(cat "$TMP/pid.2")
  t0=$(date +%s.%N)
  kill -STOP "$stopped"
  check_end sigstop "$t0" \
    "error on rank [01] .*collective '[^']+' on group '[^']+' at step [0-9]+ did not complete within comm.timeout_s = $TIMEOUT s.*not responding: rank 2 \(pid $stopped"
  kill -CONT "$stopped" 2>/dev/null || true
  kill -9 "$stopped" 2>/dev/null || true
  check_resume sigstop ref_dp3 "$(last_complete sigstop)" "${dp3[@]}"
fi

# 3. Rank 0 killed in the middle of the save of step 8 (test hook: every shard written, no
# manifest yet): step_8 is incomplete and must not be picked; the restart takes step_4.
code=0
MOEMPI_TEST_KILL_IN_SAVE=0:8 "${MPIRUN[@]}" -x MOEMPI_TEST_KILL_IN_SAVE -np 2 "$MOEMPI_HOOKS" train configs/tiny_ep.yaml \
  "${common[@]}" --set job.run_dir="$TMP/insave" > "$TMP/insave.log" 2>&1 || code=$?
if [ "$code" -ne 0 ] && grep -q "process rank 0 .*exited on signal 9" "$TMP/insave.log" \
   && [ -f "$TMP/insave/ckpt/step_8/shard_0.bin" ] && [ -f "$TMP/insave/ckpt/step_8/shard_1.bin" ] \
   && [ ! -f "$TMP/insave/ckpt/step_8/manifest.pb" ] && [ "$(cat "$TMP/insave/ckpt/latest")" = step_4 ]; then
  pass "killed in the save of step 8: exit $code, step_8 has both shards and no manifest, latest = step_4"
  check_resume insave ref_ep2 4 "${ep2[@]}"
else
  fail "kill in save: exit $code, step_8: $(ls "$TMP/insave/ckpt/step_8" 2>&1 | tr '\n' ' '), latest" \
       "$(cat "$TMP/insave/ckpt/latest" 2>&1): $(tail -3 "$TMP/insave.log")"
fi

# 4. Progress tables (/dev/shm) of killed jobs do not pile up: rank 0 of the next job removes
# those older than a minute whose processes are all gone, and keeps one whose process lives.
sleep 0 & dead=$!; wait $dead
fake_table() {  # path pid: one 64-byte progress slot recording that pid, two minutes old
  perl -e 'print pack("q q q l l", 0, 0, 0, 0, $ARGV[0]), "\0" x 32' "$2" > "$1"
  touch -d '2 minutes ago' "$1"
}
stale=/dev/shm/moempi-progress-faultstest.dead.$$-$(id -u)
live=/dev/shm/moempi-progress-faultstest.live.$$-$(id -u)
fake_table "$stale" "$dead"
fake_table "$live" $$
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml --set train.steps=1 --set job.run_dir="$TMP/tables" \
  > "$TMP/tables.log" 2>&1 || true
if [ ! -e "$stale" ] && [ -e "$live" ]; then
  pass "a dead job's progress table removed, a live one kept"
else
  fail "progress tables: stale $([ -e "$stale" ] && echo kept || echo removed), live $([ -e "$live" ] && echo kept || echo removed)"
fi
rm -f "$stale" "$live"

# 5. The watchdog audit: every blocking MPI call of a training run is inside a watchdog scope.
# First, that the audit can fail: `bench alltoall` times raw MPI_Alltoallv outside any scope.
code=0
MOEMPI_TEST_WATCHDOG_AUDIT=1 "${MPIRUN[@]}" -x MOEMPI_TEST_WATCHDOG_AUDIT -np 2 "$MOEMPI_HOOKS" bench alltoall \
  -b 1K -e 1K > "$TMP/audit_bench.log" 2>&1 || code=$?
[ "$code" -eq 4 ] && grep -q "watchdog audit: blocking MPI_[A-Za-z_]* called outside a watchdog::Pending scope" \
  "$TMP/audit_bench.log" && pass "the audit catches a raw MPI call: $(grep -m1 'watchdog audit' "$TMP/audit_bench.log")" \
  || fail "the audit missed bench alltoall's raw MPI calls: exit $code: $(tail -3 "$TMP/audit_bench.log")"
audit() {  # name np config [--set ...]
  local name=$1 np=$2 cfg=$3; shift 3
  local code=0
  MOEMPI_TEST_WATCHDOG_AUDIT=1 "${MPIRUN[@]}" -x MOEMPI_TEST_WATCHDOG_AUDIT -np "$np" "$MOEMPI_HOOKS" train \
    "configs/$cfg" --set train.steps=4 --set eval.interval=2 --set eval.batches=1 --set checkpoint.interval=2 \
    --set comm.timeout_s=60 --set job.run_dir="$TMP/audit_$name" "$@" > "$TMP/audit_$name.log" 2>&1 || code=$?
  # and a resume of the same run (loading a checkpoint is collective too)
  [ "$code" -eq 0 ] && { MOEMPI_TEST_WATCHDOG_AUDIT=1 "${MPIRUN[@]}" -x MOEMPI_TEST_WATCHDOG_AUDIT -np "$np" \
    "$MOEMPI_HOOKS" train "configs/$cfg" --set train.steps=6 --set eval.interval=2 --set eval.batches=1 \
    --set checkpoint.interval=2 --set comm.timeout_s=60 --set job.run_dir="$TMP/audit_$name" "$@" \
    >> "$TMP/audit_$name.log" 2>&1 || code=$?; }
  if [ "$code" -eq 0 ] && ! grep -q "watchdog audit" "$TMP/audit_$name.log" && grep -q "resuming from" "$TMP/audit_$name.log"; then
    pass "audit $name ($np ranks): every blocking MPI call inside a watchdog scope (train, save, eval, resume)"
  else
    fail "audit $name: exit $code: $(grep -m1 -E 'watchdog audit|error' "$TMP/audit_$name.log")"
  fi
}
audit dp 2 tiny.yaml
audit ep_shm 2 tiny_ep.yaml
audit ep_flat 2 tiny_ep.yaml --set moe.dispatch.type=flat
audit ep_flat_packed 2 tiny_ep.yaml --set moe.dispatch.type=flat_packed
audit ep_flat_typed 2 tiny_ep.yaml --set moe.dispatch.type=flat_typed
audit ep_flat_bf16 2 tiny_ep.yaml --set moe.dispatch.type=flat --set moe.dispatch.wire_dtype=bf16
audit ep_lsh 2 tiny_ep.yaml --set moe.dispatch.compression.type=lsh
audit hier_2dh 4 tiny_ep.yaml --set moe.dispatch.type=hierarchical --set parallel.ranks_per_node=2
audit hier_leader_dedup 4 tiny_ep.yaml --set moe.dispatch.type=hierarchical --set parallel.ranks_per_node=2 \
  --set moe.dispatch.algorithm=leader --set moe.dispatch.dedup=true
audit ep2_dp2 4 tiny.yaml --set parallel.strategy=ep --set parallel.ep=2
audit fssdp 3 tiny.yaml --set parallel.strategy=fssdp --set parallel.ep=3 --set moe.num_experts=6
audit fssdp_remat_reshard 3 tiny.yaml --set parallel.strategy=fssdp --set parallel.ep=3 --set moe.num_experts=6 \
  --set parallel.fssdp.rematerialize=true --set parallel.fssdp.reshard_interval=2
finish
