#!/usr/bin/env bash
# Data files that change or are not files (issue 12, defects 3, 7, 13): a shard truncated during a
# run is an error naming it (not SIGBUS); a FIFO as data.path is refused at once (not waited on);
# `data encode` never overwrites its input and reads only regular files.
source "$(dirname "$0")/lib.bash"

# Defect 3: train on a token shard and truncate it while the job runs.
head -c 225000 /dev/urandom | base64 -w0 > "$TMP/corpus.txt"  # 300000 bytes
"$MOEMPI" data encode "$TMP/corpus.txt" "$TMP/shard.bin" > /dev/null
"$MOEMPI" train configs/tiny.yaml --set data.type=tokens --set data.path="$TMP/shard.bin" --set train.steps=1000000 \
  --set eval.interval=0 --set job.run_dir="$TMP/shrink" > "$TMP/shrink.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ -s "$TMP/shrink/metrics.jsonl" ] && break; sleep 0.1; done
truncate -s 1000 "$TMP/shard.bin"
code=0
timeout 60 tail --pid="$job" -f /dev/null || true
wait "$job" || code=$?
if [ "$code" -ne 0 ] && [ "$code" -ne 135 ] && grep -q "shard.bin: the file changed during the run: it had 600024 bytes at start and has 1000 now" "$TMP/shrink.log" \
   && ! grep -q "Bus error\|SIGBUS" "$TMP/shrink.log"; then
  pass "shard truncated during the run: exit $code, $(grep -m1 'changed during the run' "$TMP/shrink.log")"
else
  fail "shard truncated during the run: exit $code: $(tail -5 "$TMP/shrink.log")"
fi

# Defect 7: a FIFO as data.path, for text and tokens, is refused without waiting for a writer.
mkfifo "$TMP/fifo"
expect_error "FIFO as text data.path" "fifo: not a regular file but a FIFO" "data.path" -- timeout 60 \
  "$MOEMPI" train configs/tiny.yaml --set data.type=text --set data.path="$TMP/fifo" --set job.run_dir="$TMP/f1"
expect_error "FIFO as tokens data.path" "fifo: not a regular file but a FIFO" "data.path" -- timeout 60 \
  "$MOEMPI" train configs/tiny.yaml --set data.type=tokens --set data.path="$TMP/fifo" --set job.run_dir="$TMP/f2"

# Defect 13: `data encode X X` must not overwrite its input; encode reads regular files only.
cp "$TMP/corpus.txt" "$TMP/same.txt"
expect_error "encode onto its own input" "same.txt" "is the input" -- "$MOEMPI" data encode "$TMP/same.txt" "$TMP/same.txt"
ln -s "$TMP/same.txt" "$TMP/link.txt"
expect_error "encode onto its input through a link" "is the input" -- "$MOEMPI" data encode "$TMP/same.txt" "$TMP/link.txt"
cmp -s "$TMP/corpus.txt" "$TMP/same.txt" && pass "the input is unchanged" || fail "the input was modified"
expect_error "encode from /dev/zero" "/dev/zero" "not a regular file" -- timeout 60 "$MOEMPI" data encode /dev/zero "$TMP/z.bin"
expect_error "encode from a FIFO" "not a regular file" -- timeout 60 "$MOEMPI" data encode "$TMP/fifo" "$TMP/z.bin"
# A failed encode leaves no partial output (written to a temporary file, then renamed).
"$MOEMPI" data encode "$TMP/corpus.txt" "$TMP/enc.bin" > /dev/null
"$MOEMPI" train configs/tiny.yaml --set data.type=tokens --set data.path="$TMP/enc.bin" --set train.steps=2 \
  --set job.run_dir="$TMP/enc" > "$TMP/enc.log" 2>&1 && pass "an encoded shard trains" || fail "encoded shard: $(tail -3 "$TMP/enc.log")"
[ -z "$(ls "$TMP" | grep '\.tmp')" ] && pass "no temporary files left" || fail "temporary files left: $(ls "$TMP")"
finish
