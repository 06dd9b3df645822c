#!/usr/bin/env bash
# `moempi bench sparse` through the binary: both algorithms at 2 and 3 ranks over λ = 0, 1/3, 1
# verify their payloads (#wrong 0, exit 0) and print a row per λ; a bad λ is one error, exit 2.
source "$(dirname "$0")/lib.bash"

for np in 2 3; do
  for algo in p2p alltoallv; do
    out=$("${MPIRUN[@]}" -np $np "$MOEMPI" bench sparse -E 12 -s 4K --lambda 0,0.3333,1 --algo $algo -n 2 -w 1 2>&1) \
      && code=0 || code=$?
    rows=$(grep -cE '^ +(0\.0000|0\.3333|1\.0000) ' <<<"$out" || true)
    if [ "$code" -eq 0 ] && grep -q 'Out of bounds values : 0 OK' <<<"$out" && [ "$rows" -eq 3 ]; then
      pass "bench sparse --algo $algo at $np ranks: 3 rows, payloads verified"
    else
      fail "bench sparse --algo $algo at $np ranks: exit $code, $rows rows: $out"
    fi
  done
done
expect_error "bad lambda" "--lambda: '1.5'" -- "$MOEMPI" bench sparse --lambda 0.5,1.5
expect_error "bad algorithm" "unknown sparse collective algorithm 'ring'" -- "$MOEMPI" bench sparse --algo ring
expect_error "experts not a multiple of ranks" "-E/--experts (5)" -- "${MPIRUN[@]}" -np 2 "$MOEMPI" bench sparse -E 5
finish
