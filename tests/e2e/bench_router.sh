#!/usr/bin/env bash
# `moempi bench router` through the binary: the router's products through OpenBLAS and through the
# vector kernels, for E within the kernels (5, 8) and past them (13, 24: OpenBLAS on both sides), with a
# partial token block and a D that is not a multiple of 16: both paths verified (#wrong 0, exit 0).
source "$(dirname "$0")/lib.bash"

for E in 5 8 13 24; do
  out=$("$MOEMPI" bench router --tokens 70 --d_model 100 --experts $E --evict-mb 1 -n 2 -w 1 2>&1) && code=0 || code=$?
  rows=$(grep -cE '^ +(forward|backward) +[0-9.]+ +[0-9.]+ +[0-9.]+ +0 +0$' <<<"$out" || true)
  if [ "$code" -eq 0 ] && grep -q 'Out of bounds values : 0 OK' <<<"$out" && [ "$rows" -eq 2 ]; then
    pass "bench router E $E: forward and backward rows, both paths verified"
  else
    fail "bench router E $E: exit $code, $rows verified rows: $out"
  fi
done
finish
