#!/usr/bin/env bash
# launch/moempi.sbatch on a real single-node SLURM (launch/slurm_local.sh: munge, slurmctld and
# slurmd started by hand in a temporary directory, stopped and removed at the end). ctest label
# "slurm"; needs root and slurm-wlm, and skips (exit 77) with a message without them.
# Everything is submitted from a scratch directory outside the source tree, with relative paths
# (the job file, the binary through a relative MOEMPI, runs/<name>), sized `sbatch -N1 -n2`, with
# `--set` arguments after the job file:
# 1. an uninterrupted run: the reference losses (and the binary found without MOEMPI, through the
#    submitted script's source tree, when the build directory is <src>/build);
# 2. srun and mpirun launchers: preempted mid-run by `scancel --signal=USR1 --batch` (what SLURM's
#    time-limit warning, --signal=B:USR1@N, delivers): the job saves a checkpoint, exits 75,
#    requeues itself, resumes with checkpoint.resume auto and completes; losses bit-identical to 1;
# 3. the time-limit warning itself: --time=1 with --signal=B:USR1@50 preempts and requeues;
# 4. a plain scancel (SIGTERM): the ranks checkpoint, the job is cancelled, not requeued.
source "$(dirname "$0")/lib.bash"
SKIP=77

missing=""
for b in munged mungekey slurmctld slurmd sbatch scontrol scancel squeue srun; do
  command -v "$b" > /dev/null || missing+=" $b"
done
if [ -n "$missing" ]; then echo "skipped: slurm-wlm is not installed (missing:$missing; apt-get install slurm-wlm)"; exit $SKIP; fi
if [ "$(id -u)" -ne 0 ]; then echo "skipped: a local SLURM needs root"; exit $SKIP; fi

# A port pair no TCP socket uses (any state), below the ephemeral range (ip_local_port_range
# starts at 32768), so neither a real SLURM nor another test's connections collide with it; a
# port taken between the check and the bind gets a second and third try.
pick_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 12000))
    ss -Htan "( sport = :$p or sport = :$((p + 1)) )" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  echo 16817
}
SL="$TMP/slurm"
export SLURM_CONF="$SL/slurm.conf"
cleanup() { "$SRC/launch/slurm_local.sh" down "$SL" > /dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT
up=0
for _ in 1 2 3; do
  export MOEMPI_SLURM_PORT=$(pick_port)
  if "$SRC/launch/slurm_local.sh" up "$SL" > "$TMP/up.log" 2>&1; then up=1; break; fi
  "$SRC/launch/slurm_local.sh" down "$SL" > /dev/null 2>&1 || true
done
if [ "$up" -ne 1 ]; then
  fail "slurm_local.sh up (3 tries): $(tail -5 "$TMP/up.log")"
  finish; exit
fi
pass "local SLURM: $(grep 'up in' "$TMP/up.log")"

# The submit directory: outside the source tree, everything relative.
SUB="$TMP/submit"
mkdir -p "$SUB/bin"
cp configs/tiny_ep.yaml "$SUB/job.yaml"
ln -s "$(realpath "$MOEMPI")" "$SUB/bin/moempi"
cd "$SUB"
args=(--set train.steps=120 --set train.log_interval=1 --set eval.interval=0)

state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
field() { scontrol show job "$1" 2>/dev/null | grep -o "$2=[^ ]*" | head -1 | cut -d= -f2; }
# A job requeued by its script is pending with a begin time 120 s ahead (SLURM's requeue delay):
# moved to 10 s from now (once per requeue) to keep the test short. Not to now: slurmd refuses to
# start a job it is still cleaning up ("Job N already killed, do not launch batch job").
released=""
hurry_requeued() {  # jobid
  local r
  r=$(field "$1" Restarts)
  if [ "$(state "$1")" = PENDING ] && [ "$r" != 0 ] && [ "$released" != "$1.$r" ]; then
    scontrol update JobId="$1" StartTime=now+10 2> /dev/null && released="$1.$r"
  fi
  return 0
}
wait_done() {  # jobid: waits for the job to end (up to 600 s)
  local s
  for _ in $(seq 3000); do
    s=$(state "$1")
    case $s in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) echo "$s"; return ;;
      PENDING) hurry_requeued "$1" ;;
    esac
    sleep 0.2
  done
  echo "$s (timed out)"
}
wait_step() {  # run_dir step: waits until metrics.jsonl has the step (up to 300 s)
  for _ in $(seq 1500); do grep -q "\"step\":$2," "$1/metrics.jsonl" 2>/dev/null && return 0; sleep 0.2; done
  return 1
}

# --- 1. the reference ----------------------------------------------------------------------------
if [ "$(realpath "$SRC/build/moempi" 2>/dev/null)" = "$(realpath "$MOEMPI")" ]; then
  ref_env=(env -u MOEMPI); how="build/moempi of the submitted script's tree"
else
  ref_env=(env MOEMPI=bin/moempi); how="MOEMPI=bin/moempi"
fi
jid=$("${ref_env[@]}" sbatch --parsable -N1 -n2 "$SRC/launch/moempi.sbatch" job.yaml "${args[@]}" --set job.name=ref)
s=$(wait_done "$jid")
out="moempi-$jid.out"
if [ "$s" = COMPLETED ] && [ "$(field "$jid" ExitCode)" = 0:0 ] && grep -q "step 120/120" "$out" &&
   [ "$(jsonl_values runs/ref/metrics.jsonl step | wc -l)" = 120 ]; then
  pass "reference: sbatch -N1 -n2 (binary: $how), --set after the job file honoured (120 steps), $s; final loss $(jsonl_values runs/ref/metrics.jsonl loss | tail -1)"
else
  fail "reference job $jid: $s, exit $(field "$jid" ExitCode): $(tail -5 "$out")"
fi

# --- 2. preempted and requeued, through srun and through mpirun ------------------------------------
preempt_case() {  # launcher
  local name=$1 jid s out step
  jid=$(MOEMPI=bin/moempi MOEMPI_LAUNCHER=$1 sbatch --parsable -N1 -n2 "$SRC/launch/moempi.sbatch" job.yaml "${args[@]}" \
        --set job.name="$name")
  out="moempi-$jid.out"
  if ! wait_step "runs/$name" 10; then fail "$name: job $jid never reached step 10: $(tail -5 "$out")"; scancel "$jid"; return; fi
  scancel --signal=USR1 --batch "$jid"
  s=$(wait_done "$jid")
  step=$(grep -o "preempted by SIGUSR1 after step [0-9]*" "$out" | grep -o "[0-9]*$" || true)
  echo "--- $name: job $jid"; grep -E "moempi.sbatch|preempted|resuming|done:|error" "$out" | cut -c1-220
  if [ "$s" = COMPLETED ] && [ "$(field "$jid" ExitCode)" = 0:0 ] && [ "$(field "$jid" Restarts)" = 1 ] && [ -n "$step" ] &&
     grep -q "^moempi.sbatch: $1 " "$out" && grep -q "preempted (exit 75): requeueing job $jid" "$out" &&
     grep -q "job $jid (restart 1)" "$out" && grep -q "resuming from runs/$name/ckpt/step_$step (step $step;" "$out"; then
    pass "$name: preempted after step $step (exit 75), requeued, resumed from step_$step, $s"
  else
    fail "$name: job $jid $s, exit $(field "$jid" ExitCode), restarts $(field "$jid" Restarts), step '$step': $(grep -vE '^ |^\[r0\] step|^[a-z_]*:$' "$out" | tail -25)"
  fi
  if cmp -s <(jsonl_values runs/ref/metrics.jsonl loss) <(jsonl_values "runs/$name/metrics.jsonl" loss) &&
     [ "$(jsonl_values "runs/$name/metrics.jsonl" step | tr '\n' ' ')" = "$(seq -s ' ' 1 120) " ]; then
    pass "$name: 120 losses bit-identical to the uninterrupted job (final $(jsonl_values "runs/$name/metrics.jsonl" loss | tail -1))"
  else
    fail "$name: losses differ from the reference: $(paste -d/ <(jsonl_values runs/ref/metrics.jsonl loss) <(jsonl_values "runs/$name/metrics.jsonl" loss) | tr '\n' ' ' | cut -c1-600)"
  fi
}
preempt_case srun
preempt_case mpirun

# --- 3. the time-limit warning ----------------------------------------------------------------------
# One minute of time limit, SIGUSR1 when 50 s are left (slurmctld checks about every 30 s): the run
# is long enough to be preempted, is requeued, and is cancelled once it has resumed.
jid=$(MOEMPI=bin/moempi sbatch --parsable -N1 -n2 --time=1 --signal=B:USR1@50 "$SRC/launch/moempi.sbatch" job.yaml \
      --set train.steps=100000 --set train.log_interval=10 --set eval.interval=0 --set job.name=limit)
out="moempi-$jid.out"
t0=$(date +%s)
for i in $(seq 900); do
  grep -q "resuming from" "$out" 2>/dev/null && break
  s=$(state "$jid") r=$(field "$jid" Reason)
  [ $((i % 50)) -eq 0 ] && echo "limit: $(( $(date +%s) - t0 )) s: $s ($r)"
  hurry_requeued "$jid"
  sleep 0.2
done
scancel "$jid"
echo "--- limit: job $jid"; grep -E "moempi.sbatch|preempted|resuming" "$out" | cut -c1-220
if grep -q "received SIGUSR1" "$out" && grep -q "preempted by SIGUSR1 after step" "$out" &&
   grep -q "requeueing job $jid" "$out" && grep -q "resuming from runs/limit/ckpt/step_" "$out"; then
  pass "time limit: --signal=B:USR1@50 preempted the job before the limit ($(grep -o 'after step [0-9]*' "$out" | head -1)), requeued, resumed"
else
  fail "time limit: $(grep -E 'moempi.sbatch|preempted|resuming|rror|CANCELLED|TIME' "$out" | tail -6)"
fi
# --- 4. a plain scancel (SIGTERM): checkpoints within KillWait, not requeued ----------------------
jid=$(MOEMPI=bin/moempi sbatch --parsable -N1 -n2 "$SRC/launch/moempi.sbatch" job.yaml --set train.steps=100000 \
      --set train.log_interval=1 --set eval.interval=0 --set job.name=cancel)
out="moempi-$jid.out"
wait_step runs/cancel 5 || fail "cancel: job $jid never reached step 5"
scancel "$jid"
s=$(wait_done "$jid")
echo "--- cancel: job $jid"; grep -E "moempi.sbatch|preempted" "$out" | cut -c1-220
step=$(grep -o "preempted by SIG[A-Z0-9]* after step [0-9]*" "$out" | grep -o "[0-9]*$" || true)
if [ "$s" = CANCELLED ] && [ "$(field "$jid" Restarts)" = 0 ] && [ -n "$step" ] &&
   [ "$(cat runs/cancel/ckpt/latest 2>/dev/null)" = "step_$step" ] && "$MOEMPI" ckpt verify runs/cancel > /dev/null 2>&1 &&
   grep -q "resubmit the same command to resume" "$out"; then
  pass "scancel: checkpoint of step $step saved and verified, $s, not requeued"
else
  fail "scancel: job $jid $s, restarts $(field "$jid" Restarts), step '$step', latest '$(cat runs/cancel/ckpt/latest 2>/dev/null)'"
fi
finish
