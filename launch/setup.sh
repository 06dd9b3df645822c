#!/usr/bin/env bash
# moempi set-up on a fresh Debian (bookworm) machine, from a fresh clone:
#   launch/setup.sh demo   install what is missing, build, run a short 2-rank training job
#   launch/setup.sh test   install what is missing, build, run every test (ctest, MPI at 1-4 ranks)
#   launch/setup.sh build  install what is missing and build only
# Works as root or as a user with sudo. Build directory: $MOEMPI_BUILD_DIR (default ./build).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake openmpi-bin libopenmpi-dev libopenblas-dev
          libspdlog-dev libyaml-cpp-dev libgtest-dev libcli11-dev
          nlohmann-json3-dev gnuplot-nox libprotobuf-dev protobuf-compiler)
BUILD_DIR=${MOEMPI_BUILD_DIR:-build}
JOBS=$(nproc 2>/dev/null || echo 2)

install_deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "moempi setup: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() {
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

# mpirun flags that work as root and as a user, on machines with fewer cores than ranks.
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)

case "${1:-}" in
  demo)
    install_deps && build
    # Expert parallel over 2 ranks, tokens moving over MPI all-to-all, on the built-in corpus.
    "${MPIRUN[@]}" -np 2 "$BUILD_DIR/moempi" train configs/tiny_ep.yaml
    ;;
  test)
    install_deps && build
    cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS"
    ;;
  build)
    install_deps && build
    ;;
  *)
    echo "usage: launch/setup.sh demo|test|build" >&2
    exit 2
    ;;
esac
