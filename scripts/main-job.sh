#!/usr/bin/env bash
# The main job: on a fresh Debian 12 machine, install what tendril needs,
# build it in Release, and show in a few minutes why one would link tendril
# into a high-fan-out server instead of using a thread per connection: the
# http sample (fibers) against its pthread twin (same sources, one thread per
# connection) under wrk at 100, 1,000 and 10,000 connections (server and wrk
# on separate CPUs), then how many idle keep-alive connections each fits in
# 1 GiB.
#
#   bash scripts/main-job.sh                          # about 3 minutes with the build
#   TENDRIL_MAIN_SECONDS=15 bash scripts/main-job.sh  # longer wrk runs
#
# Prints the tables and the path of the charts; everything is written to
# bench/results/main-<host>-<date>/. The whole suite: scripts/bench-suite.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${TENDRIL_MAIN_SECONDS:-5}"

bash scripts/install-deps.sh
echo "== building tendril (Release) in build/"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DTENDRIL_BUILD_BENCH=ON -DTENDRIL_BUILD_SAMPLES=ON >/dev/null
cmake --build build >/dev/null

out="bench/results/main-$(hostname -s)-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
echo "== $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) (other load skews the figures)"

echo
echo "== 1. http under wrk: tendril vs a thread per connection (${seconds}s per run)"
bash bench/scripts/http-wrk.sh --build build --conns 100,1000,10000 --seconds "$seconds" --split --out "$out"

echo
echo "== 2. idle keep-alive connections per GiB of server memory"
build/bench/idle_conns --conns 10000 --markdown "$out/idle.md"

echo
echo "== results: $out/ (http.md, idle.md, wrk outputs)"
ls "$out"/*.png >/dev/null 2>&1 && echo "== charts:  $(ls "$out"/*.png | tr '\n' ' ')"
