#!/usr/bin/env bash
# A rank that stops responding (MOEMPI_TEST_HANG="rank:step") must not hang the job: the other
# ranks' watchdogs name the pending collective, its group and the step after comm.timeout_s, and
# the job ends with a non-zero exit code well before the outer mpirun --timeout.
source "$(dirname "$0")/lib.bash"

run_hung() {  # name config expected-op expected-group [--set ...]
  local start end code=0
  start=$(date +%s)
  MOEMPI_TEST_HANG=1:3 "${MPIRUN[@]}" -x MOEMPI_TEST_HANG -np 2 "$MOEMPI" train "configs/$2" \
    --set comm.timeout_s=3 --set job.run_dir="$TMP/$1" "${@:5}" > "$TMP/$1.log" 2>&1 || code=$?
  end=$(date +%s)
  if [ "$code" -eq 0 ]; then fail "$1: job with a stuck rank exited 0"; return; fi
  if [ $((end - start)) -gt 60 ]; then fail "$1: took $((end - start)) s to end"; return; fi
  if grep -q "collective '$3' on group '$4' at step 3 did not complete within comm.timeout_s = 3 s" "$TMP/$1.log"; then
    pass "$1: ended in $((end - start)) s: $(grep -m1 "did not complete" "$TMP/$1.log")"
  else
    fail "$1: no watchdog report naming $3 on $4: $(tail -5 "$TMP/$1.log")"
  fi
}
run_hung dp tiny.yaml MPI_Allreduce data   # the step's RoutingStats, the first collective after the micro-batches
run_hung ep_shm tiny_ep.yaml MPI_Allgather ep                                 # auto = shm on one node
run_hung ep_flat tiny_ep.yaml MPI_Alltoall ep --set moe.dispatch.type=flat
finish
