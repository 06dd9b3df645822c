# Helpers sourced by tests/e2e/*.sh. Each script gets the moempi binary and the source dir.
set -euo pipefail
MOEMPI=$1
SRC=$2
MOEMPI_HOOKS=${3:-}  # the same binary with fault-injection hooks (MOEMPI_TEST_HANG), for tests only
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$SRC"
FAILS=0
PASSES=0

pass() { echo "ok: $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
finish() {
  echo "$PASSES passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
}

MPIRUN=(mpirun --oversubscribe --timeout 600)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)

# Values of a key in a metrics.jsonl, one per line, as printed (exact text for bitwise compares).
jsonl_values() {  # file key
  grep -o "\"$2\":[^,}]*" "$1" | cut -d: -f2
}

# Worst relative difference |a - b| / |a| over the losses of two metrics.jsonl files, or "missing"
# unless both hold exactly N losses.
worst_loss_diff() {  # a.jsonl b.jsonl N
  paste <(jsonl_values "$1" loss) <(jsonl_values "$2" loss) |
    awk -v want="$3" 'NF == 2 { d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > w) w = d; n++ }
                      END { if (n != want) print "missing"; else printf "%.3g", w }'
}
below() {  # worst_loss_diff's result, bound: true when it is a number below the bound
  [ "$1" != missing ] && awk -v w="$1" -v b="$2" 'BEGIN { exit !(w < b) }'
}

# Runs a command expected to fail with exit code 2 and a message containing every given string.
expect_error() {  # name, then "--" then the command; strings before "--"
  local name=$1; shift
  local needles=()
  while [ "$1" != "--" ]; do needles+=("$1"); shift; done
  shift
  local out code=0
  out=$("$@" 2>&1) || code=$?
  if [ "$code" -ne 2 ]; then fail "$name: exit code $code, expected 2: $out"; return; fi
  local lines
  lines=$(printf '%s\n' "$out" | grep -c 'error' || true)
  if [ "$lines" -ne 1 ]; then fail "$name: expected one error line, got $lines: $out"; return; fi
  for n in "${needles[@]}"; do
    if ! grep -qF -- "$n" <<<"$out"; then fail "$name: message lacks '$n': $out"; return; fi
  done
  pass "$name: $out"
}
