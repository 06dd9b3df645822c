#!/usr/bin/env bash
# Resource limits (issue 12, defects 4 and 5): validate and the start-up print the memory a rank
# needs; a job that cannot fit is refused before allocating (exit 2 naming the keys), never an
# uncaught std::bad_alloc; a model with very many experts starts (parameter registration is not
# quadratic in the number of tensors).
source "$(dirname "$0")/lib.bash"

out=$("$MOEMPI" validate configs/tiny.yaml 2>&1) && grep -q "^memory: about .* per rank (params .*, grads .*, optimizer .*, activations .*, dispatch .*)" <<<"$out" \
  && pass "validate prints the memory estimate: $(tail -1 <<<"$out")" || fail "validate memory line: $out"
out=$("$MOEMPI" train configs/tiny.yaml --set train.steps=1 --set job.run_dir="$TMP/m" 2>&1) \
  && grep -q "memory: about .* per rank .* ranks on this machine, .* of memory" <<<"$out" \
  && pass "the start-up prints the memory estimate" || fail "start-up memory line: $out"

expect_error "validate: micro_batch 2^31-1" "train.micro_batch × model.seq_len" "exceed 2^31 - 1" -- \
  "$MOEMPI" validate configs/tiny.yaml --set train.micro_batch=2147483647
expect_error "train: micro_batch 2^31-1" "train.micro_batch" -- \
  "$MOEMPI" train configs/tiny.yaml --set train.micro_batch=2147483647 --set job.run_dir="$TMP/b"
expect_error "validate: 10^8 layers" "more than this machine's" "model.n_layers" -- \
  "$MOEMPI" validate configs/tiny.yaml --set model.n_layers=100000000
expect_error "train: 10^8 layers" "more than this machine's" "model.n_layers" -- \
  "$MOEMPI" train configs/tiny.yaml --set model.n_layers=100000000 --set job.run_dir="$TMP/l"
expect_error "train under mpirun: activations too large" "for the 2 ranks on this machine" "train.micro_batch" -- \
  timeout 120 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml --set train.micro_batch=20000 --set job.run_dir="$TMP/a"
expect_error "bench alltoall -b 1G -e 8G" "-e 8G" "more than its" "lower -e" -- \
  timeout 120 "${MPIRUN[@]}" -np 2 "$MOEMPI" bench alltoall -b 1G -e 8G
# Defect 5: 200,000 experts in one layer (400,000 expert tensors) reach the first step; before the
# fix, registering them was quadratic (E = 50,000 took 191 s to start).
code=0
timeout 300 "$MOEMPI" train configs/tiny.yaml --set moe.num_experts=200000 --set model.n_layers=1 --set moe.d_ff_expert=1 \
  --set model.d_model=4 --set model.n_heads=1 --set train.steps=1 --set train.micro_batch=1 --set model.seq_len=8 \
  --set eval.interval=0 --set job.run_dir="$TMP/experts" > "$TMP/experts.log" 2>&1 || code=$?
[ "$code" -eq 0 ] && grep -q "done: 1 steps" "$TMP/experts.log" && pass "200,000 experts start and train a step" \
  || fail "200,000 experts: exit $code: $(tail -3 "$TMP/experts.log")"
finish
