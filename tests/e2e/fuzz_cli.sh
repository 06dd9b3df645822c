#!/usr/bin/env bash
# Mutation fuzzing through the binary (issue 12, "what else" 5; the library-level fuzzing with
# thousands of cases is tests/fuzz_test.cpp): 30 mutated job specs through `moempi validate` and
# 12 mutated token shards through `moempi train`, fixed seed. Each ends with exit 0 or with exit 2
# and one error line; never a crash, an uncaught exception or a hang.
source "$(dirname "$0")/lib.bash"

python3 - "$TMP" configs/tiny.yaml <<'PY'
import os, random, struct, sys
tmp, spec = sys.argv[1], open(sys.argv[2], "rb").read()
rng = random.Random(20261130)
tokens = [b":", b"-", b"[", b"{", b"---\n", b"...\n", b"&a ", b"*a", b"!!int ", b"\t", b"\n", b"'", b"~",
          b"-1", b"2147483648", b"1e309", b".nan", b"0", b"\xff", b"<<: *a\n"]
for i in range(30):
    s = bytearray(spec)
    for _ in range(rng.randint(1, 4)):
        p = rng.randrange(len(s) + 1)
        op = rng.randrange(4)
        if op == 0: del s[p:p + rng.randint(1, 16)]
        elif op == 1: s[p:p] = rng.choice(tokens)
        elif op == 2 and p < len(s): s[p] = rng.randrange(256)
        else: s[p:p] = s[p:p + rng.randint(1, 40)]
    open(os.path.join(tmp, f"spec_{i}.yaml"), "wb").write(bytes(s))
for i in range(12):
    n = rng.randint(100, 3000)
    b = bytearray(b"MOEMPITK" + struct.pack("<IIQ", 1, 0, n) + bytes(rng.randrange(256) if j % 2 == 0 else 0 for j in range(2 * n)))
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        if op == 0: b[rng.randrange(24)] ^= 1 << rng.randrange(8)
        elif op == 1: del b[rng.randrange(len(b)):]
        elif op == 2: b[16:24] = struct.pack("<Q", rng.choice([0, 2**64 - 1, 2**63, rng.randrange(2**64)]))
        else: b[24 + 2 * rng.randrange(n):26 + 2 * rng.randrange(n)] = struct.pack("<H", rng.randrange(256, 65536))
    open(os.path.join(tmp, f"shard_{i}.bin"), "wb").write(bytes(b))
PY

LAST=0
check() {  # name, then the command; the exit code is left in LAST
  local name=$1; shift
  local out code=0
  out=$(timeout 60 "$@" 2>&1) || code=$?
  LAST=$code
  local errors
  errors=$(grep -c "error" <<<"$out" || true)
  if [ "$code" -eq 0 ] || { [ "$code" -eq 2 ] && [ "$errors" -eq 1 ]; }; then
    return 0
  fi
  fail "$name: exit $code, $errors error lines: $(tail -c 600 <<<"$out")"
  return 1
}
ok=0; refused=0
for i in $(seq 0 29); do
  if check "spec $i" "$MOEMPI" validate "$TMP/spec_$i.yaml"; then
    if [ "$LAST" -eq 0 ]; then ok=$((ok + 1)); else refused=$((refused + 1)); fi
  fi
done
pass "mutated specs: $ok valid, $refused refused with one message (exit 2), no other outcome"
ok=0
for i in $(seq 0 11); do
  check "shard $i" "$MOEMPI" train configs/tiny.yaml --set data.type=tokens --set data.path="$TMP/shard_$i.bin" \
    --set train.steps=1 --set model.seq_len=16 --set eval.interval=0 --set job.run_dir="$TMP/run_$i" && ok=$((ok + 1))
done
[ "$ok" -eq 12 ] && pass "mutated shards: 12 of 12 trained or were refused with one message"
finish
