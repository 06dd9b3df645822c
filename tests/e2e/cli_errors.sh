#!/usr/bin/env bash
# Bad input through the binary: one clear message, exit code 2, naming the path, value and fix.
source "$(dirname "$0")/lib.bash"

cp configs/tiny.yaml "$TMP/unknown.yaml"
sed -i 's/^  top_k: 2 /  topk: 2 /' "$TMP/unknown.yaml"
expect_error "unknown key" "topk" "top_k" "unknown.yaml" -- "$MOEMPI" validate "$TMP/unknown.yaml"

cp configs/tiny.yaml "$TMP/type.yaml"
sed -i 's/^  d_model: 64/  d_model: sixty-four/' "$TMP/type.yaml"
expect_error "wrong type" "model.d_model" "sixty-four" -- "$MOEMPI" validate "$TMP/type.yaml"

expect_error "impossible combination" "model.d_model" "model.n_heads" -- \
  "$MOEMPI" validate configs/tiny.yaml --set model.n_heads=5
expect_error "bad enum" "moe.score" "softmax" "sigmoid" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.score=relu
expect_error "bad hierarchical algorithm" "moe.dispatch.algorithm" "ring" "2dh, leader" -- \
  "$MOEMPI" validate configs/tiny_ep.yaml --set moe.dispatch.type=hierarchical --set moe.dispatch.algorithm=ring
expect_error "dedup on a flat dispatcher" "moe.dispatch.dedup" "hierarchical" -- \
  "$MOEMPI" validate configs/tiny_ep.yaml --set moe.dispatch.type=flat --set moe.dispatch.dedup=true
expect_error "experts not divisible by ep" "moe.num_experts (4)" "parallel.ep (3)" -- \
  "$MOEMPI" validate configs/tiny_ep.yaml --set parallel.ep=3 --np 3
expect_error "world not divisible by ep (under mpirun)" "parallel.ep" -- \
  "${MPIRUN[@]}" -np 3 "$MOEMPI" train configs/tiny_ep.yaml --set job.run_dir="$TMP/x"
expect_error "no MoE layer" "moe.every_n_layers (3)" "model.n_layers (2)" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.every_n_layers=3
expect_error "top-1 with renormalisation" "moe.normalize_topk" "no gradient" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.top_k=1
expect_error "unknown override path" "optim.learning_rate" -- \
  "$MOEMPI" validate configs/tiny.yaml --set optim.learning_rate=1
expect_error "a key of another dispatcher type" "moe.dispatch.headroom" "belongs to moe.dispatch.type shm" \
  "moe.dispatch.type is flat" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.dispatch.type=flat --set moe.dispatch.headroom=2
# Bad balancing pass specs: one message naming moe.balancing.<i>.<key>, the value and what is allowed.
expect_error "unknown balancing pass" "moe.balancing.0.type" "'bias'" "global_batch_aux_loss" "loss_free_bias" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.balancing.0.type=bias
expect_error "negative bias rate" "moe.balancing.1.rate" "-0.001" ">= 0" -- \
  "$MOEMPI" validate configs/tiny.yaml --set "moe.balancing.1={type: loss_free_bias, rate: -0.001}"
expect_error "unknown key inside a pass" "moe.balancing.0.alpha" "unknown key 'alpha'" "coeff" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.balancing.0.alpha=0.1
expect_error "bias update rule" "moe.balancing.1.update" "'foo'" "sign, proportional" -- \
  "$MOEMPI" validate configs/tiny.yaml --set "moe.balancing.1={type: loss_free_bias, update: foo}"
expect_error "a key of another pass" "moe.balancing.0.rate" "belongs to moe.balancing.0.type loss_free_bias" \
  "moe.balancing.0.type is aux_loss" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.balancing.0.rate=0.01
expect_error "shm across (virtual) nodes" "moe.dispatch.type shm" "spans 2 nodes" -- \
  timeout 120 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml --set moe.dispatch.type=shm \
  --set parallel.ranks_per_node=1 --set job.run_dir="$TMP/shm_nodes"

# A file readable on some ranks only (a node without it, another working directory) must end
# every rank cleanly, naming the rank, instead of hanging the others in the next collective.
for r in 0 1; do mkdir -p "$TMP/rank$r"; done
cp configs/tiny.yaml "$TMP/rank0/job.yaml"
printf 'the quick brown fox jumps over the lazy dog. %.0s' $(seq 200) > "$TMP/rank0/corpus.txt"
cp configs/tiny.yaml "$TMP/rank1/job.yaml"
cat > "$TMP/per_rank_dir.sh" <<WRAP
#!/usr/bin/env bash
cd "$TMP/rank\${OMPI_COMM_WORLD_RANK}" && exec "\$@"
WRAP
chmod +x "$TMP/per_rank_dir.sh"
expect_error "data file on rank 0 only" "rank 1: " "corpus.txt" -- timeout 120 "${MPIRUN[@]}" -np 2 \
  "$TMP/per_rank_dir.sh" "$MOEMPI" train job.yaml --set data.type=text --set data.path=corpus.txt
rm "$TMP/rank1/job.yaml"
expect_error "job file on rank 0 only" "rank 1: " "job.yaml" -- timeout 120 "${MPIRUN[@]}" -np 2 \
  "$TMP/per_rank_dir.sh" "$MOEMPI" train job.yaml

out=$("$MOEMPI" validate configs/tiny.yaml 2>&1) && pass "tiny.yaml validates: $out" || fail "tiny.yaml: $out"
out=$("$MOEMPI" validate configs/small.yaml 2>&1) && pass "small.yaml validates" || fail "small.yaml: $out"

# Token shards: a good one trains; corrupt ones are refused with the file and the offset.
"$MOEMPI" data encode configs/tiny.yaml "$TMP/good.bin" > /dev/null
"$MOEMPI" train configs/tiny.yaml --set data.type=tokens --set data.path="$TMP/good.bin" \
  --set train.steps=3 --set eval.interval=0 --set job.run_dir="$TMP/tok" > "$TMP/tok.log" 2>&1 \
  && pass "trains on a token shard" || fail "token shard run: $(tail -3 "$TMP/tok.log")"
head -c 1000 "$TMP/good.bin" > "$TMP/truncated.bin"
expect_error "truncated shard" "truncated.bin" -- \
  "$MOEMPI" train configs/tiny.yaml --set data.type=tokens --set data.path="$TMP/truncated.bin" --set job.run_dir="$TMP/t"
cp "$TMP/good.bin" "$TMP/badtoken.bin"
printf '\x2c\x01' | dd of="$TMP/badtoken.bin" bs=1 seek=224 conv=notrunc 2>/dev/null  # token 300 at offset 224
expect_error "out-of-vocab token" "badtoken.bin" "offset 224" "300" -- \
  "$MOEMPI" train configs/tiny.yaml --set data.type=tokens --set data.path="$TMP/badtoken.bin" --set job.run_dir="$TMP/t"

# Issue 12, defect 6: eval.batches × train.grad_accum overflowed int32 (val -0.0000, exit 0).
expect_error "eval micro-batches beyond int32" "eval.batches (1073741824) × train.grad_accum (2)" -- \
  "$MOEMPI" validate configs/tiny.yaml --set eval.batches=1073741824 --set train.grad_accum=2 --set eval.interval=1
# Defect 10: comm.timeout_s 0 = off (as documented); negative refused; sub-second printed as given.
out=$("$MOEMPI" validate configs/tiny.yaml --set comm.timeout_s=0 2>&1) && pass "comm.timeout_s 0 (off) validates" \
  || fail "comm.timeout_s 0: $out"
out=$("$MOEMPI" train configs/tiny.yaml --set comm.timeout_s=0 --set train.steps=2 --set job.run_dir="$TMP/nowd" 2>&1) \
  && pass "trains with the watchdog off" || fail "comm.timeout_s 0 run: $out"
expect_error "negative comm.timeout_s" "comm.timeout_s" ">= 0" -- "$MOEMPI" validate configs/tiny.yaml --set comm.timeout_s=-1
# Defect 14: a second YAML document is refused, not silently ignored.
{ cat configs/tiny.yaml; printf -- '---\nmodel:\n  d_modle: 3\n'; } > "$TMP/two_docs.yaml"
expect_error "second YAML document after ---" "two_docs.yaml" "a second YAML document" -- "$MOEMPI" validate "$TMP/two_docs.yaml"
{ cat configs/tiny.yaml; printf -- '...\nfoo: 1\n'; } > "$TMP/two_docs_end.yaml"
expect_error "second YAML document after ..." "a second YAML document" -- "$MOEMPI" validate "$TMP/two_docs_end.yaml"
# Defect 15: CLI details.
expect_error "unknown subcommand named" "unknown subcommand 'trian'" "did you mean 'train'" -- "$MOEMPI" trian configs/tiny.yaml
expect_error "unknown bench subcommand named" "unknown subcommand 'alltoal' of moempi bench" "did you mean 'alltoall'" -- \
  "$MOEMPI" bench alltoal
expect_error "validate --np -3" "--np (-3)" -- "$MOEMPI" validate configs/tiny.yaml --np -3
expect_error "bench dispatch -T 0 -D 0 names -D" "-D (0) must be >= 1" -- "$MOEMPI" bench dispatch -T 0 -D 0
long=$(head -c 100000 /dev/zero | tr '\0' a)
out=$("$MOEMPI" validate configs/tiny.yaml --set "x=$long" 2>&1 || true)
[ "${#out}" -lt 2000 ] && grep -q "characters cut" <<<"$out" && pass "a 100 KB --set is cut in the message (${#out} bytes)" \
  || fail "100 KB argument echoed: ${#out} bytes"
out=$("$MOEMPI" train --bogus "$long" 2>&1 || true)
[ "${#out}" -lt 2000 ] && pass "a 100 KB unexpected argument is cut (${#out} bytes)" || fail "CLI11 echo: ${#out} bytes"
# Defect 16: an unknown MOEMPI_BLAS_CORETYPE is said to be unknown, not "switched".
out=$(MOEMPI_BLAS_CORETYPE=bogus "$MOEMPI" train configs/tiny.yaml --set train.steps=1 --set job.run_dir="$TMP/bogus" 2>&1)
grep -q "MOEMPI_BLAS_CORETYPE=bogus is not an OpenBLAS core type" <<<"$out" && ! grep -q "switched from" <<<"$out" \
  && pass "MOEMPI_BLAS_CORETYPE=bogus: $(grep -o 'OpenBLAS core.*' <<<"$out" | head -1)" || fail "bogus core type: $out"
finish
