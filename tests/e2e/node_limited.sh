#!/usr/bin/env bash
# Node-limited routing (moe.max_nodes_per_token) through the binary: 2 ranks as 2 virtual nodes,
# M = 1, log the losses of one rank routing as on 2 nodes (moe.routing_nodes 2) with the same global
# batch; the resolved node count is written to job.yaml; one node alone is one error naming the key.
source "$(dirname "$0")/lib.bash"

common=(--set train.steps=20 --set train.log_interval=1 --set eval.interval=0 --set train.micro_batch=4
        --set moe.max_nodes_per_token=1)
"${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" --set parallel.ranks_per_node=1 \
  --set job.run_dir="$TMP/two" > "$TMP/two.log" 2>&1
"$MOEMPI" train configs/tiny.yaml "${common[@]}" --set moe.routing_nodes=2 --set train.grad_accum=2 \
  --set job.run_dir="$TMP/one" > "$TMP/one.log" 2>&1
"$MOEMPI" train configs/tiny.yaml --set train.steps=20 --set train.log_interval=1 --set eval.interval=0 \
  --set train.micro_batch=4 --set train.grad_accum=2 --set job.run_dir="$TMP/free" > "$TMP/free.log" 2>&1

worst=$(worst_loss_diff "$TMP/one/metrics.jsonl" "$TMP/two/metrics.jsonl" 20)
if below "$worst" 1e-5; then
  pass "M=1 over 2 virtual nodes: 20 losses match one rank with routing_nodes 2 (worst $worst)"
else
  fail "M=1 over 2 virtual nodes against one rank: worst relative difference $worst"
fi
[ "$(jsonl_values "$TMP/one/metrics.jsonl" loss | head -1)" != "$(jsonl_values "$TMP/free/metrics.jsonl" loss | head -1)" ] &&
  pass "the limit changes the routing (first loss differs from unlimited)" || fail "M=1 gave the unlimited loss"
grep -q 'routing_nodes: 2' "$TMP/two/job.yaml" && pass "job.yaml records the resolved moe.routing_nodes 2" ||
  fail "job.yaml lacks routing_nodes: 2: $(grep routing "$TMP/two/job.yaml")"

expect_error "one node" "moe.max_nodes_per_token (1)" "1 node(s)" -- \
  "$MOEMPI" train configs/tiny.yaml --set train.steps=1 --set moe.max_nodes_per_token=1 --set job.run_dir="$TMP/x"
expect_error "M >= nodes" "moe.max_nodes_per_token" "use 1..1" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.max_nodes_per_token=2 --set moe.routing_nodes=2
expect_error "nodes do not divide experts" "not divisible by moe.routing_nodes (3)" -- \
  "$MOEMPI" validate configs/tiny.yaml --set moe.max_nodes_per_token=1 --set moe.routing_nodes=3
finish
