#!/usr/bin/env bash
# tendril next to its peers, Go goroutines and Boost.Fiber, on the
# same micro-benchmarks and the skynet spawn tree, measured one runtime after
# the other on this machine (see bench/peers/README.md for what each case does).
#
#   scripts/bench-peers.sh [--quick] [--only NAME[,NAME...]] [--markdown FILE]
#
#   --quick          5x fewer iterations, 3 repetitions per case, no 1M park
#                    rounds (~1 min once built; a full run takes ~10 min)
#   --only LIST      only these cases (a name without its suffix selects the
#                    family: park = all six park_* cases), passed to every program
#   --markdown FILE  append the table (Markdown) to FILE
#   BUILD_DIR=dir    build directory (default build; relative to the repo)
#
# Builds what is missing: bench/skynet (tendril) and peers/peers_boost_fiber
# with CMake/Ninja in BUILD_DIR (configured like scripts/main-job.sh if it has
# no build.ninja yet), and the Go program with `go build` (offline, no modules)
# into BUILD_DIR/peers/. A peer that is not installed (no `go`, no Boost.Fiber)
# or fails is a row saying so, never a failure of the script. Raw outputs are
# kept in BUILD_DIR/peers/last-<runtime>.txt.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quick=0
markdown=""
only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --only)
      [[ $# -ge 2 ]] || { echo "bench-peers.sh: --only needs a list" >&2; exit 2; }
      only="$2"; shift 2 ;;
    --markdown)
      [[ $# -ge 2 ]] || { echo "bench-peers.sh: --markdown needs a file" >&2; exit 2; }
      markdown="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-peers.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

build="${BUILD_DIR:-build}"
[[ "$build" == /* ]] || build="$root/$build"
peers="$build/peers"
mkdir -p "$peers"
t_start=$SECONDS
say() { printf '== %s\n' "$*" >&2; }

# ---- build -------------------------------------------------------------------------
say "building in $build"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
ninja -C "$build" skynet >/dev/null

notes=()  # printed under the table
boost_state="not installed"
boost_why="Boost.Fiber: not installed (apt-get install libboost-fiber-dev, then re-run)"
if ninja -C "$build" -t targets all 2>/dev/null | grep -q '^peers_boost_fiber:'; then
  if ninja -C "$build" peers_boost_fiber >"$peers/build-boost.log" 2>&1; then
    boost_state=ok
  else
    boost_state="build failed"
    boost_why="Boost.Fiber: build failed, see $peers/build-boost.log"
  fi
fi

go_state="not installed"
go_why="Go: not installed (no go in PATH; apt-get install golang-go)"
if command -v go >/dev/null 2>&1; then
  go_bin="$peers/go_peers"
  go_src="$root/bench/peers/go/main.go"
  if [[ ! -x "$go_bin" || "$go_src" -nt "$go_bin" ]]; then
    if (cd "$root/bench/peers/go" &&
        GOFLAGS=-mod=mod GO111MODULE=off GOCACHE="$peers/go-cache" go build -o "$go_bin" main.go) \
        >"$peers/build-go.log" 2>&1; then
      go_state=ok
    else
      go_state="build failed"
      go_why="Go: build failed, see $peers/build-go.log"
    fi
  else
    go_state=ok
  fi
fi

# ---- run -----------------------------------------------------------------------------
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
say "load average before the run: $load_before on $(nproc) CPUs (other load inflates the times)"

# run <name> <state var> <cmd...>: stdout to last-<name>.txt, progress (stderr) shown indented.
run_peer() {
  local name="$1" state="$2"; shift 2
  local out="$peers/last-$name.txt"
  if [[ "$state" != ok ]]; then
    : >"$out"
    return 0
  fi
  say "$name: $*"
  local rc=0
  # The tendril runtime logs its stack mode at every run(); show it once.
  # (A shell loop, not awk: mawk reads a pipe in blocks and would hold the
  # progress lines back until the program ends.)
  "$@" >"$out" 2> >(seen=0
                    while IFS= read -r line; do
                      if [[ "$line" == "tendril: stacks:"* ]]; then ((seen++)) && continue; fi
                      printf '   %s\n' "$line"
                    done >&2) || rc=$?
  wait  # for the progress filter
  if [[ $rc -ne 0 ]]; then
    echo "   $name exited with status $rc" >&2
    echo "RESULT error exit_$rc -" >>"$out"
  fi
}

q_dash=(); q_flag=()
if [[ $quick == 1 ]]; then q_dash=(-quick); q_flag=(--quick); fi
boost_flag=(${q_flag[@]+"${q_flag[@]}"})
if [[ -n "$only" ]]; then q_dash+=(-only "$only"); q_flag+=(--only "$only"); fi
# Boost.Fiber's skynet keeps 0.3-0.6 M fibers alive with 128 KiB malloc'ed
# stacks: 7-10 GiB resident on this machine. Skip those cases when less than
# 14 GiB is available rather than push other work into the OOM killer.
boost_only=(); boost_skip=""
avail_kb="$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)"
if [[ "$boost_state" == ok && "${avail_kb:-0}" -lt $((14 * 1024 * 1024)) ]]; then
  boost_list=switch,pingpong,spawn_join
  if [[ -n "$only" ]]; then  # the user's list without the skynet cases
    boost_list="$(tr ',' '\n' <<<"$only" | grep -Ev '^(skynet|maxrss)' | paste -sd, || true)"
    [[ -n "$boost_list" ]] || boost_list=none
  fi
  boost_only=(--only "$boost_list")
  boost_skip="skipped"
  notes+=("Boost.Fiber skynet: skipped, $((avail_kb / 1024 / 1024)) GiB available (needs ~14: it keeps 0.3-0.6 M fibers with 128 KiB stacks)")
  say "boost: skipping skynet (low memory)"
fi
run_peer tendril ok "$build/bench/skynet" ${q_flag[@]+"${q_flag[@]}"}
run_peer go "$go_state" "$peers/go_peers" ${q_dash[@]+"${q_dash[@]}"}
# Boost.Fiber gets either the low-memory list or the user's (--only lists add up).
[[ ${#boost_only[@]} -gt 0 ]] || boost_only=(${only:+--only "$only"})
run_peer boost "$boost_state" "$peers/peers_boost_fiber" ${boost_flag[@]+"${boost_flag[@]}"} ${boost_only[@]+"${boost_only[@]}"}
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- table ------------------------------------------------------------------------------
# One row per (benchmark, runtime); peer/tendril > 1: tendril is faster (or,
# for skynet_peak and maxrss, leaner).
env_line="$(hostname -s), $(nproc) CPUs, $(date '+%Y-%m-%d %H:%M'), load $load_before before / $load_after after"
env_line+=", $([[ $quick == 1 ]] && echo --quick || echo full)"
versions="$(for f in tendril go boost; do head -n1 "$peers/last-$f.txt" 2>/dev/null; done | grep -v '^RESULT' | paste -sd'|' | sed 's/|/ | /g')"
[[ "$go_state" == ok ]] || notes+=("$go_why")
[[ "$boost_state" == ok ]] || notes+=("$boost_why")

make_table() {  # $1 = text | md
  awk -v fmt="$1" -v quick="$quick" -v only="$only" -v go_state="$go_state" -v boost_state="$boost_state" -v boost_skip="$boost_skip" '
    FNR == 1 { rt = (FILENAME ~ /last-tendril/) ? "tendril" : (FILENAME ~ /last-go/) ? "go" : "boost" }
    $1 == "RESULT" { val[rt, $2] = $3; unit[$2] = $4; if ($2 == "error") err[rt] = $3 }
    END {
      n = split("switch pingpong_1 pingpong_all pingpong_buffered_1 spawn_join_1 spawn_join_all skynet skynet_join skynet_peak maxrss park_spawn_100k park_wake_100k park_mem_100k park_spawn_1m park_wake_1m park_mem_1m", names, " ")
      what["switch"] = "2 tasks yielding, 1 worker, per switch"
      what["pingpong_1"] = "unbuffered channel round trip, 1 worker"
      what["pingpong_all"] = "unbuffered channel round trip, all workers"
      what["pingpong_buffered_1"] = "channel(2) round trip, 1 worker"
      what["spawn_join_1"] = "spawn + join one empty task, 1 worker"
      what["spawn_join_all"] = "spawn + join one empty task, all workers"
      what["skynet"] = "1M-leaf tree, channel per parent, all workers"
      what["skynet_join"] = "1M-leaf tree, join per child, all workers"
      what["skynet_peak"] = "most skynet tasks spawned, not yet finished"
      what["maxrss"] = "peak RSS of the process (after skynet)"
      what["park_spawn_100k"] = "spawn 100k tasks until all parked on a gate"
      what["park_wake_100k"] = "wake 100k parked tasks (one gate) until done"
      what["park_mem_100k"] = "dRSS + dPTE per parked task, 100k parked"
      what["park_spawn_1m"] = "spawn 1M tasks until all parked on a gate"
      what["park_wake_1m"] = "wake 1M parked tasks (one gate) until done"
      what["park_mem_1m"] = "dRSS + dPTE per parked task, 1M parked"
      split("tendril go boost", rts, " ")
      label["tendril"] = "tendril"; label["go"] = "Go"; label["boost"] = "Boost.Fiber"
      state["tendril"] = "ok"; state["go"] = go_state; state["boost"] = boost_state
      if (fmt == "md") {
        print "| benchmark | what | runtime | value | unit | peer/tendril |"
        print "|---|---|---|---:|---|---:|"
      } else {
        printf "%-20s %-45s %-12s %12s %-6s %s\n", "benchmark", "what", "runtime", "value", "unit", "peer/tendril"
        printf "%-20s %-45s %-12s %12s %-6s %s\n", "---------", "----", "-------", "-----", "----", "------------"
      }
      for (i = 1; i <= n; ++i) {
        b = names[i]
        if (only != "" && !(("tendril", b) in val) && !(("go", b) in val) && !(("boost", b) in val)) continue
        for (j = 1; j <= 3; ++j) {
          r = rts[j]
          u = unit[b]; ratio = ""
          if (state[r] != "ok") { v = state[r]; u = "" }
          else if ((r, b) in val) {
            v = val[r, b]
            if (r != "tendril" && ((("tendril", b) in val)) && val["tendril", b] > 0)
              ratio = sprintf("%.2fx", v / val["tendril", b])
          } else if (r in err) { v = "failed"; u = "" }
          else if (r == "boost" && boost_skip != "" && b ~ /^(skynet|maxrss)/) { v = boost_skip; u = "" }
      else if (quick && b ~ /_1m$/) { v = "(--quick)"; u = "" }
          else { v = "n/a"; u = "" }
          if (fmt == "md")
            printf "| %s | %s | %s | %s | %s | %s |\n", (j == 1 ? b : ""), (j == 1 ? what[b] : ""), label[r], v, u, ratio
          else
            printf "%-20s %-45s %-12s %12s %-6s %s\n", (j == 1 ? b : ""), (j == 1 ? what[b] : ""), label[r], v, u, ratio
        }
      }
    }' "$peers/last-tendril.txt" "$peers/last-go.txt" "$peers/last-boost.txt"
}

echo
echo "tendril vs Go vs Boost.Fiber -- $env_line"
echo "$versions"
echo "Units: ns per switch / round trip / task, ms per skynet tree, B per parked task. peer/tendril > 1: tendril is faster (leaner)."
echo
make_table text
for n in ${notes[@]+"${notes[@]}"}; do echo "note: $n"; done

if [[ -n "$markdown" ]]; then
  mkdir -p "$(dirname "$markdown")"
  {
    echo
    echo "## tendril vs Go vs Boost.Fiber, $(date '+%Y-%m-%d %H:%M')"
    echo
    echo "$env_line."
    echo "$versions."
    echo "Units: ns per switch / round trip / task, ms per skynet tree, B per parked task; each value the median of the repetitions."
    echo "peer/tendril > 1 means tendril is faster (for skynet_peak, maxrss and park_mem: leaner). Produced by scripts/bench-peers.sh."
    echo
    make_table md
    for n in ${notes[@]+"${notes[@]}"}; do echo; echo "Note: $n"; done
  } >>"$markdown"
  echo >&2
  say "appended the table to $markdown"
fi

fail=0
if grep -q '^RESULT error' "$peers/last-tendril.txt"; then
  say "tendril failed: see $peers/last-tendril.txt"
  fail=1
fi
say "done in $((SECONDS - t_start)) s; raw outputs in $peers/last-*.txt"
exit $fail
