#!/usr/bin/env bash
# Every rank must run the same resolved job spec (issue 12, defect 1): an MPMD launch with a
# different value on one rank is one error naming the first differing key and the ranks, exit 2,
# instead of silently training a wrong model (different lr, seed) or dying in MPI_ERR_TRUNCATE.
source "$(dirname "$0")/lib.bash"

mpmd() {  # name, then --set arguments of rank 1 only
  local name=$1; shift
  timeout 120 "${MPIRUN[@]}" -np 1 "$MOEMPI" train configs/tiny_ep.yaml --set train.steps=3 \
    --set job.run_dir="$TMP/$name" : -np 1 "$MOEMPI" train configs/tiny_ep.yaml --set train.steps=3 \
    --set job.run_dir="$TMP/$name" "$@"
}
expect_error "different optim.lr on rank 1" "job spec differs between ranks" "rank 1 differs from rank 0" \
  "optim.lr: 0.003 on rank 0, 0.3 on rank 1" -- mpmd lr --set optim.lr=0.3
expect_error "different job.seed on rank 1" "job.seed: 1234 on rank 0, 7 on rank 1" -- mpmd seed --set job.seed=7
expect_error "different model.d_model on rank 1" "model.d_model: 64 on rank 0, 128 on rank 1" -- \
  mpmd d_model --set model.d_model=128
expect_error "different run dir, the other keys are listed too" "job.run_dir" "also differ: optim.lr" -- \
  mpmd run_dir --set job.run_dir="$TMP/other" --set optim.lr=0.3
out=$(mpmd same 2>&1) && pass "the same spec on both ranks trains" || fail "same spec: $out"
finish
