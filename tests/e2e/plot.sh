#!/usr/bin/env bash
# `moempi plot` on real run directories: non-empty PNGs of the expected size (1000 × 600), runs
# overlaid; a run dir without metrics.jsonl and a missing plotter are one clear error each, exit 2.
source "$(dirname "$0")/lib.bash"

for r in aux bias; do
  extra=()
  [ $r = bias ] && extra=(--set "moe.balancing.0={type: loss_free_bias, rate: 0.003}")
  "$MOEMPI" train configs/tiny.yaml --set train.steps=20 --set eval.interval=5 --set eval.batches=1 \
    --set train.log_interval=5 --set job.run_dir="$TMP/$r" "${extra[@]}" > "$TMP/$r.log" 2>&1 \
    || fail "training $r: $(tail -3 "$TMP/$r.log")"
done

png_size() {  # width x height from the IHDR chunk
  local b
  read -r -a b <<<"$(od -An -tu1 -j16 -N8 "$1")"
  echo "$(( (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3] ))x$(( (b[4] << 24) | (b[5] << 16) | (b[6] << 8) | b[7] ))"
}

if out=$("$MOEMPI" plot "$TMP/aux" "$TMP/bias" -o "$TMP/plots" 2>&1); then
  pass "plot ran: $(echo "$out" | tr '\n' ' ')"
else
  fail "plot: $out"
fi
for png in loss maxvio specialisation expert_load_aux expert_load_bias; do
  f="$TMP/plots/$png.png"
  if [ -s "$f" ] && [ "$(head -c 8 "$f" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ] \
     && [ "$(png_size "$f")" = 1000x600 ] && [ "$(stat -c %s "$f")" -gt 5000 ]; then
    pass "$png.png: $(png_size "$f"), $(stat -c %s "$f") bytes"
  else
    fail "$png.png missing, empty or not 1000x600: $(ls -la "$f" 2>&1)"
  fi
done
# Default output directory: the first run dir.
"$MOEMPI" plot "$TMP/aux" > /dev/null 2>&1 && [ -s "$TMP/aux/loss.png" ] && pass "default -o is the run dir" \
  || fail "no $TMP/aux/loss.png"

# A run without evaluation (no val_loss, no specialisation) plots too, and runs of the same name
# (two dirs called "noeval") get one heatmap each, into a directory with a quote in its name.
mkdir -p "$TMP/a" "$TMP/b"
for d in a b; do
  "$MOEMPI" train configs/tiny.yaml --set train.steps=6 --set eval.interval=0 --set train.log_interval=2 \
    --set job.run_dir="$TMP/$d/noeval" > "$TMP/noeval_$d.log" 2>&1 || fail "training noeval: $(tail -3 "$TMP/noeval_$d.log")"
done
if out=$("$MOEMPI" plot "$TMP/a/noeval" "$TMP/b/noeval" -o "$TMP/bob's plots" 2>&1) \
   && [ -s "$TMP/bob's plots/loss.png" ] && [ -s "$TMP/bob's plots/expert_load_noeval.png" ] \
   && [ -s "$TMP/bob's plots/expert_load_noeval_2.png" ] && [ ! -e "$TMP/bob's plots/specialisation.png" ]; then
  pass "runs without evaluation, same names, quote in -o: $(echo "$out" | tr '\n' ' ')"
else
  fail "no-eval plot: $out $(ls "$TMP/bob's plots" 2>&1)"
fi

mkdir -p "$TMP/not_a_run"
expect_error "run dir without metrics.jsonl" "$TMP/not_a_run has no metrics.jsonl" -- \
  "$MOEMPI" plot "$TMP/aux" "$TMP/not_a_run"
expect_error "missing plotter" "gnuplot-nox" -- env MOEMPI_GNUPLOT=/nonexistent/gnuplot "$MOEMPI" plot "$TMP/aux"
finish
