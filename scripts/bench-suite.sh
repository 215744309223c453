#!/usr/bin/env bash
# The whole benchmark suite, tendril against pthreads (and Go and Boost.Fiber
# where installed), measured in one run on this machine. Writes
#   bench/results/<host>-<date>.md     every table, machine described on top
#   bench/results/<host>-<date>/*.png  charts (gnuplot)
#   bench/results/<host>-<date>/*      raw outputs
# and shows progress while it runs.
#
#   bash scripts/bench-suite.sh [--quick] [--only LIST] [--build DIR]
#
# LIST: comma-separated parts (default all): core,memory,cache,echo,http,
# fanout,idle,peers. --quick shortens every part; the full run took 8-10
# minutes on the project's 2-vCPU machine. Dependencies: bash scripts/install-deps.sh;
# peers: apt-get install golang-go libboost-fiber-dev (skipped if missing).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
quick=0
only="core,memory,cache,echo,http,fanout,idle,peers"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --only) only="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-suite.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
want() { [[ ",$only," == *",$1,"* ]]; }
q=(); [[ $quick = 1 ]] && q=(--quick)

echo "== building tendril (Release) in $build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DTENDRIL_BUILD_BENCH=ON -DTENDRIL_BUILD_SAMPLES=ON >/dev/null
cmake --build "$build" >/dev/null

stamp="$(hostname -s)-$(date +%Y%m%d-%H%M)"
md="$root/bench/results/$stamp.md"
dir="$root/bench/results/$stamp"
mkdir -p "$dir"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
{
  echo "# tendril benchmark suite: $stamp"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| machine | $(nproc) CPUs ($cpu_model), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), NUMA nodes: $(ls -d /sys/devices/system/node/node* 2>/dev/null | wc -l) |"
  echo "| kernel | $(uname -sr) |"
  echo "| OS | $(. /etc/os-release && echo "$PRETTY_NAME") |"
  echo "| compiler | $(c++ --version | head -1) |"
  echo "| tendril | $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet 2>/dev/null || echo ' (modified)') |"
  echo "| limits | RLIMIT_NOFILE hard $(ulimit -Hn), vm.max_map_count $(cat /proc/sys/vm/max_map_count) |"
  echo "| load before | $(cut -d' ' -f1-3 /proc/loadavg) |"
  echo "| mode | $([[ $quick = 1 ]] && echo "--quick" || echo "full") |"
  echo
  echo "Every ratio compares figures measured in this run on this machine. Charts: \`$stamp/\`."
  echo
} >"$md"

parts=()
for p in core memory cache echo http fanout idle peers; do want "$p" && parts+=("$p"); done
i=0
step() {
  i=$((i + 1))
  echo
  echo "== [$i/${#parts[@]}] $1  ($(date +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
}
# code_block TITLE FILE: a program's plain output as a Markdown section.
code_block() {
  { echo "## $1"; echo; echo '```'; cat "$2"; echo '```'; echo; } >>"$md"
}
failed=()
run_part() {  # run_part NAME cmd...: a failing part is reported, the suite goes on
  local name=$1; shift
  if ! "$@"; then
    failed+=("$name")
    echo "!! $name failed" >&2
    echo "**$name: failed** (see the raw output in \`$stamp/\`)" >>"$md"
    echo >>"$md"
  fi
}

if want core; then
  step "spawn, switch, ping-pong: tendril vs pthreads (core_compare)"
  echo "## Spawn, switch, channel ping-pong" >>"$md"; echo >>"$md"
  run_part core "$build/bench/core_compare" ${q[@]+"${q[@]}"} --markdown "$dir/core.md" --png "$dir"
  [[ -f "$dir/core.md" ]] && cat "$dir/core.md" >>"$md"
fi
if want memory; then
  step "idle memory per fiber vs per thread, stack growth (stack_memory)"
  run_part memory "$build/bench/stack_memory" ${q[@]+"${q[@]}"} --markdown "$dir/memory.md"
  [[ -f "$dir/memory.md" ]] && cat "$dir/memory.md" >>"$md"
fi
if want cache; then
  step "stack cache churn and learned depth (stack_cache)"
  run_part cache bash -c "set -o pipefail; '$build/bench/stack_cache' ${q[*]+"${q[*]}"} | tee '$dir/stack_cache.txt'"
  code_block "Stack cache: churn and learned depth" "$dir/stack_cache.txt"
fi
if want echo; then
  step "echo in one process: io_uring, epoll, pthread server (echo_load)"
  run_part echo bash -c "set -o pipefail; '$build/bench/echo_load' ${q[*]+"${q[*]}"} | tee '$dir/echo_load.txt'"
  code_block "Echo load (client and server in one process)" "$dir/echo_load.txt"
fi
if want http; then
  step "http under wrk: tendril vs thread per connection"
  secs=10; [[ $quick = 1 ]] && secs=4
  run_part http bash "$root/bench/scripts/http-wrk.sh" --build "$build" --conns 100,1000,10000,50000 \
    --seconds "$secs" --out "$dir"
  [[ -f "$dir/http.md" ]] && { sed 's/^###/##/' "$dir/http.md"; echo; echo "![throughput]($stamp/http-throughput.png) ![p99]($stamp/http-p99.png) ![rss]($stamp/http-rss.png)"; echo; } >>"$md"
fi
if want fanout; then
  step "fanout (scatter-gather) at K = 10 and 100 with 1,000 clients"
  if [[ -x "$build/bench/fanout_load" ]]; then
    run_part fanout "$build/bench/fanout_load" ${q[@]+"${q[@]}"} --markdown "$dir/fanout.md"
    [[ -f "$dir/fanout.md" ]] && { echo "## Fan-out"; echo; cat "$dir/fanout.md"; echo; } >>"$md"
  else
    echo "fanout_load not built: skipped" | tee -a "$md"
  fi
fi
if want idle; then
  step "idle keep-alive connections per GiB (idle_conns)"
  run_part idle "$build/bench/idle_conns" ${q[@]+"${q[@]}"} --markdown "$dir/idle.md"
  [[ -f "$dir/idle.md" ]] && { sed 's/^###/##/' "$dir/idle.md"; echo; } >>"$md"
fi
if want peers; then
  step "skynet and micro-benchmarks on tendril, Go and Boost.Fiber"
  if [[ -f "$root/scripts/bench-peers.sh" ]]; then
    BUILD_DIR="$build" run_part peers bash "$root/scripts/bench-peers.sh" ${q[@]+"${q[@]}"} --markdown "$dir/peers.md"
    [[ -f "$dir/peers.md" ]] && { echo "## Peers: Go and Boost.Fiber"; echo; cat "$dir/peers.md"; echo; } >>"$md"
  else
    echo "scripts/bench-peers.sh missing: skipped" | tee -a "$md"
  fi
fi

echo
echo "================================================================"
echo "results: $md"
echo "charts:  $dir/*.png"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "parts that failed: ${failed[*]}"
  exit 1
fi
