#!/usr/bin/env bash
# An emulated cluster on one machine (root only; PLATFORM.md "Several nodes on one machine"):
# N network namespaces "moempi-nI" (hostname nodeI, address 10.77.0.(I+1) on eth0) joined by veth
# pairs through a bridge in namespace "moempi-br" (prefix and subnet from MOEMPI_NETNS_PREFIX and
# MOEMPI_NETNS_SUBNET), optionally shaped with tc tbf. Open MPI reaches
# the other nodes through an rsh agent that enters their namespace. Traffic stays on these
# namespaces. Usage:
#   launch/netns_cluster.sh up N [RATE]     create N nodes (RATE e.g. 200mbit: inter-node bandwidth)
#   launch/netns_cluster.sh run SLOTS -- mpirun-args...   mpirun from node0 over N nodes x SLOTS ranks
#     (with mpi_yield_when_idle: the "nodes" share this machine's cores, and Open MPI, which sees
#     SLOTS free slots per node, would otherwise busy-poll; on a shared 2-core machine that turned
#     a 1 KiB all-to-all from 0.2 ms into 24-48 ms)
#   launch/netns_cluster.sh down            remove every namespace this script made
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${MOEMPI_NETNS_PREFIX:-moempi}-n   # the test uses its own prefix, so it never touches yours
BR=${MOEMPI_NETNS_PREFIX:-moempi}-br
SUBNET=${MOEMPI_NETNS_SUBNET:-10.77.0}

nodes() { ip netns list | awk '{print $1}' | grep "^$PREFIX" | sort -V; }

up() {
  local n=$1 rate=${2:-}
  [ "$(id -u)" -eq 0 ] || { echo "netns_cluster: needs root" >&2; exit 2; }
  down >/dev/null 2>&1 || true
  ip netns add "$BR"
  ip -n "$BR" link add br0 type bridge
  ip -n "$BR" link set br0 up
  for i in $(seq 0 $((n - 1))); do
    local ns=$PREFIX$i
    ip netns add "$ns"
    ip link add "${PREFIX}v$i" type veth peer name eth0 netns "$ns"
    ip link set "${PREFIX}v$i" netns "$BR"
    ip -n "$BR" link set "${PREFIX}v$i" master br0 up
    ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    if [ -n "$rate" ]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kbit latency 400ms
    fi
  done
  echo "netns_cluster: $n node(s) up${rate:+, inter-node rate $rate}"
}

down() {
  for ns in $(nodes) $(ip netns list | awk '{print $1}' | grep "^$BR$" || true); do ip netns del "$ns"; done
  echo "netns_cluster: down"
}

# The rsh agent Open MPI calls as: agent [options] HOST command...; HOST is $SUBNET.(I+1).
agent() {
  while [ "${1:-}" != "" ] && [ "${1:0:1}" = "-" ]; do shift; done
  local host=$1; shift
  local i=$(( ${host##*.} - 1 ))
  exec ip netns exec "$PREFIX$i" unshare --uts sh -c "hostname node$i; exec $*"
}

run() {
  local slots=$1; shift
  [ "${1:-}" = "--" ] && shift
  local hostfile
  hostfile=$(mktemp)
  for ns in $(nodes); do echo "$SUBNET.$(( ${ns#$PREFIX} + 1 )) slots=$slots"; done > "$hostfile"
  local mpirun=(mpirun --hostfile "$hostfile" --mca plm_rsh_agent "env MOEMPI_NETNS_PREFIX=${MOEMPI_NETNS_PREFIX:-moempi} MOEMPI_NETNS_SUBNET=$SUBNET $HERE/netns_cluster.sh agent"
                --mca btl self,vader,tcp --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0
                --mca mpi_yield_when_idle 1)
  [ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)
  local code=0
  ip netns exec "${PREFIX}0" unshare --uts sh -c 'hostname node0; exec "$@"' sh "${mpirun[@]}" "$@" || code=$?
  rm -f "$hostfile"
  return $code
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  agent) shift; agent "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: launch/netns_cluster.sh up N [RATE] | run SLOTS -- ARGS... | down" >&2; exit 2 ;;
esac
