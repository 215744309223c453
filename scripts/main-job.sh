#!/usr/bin/env bash
# The main job: install what tendril needs (Debian 12), build it in Release,
# and show what it buys over a thread per task, measured in one run on this
# machine: switches, channel ping-pong, spawn+join (tendril vs pthreads), and,
# where built, idle memory per fiber and stack growth.
#
#   bash scripts/main-job.sh            # a few minutes
#   TENDRIL_MAIN_QUICK=0 bash scripts/main-job.sh   # longer, steadier figures
#
# Results: printed tables, plus bench/results/<host>-<date>/ (Markdown + PNG).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
quick=()
[[ "${TENDRIL_MAIN_QUICK:-1}" == 1 ]] && quick=(--quick)

bash scripts/install-deps.sh
echo "== building tendril (Release) in build-release/"
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DTENDRIL_BUILD_TESTS=OFF >/dev/null
ninja -C build-release >/dev/null

out="bench/results/$(hostname -s)-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
echo "== load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (other load inflates wall times)"

echo
echo "== 1. tendril vs pthreads: switch, ping-pong, spawn+join"
build-release/bench/core_compare ${quick[@]+"${quick[@]}"} --markdown "$out/core.md" --png "$out/core"

if [[ -x build-release/bench/stack_memory ]]; then
  echo
  echo "== 2. idle memory per fiber vs per thread, stack growth"
  build-release/bench/stack_memory ${quick[@]+"${quick[@]}"} --markdown "$out/stacks.md"
fi

echo
echo "== results written to $out/"
ls "$out" | sed 's/^/   /'
