#!/usr/bin/env bash
# Two emulated nodes (network namespaces joined by veth through a bridge; launch/netns_cluster.sh)
# with two ranks each: MPI_Comm_split_type sees two hosts, `auto` picks flat for an ep group that
# spans them and shm for one within a node, shm refuses to span nodes, and expert-parallel training
# over TCP between the nodes logs the same losses as one rank (tolerance as in parallel.sh); the
# hierarchical dispatcher (2dh with node-level dedup) over the two real nodes logs the same losses
# as the same run on 2x2 virtual nodes, and sends fewer inter-node bytes than flat; at 2 nodes x 1
# rank `auto` measures the link and picks flat on the bare veth, hierarchical once it is shaped to
# 200 Mbit/s (tc tbf). Needs root,
# `ip netns` and `tc`; elsewhere it says so and passes nothing (ctest label netns). Cleans up its
# own namespaces only.
source "$(dirname "$0")/lib.bash"

export MOEMPI_NETNS_PREFIX=moempitest MOEMPI_NETNS_SUBNET=10.78.0
CLUSTER="$SRC/launch/netns_cluster.sh"
if [ "$(id -u)" -ne 0 ] || ! command -v ip > /dev/null || ! command -v tc > /dev/null ||
   ! "$CLUSTER" up 2 > "$TMP/up.log" 2>&1; then
  echo "skipped: needs root, ip and tc (network namespaces) ($(tail -1 "$TMP/up.log" 2>/dev/null))"
  "$CLUSTER" down > /dev/null 2>&1 || true
  exit 0
fi
trap '"$CLUSTER" down > /dev/null 2>&1; rm -rf "$TMP"' EXIT

run2x2() {  # log, then moempi args
  local log=$1; shift
  timeout 300 "$CLUSTER" run 2 -- -np 4 -x OPENBLAS_NUM_THREADS=1 "$MOEMPI" "$@" > "$log" 2>&1
}
common=(--set train.steps=12 --set train.log_interval=1 --set eval.interval=0 --set train.micro_batch=2)
"$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" --set parallel.ep=1 --set train.grad_accum=4 \
  --set job.run_dir="$TMP/one" > "$TMP/one.log" 2>&1
run2x2 "$TMP/ep4.log" train configs/tiny_ep.yaml "${common[@]}" --set job.run_dir="$TMP/ep4" \
  && pass "ep=4 over 2 nodes trains" || fail "ep=4 over 2 nodes: $(tail -5 "$TMP/ep4.log")"
run2x2 "$TMP/ep2.log" train configs/tiny_ep.yaml "${common[@]}" --set parallel.ep=2 --set job.run_dir="$TMP/ep2" \
  && pass "ep=2 per node, dp across nodes trains" || fail "ep=2: $(tail -5 "$TMP/ep2.log")"

grep -q "2 real node(s)" "$TMP/ep4.log" && pass "rank map: 2 real nodes" || fail "rank map: $(grep -m1 'node(s)' "$TMP/ep4.log")"
grep -q "auto: chose flat" "$TMP/ep4.log" && pass "auto chose flat across nodes" || fail "ep4: $(grep -m1 'auto:' "$TMP/ep4.log")"
grep -q "auto: chose shm" "$TMP/ep2.log" && pass "auto chose shm within a node" || fail "ep2: $(grep -m1 'auto:' "$TMP/ep2.log")"
for run in ep4 ep2; do
  worst=$(worst_loss_diff "$TMP/one/metrics.jsonl" "$TMP/$run/metrics.jsonl" 12)
  if below "$worst" 1e-5; then
    pass "$run over 2 nodes: 12 losses, worst relative difference to one rank $worst"
  else
    fail "$run over 2 nodes: losses differ from one rank ($worst)"
  fi
done
inter=$(jsonl_values "$TMP/ep4/metrics.jsonl" a2a_bytes_inter | tail -1)
[ "${inter:-0}" -gt 0 ] && pass "ep=4: $inter dispatch bytes crossed nodes in the last step" || fail "no inter-node bytes"
code=0
run2x2 "$TMP/shm.log" train configs/tiny_ep.yaml "${common[@]}" --set moe.dispatch.type=shm --set job.run_dir="$TMP/shm" || code=$?
grep -q "moe.dispatch.type shm needs the ep group within one node" "$TMP/shm.log" && [ "$code" -ne 0 ] \
  && pass "shm across real nodes: refused ($code)" || fail "shm across nodes: code $code, $(tail -3 "$TMP/shm.log")"
# hierarchical over the two real nodes = the same run on 2x2 virtual nodes (same groups, same sums).
hier=(--set moe.dispatch.type=hierarchical --set moe.dispatch.dedup=true)
run2x2 "$TMP/hier.log" train configs/tiny_ep.yaml "${common[@]}" "${hier[@]}" --set job.run_dir="$TMP/hier" \
  && pass "hierarchical 2dh+dedup over 2 nodes trains" || fail "hierarchical: $(tail -5 "$TMP/hier.log")"
"${MPIRUN[@]}" -np 4 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" "${hier[@]}" --set parallel.ranks_per_node=2 \
  --set job.run_dir="$TMP/hier_virtual" > "$TMP/hier_virtual.log" 2>&1 \
  && pass "hierarchical on 2x2 virtual nodes trains" || fail "virtual: $(tail -5 "$TMP/hier_virtual.log")"
worst=$(worst_loss_diff "$TMP/hier_virtual/metrics.jsonl" "$TMP/hier/metrics.jsonl" 12)
if below "$worst" 1e-6; then
  pass "hierarchical: real 2x2 nodes = virtual 2x2 nodes over 12 losses (worst relative difference $worst)"
else
  fail "hierarchical: real and virtual nodes differ ($worst)"
fi
hinter=$(jsonl_values "$TMP/hier/metrics.jsonl" a2a_bytes_inter | tail -1)
[ "${hinter:-0}" -gt 0 ] && [ "$hinter" -lt "$inter" ] \
  && pass "hierarchical+dedup: $hinter inter-node bytes in the last step, flat $inter" \
  || fail "hierarchical+dedup inter-node bytes $hinter not below flat's $inter"
# auto at one rank per node: it measures the inter-node link at start-up.
auto1() {  # name: 2 nodes x 1 rank, auto, 2 steps
  timeout 300 "$CLUSTER" run 1 -- -np 2 -x OPENBLAS_NUM_THREADS=1 "$MOEMPI" train configs/tiny_ep.yaml \
    --set train.steps=2 --set eval.interval=0 --set job.run_dir="$TMP/$1" > "$TMP/$1.log" 2>&1 || fail "$1: $(tail -3 "$TMP/$1.log")"
  grep -m1 'auto: chose' "$TMP/$1.log" || true
}
chose=$(auto1 auto_bare)
[[ "$chose" == *"chose flat ("*"Gbit/s (measured), hierarchical only at most 0.45"* ]] \
  && pass "2x1, bare veth: auto measured the link and chose flat" || fail "auto on bare veth: $chose"
"$CLUSTER" down > /dev/null 2>&1
if "$CLUSTER" up 2 200mbit > "$TMP/up_shaped.log" 2>&1; then
  chose=$(auto1 auto_shaped)
  [[ "$chose" == *"chose hierarchical ("*"Gbit/s (measured) (at most 0.45)"* ]] \
    && pass "2x1, 200 Mbit/s: auto measured the link and chose hierarchical" || fail "auto at 200 Mbit/s: $chose"
else
  fail "shaped cluster: $(tail -2 "$TMP/up_shaped.log")"
fi
finish
