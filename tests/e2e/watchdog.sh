#!/usr/bin/env bash
# A rank that stops responding must not hang the job: the other ranks' watchdogs name the pending
# collective, its group, the step and the ranks that had not reached it (or stopped responding)
# after comm.timeout_s, and the job ends with a non-zero exit code well before the outer mpirun
# --timeout. Covers a rank stuck mid-run (MOEMPI_TEST_HANG="rank:step", a hook compiled into the
# test binary only), a rank SIGSTOPped mid-run, and one stopped before MPI_Init.
source "$(dirname "$0")/lib.bash"

run_hung() {  # name config expected-op expected-group [--set ...]
  local start end code=0
  start=$(date +%s)
  MOEMPI_TEST_HANG=1:3 "${MPIRUN[@]}" -x MOEMPI_TEST_HANG -np 2 "$MOEMPI_HOOKS" train "configs/$2" \
    --set comm.timeout_s=3 --set job.run_dir="$TMP/$1" "${@:5}" > "$TMP/$1.log" 2>&1 || code=$?
  end=$(date +%s)
  if [ "$code" -eq 0 ]; then fail "$1: job with a stuck rank exited 0"; return; fi
  if [ $((end - start)) -gt 60 ]; then fail "$1: took $((end - start)) s to end"; return; fi
  if grep -q "collective '$3' on group '$4' at step 3 did not complete within comm.timeout_s = 3 s" "$TMP/$1.log" \
     && grep -q "error on rank 0 .*had not reached it: rank 1 (at step 3, computing)" "$TMP/$1.log"; then
    pass "$1: ended in $((end - start)) s: $(grep -m1 "did not complete" "$TMP/$1.log")"
  else
    fail "$1: no watchdog report naming $3 on $4 and rank 1: $(tail -5 "$TMP/$1.log")"
  fi
}
run_hung dp tiny.yaml MPI_Allreduce data   # the step's RoutingStats, the first collective after the micro-batches
run_hung ep_shm tiny_ep.yaml MPI_Allgather ep                                 # auto = shm on one node
run_hung ep_flat tiny_ep.yaml MPI_Alltoall ep --set moe.dispatch.type=flat

# Issue 12, defect 16: the production binary has no hang hook.
code=0
MOEMPI_TEST_HANG=1:2 timeout 120 "${MPIRUN[@]}" -x MOEMPI_TEST_HANG -np 2 "$MOEMPI" train configs/tiny_ep.yaml \
  --set train.steps=4 --set comm.timeout_s=5 --set job.run_dir="$TMP/nohook" > "$TMP/nohook.log" 2>&1 || code=$?
[ "$code" -eq 0 ] && pass "the production binary ignores MOEMPI_TEST_HANG" || fail "MOEMPI_TEST_HANG in production: exit $code: $(tail -3 "$TMP/nohook.log")"

# Each rank through a wrapper that records its pid (exec keeps it) and, for rank $STOP_AT_START,
# stops itself before the binary starts (before MPI_Init).
cat > "$TMP/wrap.sh" <<WRAP
#!/usr/bin/env bash
echo \$\$ > "$TMP/pid.\${OMPI_COMM_WORLD_RANK}"
[ "\${OMPI_COMM_WORLD_RANK}" = "\${STOP_AT_START:-none}" ] && kill -STOP \$\$
exec "\$@"
WRAP
chmod +x "$TMP/wrap.sh"

# Defect 8: a rank stopped right after launch; rank 0 waits in MPI_Init until comm.timeout_s.
start=$(date +%s); code=0
STOP_AT_START=1 timeout 120 "${MPIRUN[@]}" -x STOP_AT_START -np 2 "$TMP/wrap.sh" "$MOEMPI" train configs/tiny_ep.yaml \
  --set comm.timeout_s=5 --set job.run_dir="$TMP/init" > "$TMP/init.log" 2>&1 || code=$?
end=$(date +%s)
if [ "$code" -ne 0 ] && [ "$code" -ne 124 ] && [ $((end - start)) -lt 60 ] \
   && grep -q "error on rank 0 .*collective 'MPI_Init' on group 'world' at step 0 did not complete within comm.timeout_s = 5 s.*no progress record (not started, or on another machine): rank 1" "$TMP/init.log"; then
  pass "rank stopped before MPI_Init: ended in $((end - start)) s: $(grep -m1 'did not complete' "$TMP/init.log")"
else
  fail "rank stopped before MPI_Init: exit $code after $((end - start)) s: $(tail -5 "$TMP/init.log")"
fi

# Defect 9: SIGSTOP one rank mid-run: rank 0 names it as not responding.
rm -f "$TMP"/pid.*
timeout 120 "${MPIRUN[@]}" -np 2 "$TMP/wrap.sh" "$MOEMPI" train configs/tiny_ep.yaml --set train.steps=1000000 \
  --set train.log_interval=1 --set eval.interval=0 --set comm.timeout_s=5 --set job.run_dir="$TMP/stop" > "$TMP/stop.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ "$(wc -l < "$TMP/stop/metrics.jsonl" 2>/dev/null || echo 0)" -ge 3 ] && break; sleep 0.1; done
stopped=$(cat "$TMP/pid.1")
kill -STOP "$stopped"
start=$(date +%s); code=0
wait "$job" || code=$?
end=$(date +%s)
kill -CONT "$stopped" 2>/dev/null || true
if [ "$code" -ne 0 ] && [ "$code" -ne 124 ] \
   && grep -q "error on rank 0 .*did not complete within comm.timeout_s = 5 s.*not responding: rank 1 (pid $stopped, silent for" "$TMP/stop.log" \
   && ! grep -q "error on rank 1" "$TMP/stop.log"; then
  pass "rank SIGSTOPped mid-run: ended in $((end - start)) s: $(grep -m1 'did not complete' "$TMP/stop.log")"
else
  fail "rank SIGSTOPped mid-run: exit $code after $((end - start)) s: $(tail -5 "$TMP/stop.log")"
fi
finish
