#!/usr/bin/env bash
# moe.dispatch.type auto across nodes, through the binary: 2 ranks as 2 virtual nodes (one ep rank
# per node, top_k 2). With the link model at 0.2 Gbit/s auto picks hierarchical (2dh, dedup) and
# says why; at 5 Gbit/s, and with the link measured at start-up (shared memory, fast), it picks
# flat; the hierarchical run logs flat's losses (dedup sums a token's k outputs on its destination
# node first: fp32 order, tolerance 1e-5 relative); with 2 ranks per node it never probes.
source "$(dirname "$0")/lib.bash"

common=(--set train.steps=12 --set train.log_interval=1 --set eval.interval=0 --set train.micro_batch=4
        --set parallel.ranks_per_node=1)
run() {  # name, then moempi train arguments
  local name=$1; shift
  "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" --set job.run_dir="$TMP/$name" "$@" \
    > "$TMP/$name.log" 2>&1 || fail "$name: exit $?: $(tail -3 "$TMP/$name.log")"
}
run slow --set comm.link_model.inter_node_gbps=0.2
run fast --set comm.link_model.inter_node_gbps=5
run measured
run flat --set moe.dispatch.type=flat --set comm.link_model.inter_node_gbps=0.2

line() { grep -m1 'moe.dispatch.type auto: chose' "$TMP/$1.log" || true; }
[[ "$(line slow)" == *"chose hierarchical ("*"0.2 Gbit/s (comm.link_model)"*"dedup"* ]] \
  && pass "0.2 Gbit/s, one rank per node: auto chose hierarchical and says why" || fail "slow: $(line slow)"
[[ "$(line fast)" == *"chose flat ("*"5 Gbit/s (comm.link_model), hierarchical only at most 0.45"* ]] \
  && pass "5 Gbit/s: auto chose flat and says why" || fail "fast: $(line fast)"
[[ "$(line measured)" == *"chose flat ("*"Gbit/s (measured)"* ]] \
  && pass "measured link (shared memory): auto chose flat" || fail "measured: $(line measured)"
worst=$(worst_loss_diff "$TMP/flat/metrics.jsonl" "$TMP/slow/metrics.jsonl" 12)
if below "$worst" 1e-5; then
  pass "auto's hierarchical logs flat's 12 losses (worst relative difference $worst)"
else
  fail "auto's hierarchical against flat: $worst"
fi
hier=$(jsonl_values "$TMP/slow/metrics.jsonl" a2a_bytes_inter | tail -1)
flat=$(jsonl_values "$TMP/flat/metrics.jsonl" a2a_bytes_inter | tail -1)
[ "${hier:-0}" -gt 0 ] && [ "$hier" -lt "$flat" ] && pass "auto's hierarchical: $hier inter-node bytes in the last step, flat $flat" \
  || fail "inter-node bytes: auto $hier, flat $flat"
# Two ranks per node (4 ranks): flat, without a probe, whatever the link.
"${MPIRUN[@]}" -np 4 "$MOEMPI" train configs/tiny_ep.yaml "${common[@]}" --set parallel.ranks_per_node=2 \
  --set train.micro_batch=2 --set comm.link_model.inter_node_gbps=0.2 --set train.steps=2 \
  --set job.run_dir="$TMP/pairs" > "$TMP/pairs.log" 2>&1 || fail "pairs: $(tail -3 "$TMP/pairs.log")"
[[ "$(line pairs)" == *"chose flat ("*"hierarchical only with one ep rank per node"* ]] \
  && pass "2 ranks per node: auto chose flat" || fail "pairs: $(line pairs)"
finish
