#!/usr/bin/env bash
# Installs everything tendril needs to build, test and benchmark, from Debian 12
# packages. Does nothing (no apt-get update) when all of them are installed
# already. Needs root, or sudo.
#
#   bash scripts/install-deps.sh          # install what is missing
#   bash scripts/install-deps.sh --check  # only list what is missing (exit 1 if any)
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config    # toolchain
  libboost-context-dev                # fiber context switches
  liburing-dev                        # io_uring
  libnuma-dev                         # NUMA placement
  libdw-dev                           # fiber dump: unwinding and symbols (elfutils)
  gdb                                 # the gdb extension's tests
  libgtest-dev libgmock-dev           # tests
  libbenchmark-dev                    # benchmarks
  gnuplot-nox                         # benchmark plots
  wrk                                 # HTTP load for the main job and the suite
  clang libclang-rt-14-dev            # libFuzzer targets (scripts/fuzz.sh)
)

# scripts/test-kernels.sh (run by CI through scripts/test.sh) boots a qemu
# guest; run by hand, it installs these itself.
if [[ "${TENDRIL_TEST_KERNELS:-0}" = 1 ]]; then
  packages+=(qemu-system-x86 busybox-static)
fi

installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]]
}

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi
echo "install-deps: missing: ${missing[*]}"
if [[ "${1:-}" = --check ]]; then
  exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    sudo=(sudo)
  else
    echo "install-deps: run as root (or install sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o Dpkg::Use-Pty=0 -o Acquire::Retries=3)
# A fresh machine may have a stale or empty package index, and mirrors hiccup:
# retry the update a few times.
for attempt in 1 2 3; do
  if "${sudo[@]}" apt-get "${apt_opts[@]}" update; then
    break
  fi
  if [[ $attempt -eq 3 ]]; then
    echo "install-deps: apt-get update failed" >&2
    exit 1
  fi
  sleep $((attempt * 10))
done
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" </dev/null

still_missing=()
for p in "${missing[@]}"; do
  installed "$p" || still_missing+=("$p")
done
if [[ ${#still_missing[@]} -ne 0 ]]; then
  echo "install-deps: still missing after apt-get: ${still_missing[*]}" >&2
  exit 1
fi
echo "install-deps: installed ${missing[*]}"
