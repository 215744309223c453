#!/usr/bin/env bash
# Builds tendril in Release (build/, Ninja) and runs the core
# comparison, tendril vs pthreads, writing into bench/results/:
#   core_compare-<stamp>.txt   the printed tables
#   core_compare-<stamp>.md    the same as Markdown
#   png-<stamp>/*.png          bar charts (if gnuplot is installed)
#   core_micro-<stamp>.json    Google Benchmark micro-benchmarks (--micro only)
#
#   scripts/bench-core.sh [--quick] [--micro] [-- extra cmake args]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
out="$root/bench/results"
quick=()
micro=0
cmake_extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=(--quick); shift ;;
    --micro) micro=1; shift ;;
    --) shift; cmake_extra=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench-core.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTENDRIL_BUILD_BENCH=ON \
  ${cmake_extra[@]+"${cmake_extra[@]}"}
ninja -C "$build" core_compare core_micro

mkdir -p "$out"
stamp="$(date +%Y%m%d-%H%M%S)"
echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (on $(nproc) CPUs; other load inflates wall times)" >&2
"$build/bench/core_compare" ${quick[@]+"${quick[@]}"} \
  --markdown "$out/core_compare-$stamp.md" --png "$out/png-$stamp" | tee "$out/core_compare-$stamp.txt"
if [[ $micro == 1 ]]; then
  min_time=0.5
  [[ ${#quick[@]} -gt 0 ]] && min_time=0.05
  "$build/bench/core_micro" --benchmark_min_time="$min_time" \
    --benchmark_out="$out/core_micro-$stamp.json" --benchmark_out_format=json
fi
echo "results in $out (stamp $stamp)" >&2
