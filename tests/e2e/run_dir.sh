#!/usr/bin/env bash
# The run directory (issue 12, defects 2, 11, 12): one job at a time (an flock on the directory,
# stale locks from dead jobs taken over), job.name cannot leave runs/, and metrics.jsonl holds
# whole lines only when the disk fills, with the reason in the error.
source "$(dirname "$0")/lib.bash"

# Defect 2: a second job on a run directory in use is refused, naming the directory and holder.
"$MOEMPI" train configs/tiny.yaml --set train.steps=1000000 --set eval.interval=0 \
  --set job.run_dir="$TMP/shared" > "$TMP/first.log" 2>&1 &
first=$!
for _ in $(seq 600); do [ -s "$TMP/shared/metrics.jsonl" ] && break; sleep 0.1; done
expect_error "second job on a run dir in use" "job.run_dir '$TMP/shared' is in use by another moempi job" \
  "pid $first" -- "$MOEMPI" train configs/tiny.yaml --set train.steps=3 --set job.run_dir="$TMP/shared"
expect_error "second job on a run dir in use, under mpirun" "is in use by another moempi job" -- \
  timeout 120 "${MPIRUN[@]}" -np 2 "$MOEMPI" train configs/tiny_ep.yaml --set train.steps=3 --set job.run_dir="$TMP/shared"
kill -9 "$first"; wait "$first" 2>/dev/null || true
lines=$(wc -l < "$TMP/shared/metrics.jsonl")
# The dead job's lock file is stale: the next job takes it over and says so.
out=$("$MOEMPI" train configs/tiny.yaml --set train.steps=3 --set job.run_dir="$TMP/shared" 2>&1) \
  && grep -q "took over a stale lock left by a job that has ended (pid $first" <<<"$out" \
  && pass "stale lock of a killed job taken over (it had written $lines lines)" \
  || fail "stale lock: $out"
out=$("$MOEMPI" train configs/tiny.yaml --set train.steps=3 --set job.run_dir="$TMP/shared" 2>&1) \
  && ! grep -q "stale" <<<"$out" && pass "a cleanly ended job leaves no stale lock" || fail "after a clean end: $out"

# Defect 11: job.name is a directory under runs/: '..' and hidden names are refused.
expect_error "job.name .." "job.name" "'..'" "starts with '.'" -- "$MOEMPI" validate configs/tiny.yaml --set job.name=..
expect_error "job.name ." "job.name" -- "$MOEMPI" validate configs/tiny.yaml --set job.name=.
expect_error "job.name with a slash" "job.name" "'/'" -- "$MOEMPI" validate configs/tiny.yaml --set job.name=a/../..

# Defect 12: a full disk (metrics.jsonl on /dev/full) names the file and errno's reason.
mkdir -p "$TMP/full"
ln -s /dev/full "$TMP/full/metrics.jsonl"
code=0
out=$("$MOEMPI" train configs/tiny.yaml --set train.steps=3 --set job.run_dir="$TMP/full" 2>&1) || code=$?
if [ "$code" -ne 0 ] && grep -q "cannot write step 1 to metrics file '$TMP/full/metrics.jsonl': No space left on device" <<<"$out"; then
  pass "full disk: exit $code, $(grep -m1 'cannot write' <<<"$out")"
else
  fail "full disk: exit $code: $out"
fi
# A file size limit hit in the middle of a line (like a disk filling up), set on the running job
# with prlimit: the file keeps whole lines only, every one valid JSON, and the error gives the reason.
"$MOEMPI" train configs/tiny.yaml --set train.steps=1000000 --set train.log_interval=1 --set eval.interval=0 \
  --set job.run_dir="$TMP/limit" > "$TMP/limit.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ "$(wc -l < "$TMP/limit/metrics.jsonl" 2>/dev/null || echo 0)" -ge 3 ] && break; sleep 0.1; done
prlimit --pid "$job" --fsize=$(( $(stat -c %s "$TMP/limit/metrics.jsonl") + 3001 ))
code=0
wait "$job" || code=$?
bad=$(python3 -c '
import json, sys
data = open(sys.argv[1], "rb").read()
bad = 0 if data.endswith(b"\n") else 1
for line in data.splitlines():
    try: json.loads(line)
    except Exception: bad += 1
print(bad)' "$TMP/limit/metrics.jsonl")
n=$(wc -l < "$TMP/limit/metrics.jsonl")
if [ "$code" -ne 0 ] && grep -q "metrics.jsonl': File too large" "$TMP/limit.log" && [ "$bad" -eq 0 ] && [ "$n" -ge 3 ]; then
  pass "file size limit: $n whole lines kept, none cut: $(grep -m1 'cannot write' "$TMP/limit.log")"
else
  fail "file size limit: exit $code, $bad bad lines of $n: $(tail -3 "$TMP/limit.log")"
fi
finish
