#!/usr/bin/env bash
# http under wrk: tendril's http sample against its thread-per-connection twin
# (build/samples/http-pthread), one after the other on the same machine, at
# several connection counts. For each run: requests/s, p99 latency (wrk
# --latency), and the server's peak RSS (VmHWM) and thread count.
#
#   bash bench/scripts/http-wrk.sh [--build DIR] [--conns 100,1000,10000,50000]
#        [--seconds 10] [--path /] [--out DIR] [--split]
#
# --split gives the server the first half of the CPUs and wrk the other half
# (taskset; tendril starts one worker per CPU of its mask), so the load
# generator does not compete with the server for the same CPUs. Without it
# both share every CPU. Needs at least 2 CPUs (else it falls back, saying so).
#
# Writes DIR/http.md (a Markdown table), DIR/http.dat and, with gnuplot,
# DIR/http-throughput.png, DIR/http-p99.png and DIR/http-rss.png. Levels that
# this machine cannot run (descriptor limit, threads) are rows that say why.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$root/build"
conns_list="100,1000,10000,50000"
seconds=10
path="/"
out=""
split=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --conns) conns_list="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --path) path="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --split) split=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "http-wrk.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$out" ]] || out="$root/bench/results/http-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
for b in http http-pthread; do
  [[ -x "$build/samples/$b" ]] || { echo "http-wrk.sh: $build/samples/$b not built" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "http-wrk.sh: wrk not installed (apt-get install wrk)" >&2; exit 1; }

# Both processes (wrk and the server) need a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
hard_fds=$(ulimit -Hn)
[[ "$hard_fds" = unlimited ]] && hard_fds=100000000
max_maps=$(cat /proc/sys/vm/max_map_count)
threads_max=$(cat /proc/sys/kernel/threads-max)
cpus=$(nproc)
server_pin=(); wrk_pin=(); wrk_cpus=$cpus; placement="$cpus CPUs shared by wrk and the server"
if [[ $split = 1 ]]; then
  mapfile -t allowed < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' | awk -F- '{ if (NF == 2) for (i = $1; i <= $2; i++) print i; else print $1 }')
  if (( ${#allowed[@]} >= 2 )); then
    half=$(( ${#allowed[@]} / 2 ))
    server_set=$(IFS=,; echo "${allowed[*]:0:half}")
    wrk_set=$(IFS=,; echo "${allowed[*]:half}")
    server_pin=(taskset -c "$server_set"); wrk_pin=(taskset -c "$wrk_set")
    wrk_cpus=$(( ${#allowed[@]} - half ))
    placement="server on CPU(s) $server_set, wrk on CPU(s) $wrk_set (--split)"
  else
    echo "http-wrk.sh: --split needs 2 CPUs; running shared" >&2
  fi
fi

server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill -9 "$server_pid" 2>/dev/null; server_pid=""; }
trap cleanup EXIT

# start_server BIN -> sets server_pid and port
start_server() {
  local log="$out/$1.log"
  ${server_pin[@]+"${server_pin[@]}"} "$build/samples/$1" --port 0 --idle-timeout-ms 0 >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$log" | head -1)
    [[ -n "$port" ]] && return 0
    sleep 0.05
  done
  echo "http-wrk.sh: $1 did not start:" >&2; cat "$log" >&2; exit 1
}
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
status_kib() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Why a level cannot run here, or empty.
cannot_run() {
  local bin=$1 c=$2
  if (( c + 64 > hard_fds )); then
    echo "cannot run: $c connections need $c descriptors in one process; RLIMIT_NOFILE hard limit here is $hard_fds"
    return
  fi
  if [[ $bin = http-pthread ]]; then
    if (( 2 * c + 1000 > max_maps )); then
      echo "cannot run: a thread per connection needs 2 mappings each (stack + guard): $((2 * c)) > vm.max_map_count $max_maps"
      return
    fi
    if (( c + 100 > threads_max )); then
      echo "cannot run: $c threads > kernel.threads-max $threads_max"
      return
    fi
  fi
}

# sample_peaks PID FILE: until killed, keeps FILE holding the peaks seen so far
# of the server's thread count and page tables (VmPTE, KiB) and the system's
# KernelStack (KiB: 16 KiB per thread, which RSS does not show).
sample_peaks() {
  local pid=$1 file=$2 th=0 pte=0 ks=0 v
  trap 'echo "$th $pte $ks" >"$file"; exit 0' TERM
  while kill -0 "$pid" 2>/dev/null; do
    v=$(status_kib "$pid" Threads); (( v > th )) && th=$v
    v=$(status_kib "$pid" VmPTE); (( v > pte )) && pte=$v
    v=$(awk '/^KernelStack:/ {print $2}' /proc/meminfo); (( v > ks )) && ks=$v
    echo "$th $pte $ks" >"$file"
    sleep 0.2
  done
}

# to_ms "1.23ms" -> 1.23
to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

dat="$out/http.dat"
echo "# conns runtime req_per_s p99_ms rss_mib threads errors all_in_mib" >"$dat"
IFS=, read -r -a levels <<<"$conns_list"
total=$(( ${#levels[@]} * 2 )); n=0
declare -A R P M A T E W
for c in "${levels[@]}"; do
  for bin in http http-pthread; do
    n=$((n + 1))
    why=$(cannot_run "$bin" "$c")
    if [[ -n "$why" ]]; then
      echo "[$n/$total] $bin at $c connections: $why"
      W[$bin,$c]="$why"
      continue
    fi
    printf '[%d/%d] %-12s %6d connections, %ss ... ' "$n" "$total" "$bin" "$c" "$seconds"
    start_server "$bin"
    threads=$(( c < 2 * wrk_cpus ? c : 2 * wrk_cpus ))
    kstack0=$(awk '/^KernelStack:/ {print $2}' /proc/meminfo)
    sample_peaks "$server_pid" "$out/peaks-$bin-$c.txt" &
    sampler=$!
    timeout $((seconds + 60)) ${wrk_pin[@]+"${wrk_pin[@]}"} wrk -t"$threads" -c"$c" -d"${seconds}s" --timeout 10s --latency \
      "http://127.0.0.1:$port$path" >"$out/wrk-$bin-$c.txt" 2>&1 || true
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    rss_kib=$(status_kib "$server_pid" VmHWM)
    read -r nthreads pte_kib kstack_kib <"$out/peaks-$bin-$c.txt" || { nthreads=0; pte_kib=0; kstack_kib=$kstack0; }
    kstack_delta=$(( kstack_kib > kstack0 ? kstack_kib - kstack0 : 0 ))
    all_kib=$(( rss_kib + pte_kib + kstack_delta ))
    stop_server
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out/wrk-$bin-$c.txt")
    p99=$(awk '$1=="99%" {print $2}' "$out/wrk-$bin-$c.txt")
    errs=$(awk '/Socket errors:/ {gsub(",", ""); s=0; for (i=3;i<=NF;i+=2) s+=$(i+1); print s} /Non-2xx/ {print $NF}' \
             "$out/wrk-$bin-$c.txt" | awk '{s+=$1} END {print s+0}')
    if [[ -z "$rps" || -z "$p99" ]]; then
      echo "wrk failed (see $out/wrk-$bin-$c.txt)"
      W[$bin,$c]="wrk failed: $(tail -1 "$out/wrk-$bin-$c.txt")"
      continue
    fi
    R[$bin,$c]=$rps; P[$bin,$c]=$(to_ms "$p99"); M[$bin,$c]=$(awk -v k="$rss_kib" 'BEGIN{printf "%.1f", k/1024}')
    A[$bin,$c]=$(awk -v k="$all_kib" 'BEGIN{printf "%.1f", k/1024}')
    T[$bin,$c]=$nthreads; E[$bin,$c]=$errs
    echo "$c $bin $rps ${P[$bin,$c]} ${M[$bin,$c]} $nthreads $errs ${A[$bin,$c]}" >>"$dat"
    printf '%10.0f req/s  p99 %8.2f ms  RSS %7.1f MiB  all-in %7.1f MiB  %5d threads  %s errors\n' \
      "$rps" "${P[$bin,$c]}" "${M[$bin,$c]}" "${A[$bin,$c]}" "$nthreads" "$errs"
  done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }
md="$out/http.md"
{
  echo "### http under wrk: tendril vs thread per connection"
  echo
  echo "\`wrk -t<min(conns, 2×CPUs)> -c<conns> -d${seconds}s --latency http://127.0.0.1:<port>$path\`, one server at a time," \
       "$placement. RSS is the server's peak (VmHWM); all-in adds its peak page tables" \
       "(VmPTE) and the growth of the kernel's KernelStack during the run (16 KiB per thread, not in RSS)."
  echo
  echo "| connections | tendril req/s | pthread req/s | throughput ratio | tendril p99 ms | pthread p99 ms | tendril RSS MiB | pthread RSS MiB | tendril all-in MiB | pthread all-in MiB | memory ratio (all-in, pthread/tendril) | pthread threads |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in "${levels[@]}"; do
    t="${R[http,$c]:-}"; p="${R[http-pthread,$c]:-}"
    if [[ -z "$t" && -z "$p" ]]; then
      echo "| $c | ${W[http,$c]:-} | ${W[http-pthread,$c]:-} | | | | | | | | | |"
      continue
    fi
    echo "| $c | ${t:-${W[http,$c]:-}} | ${p:-${W[http-pthread,$c]:-}} | $(ratio "$t" "$p") | ${P[http,$c]:-} | ${P[http-pthread,$c]:-} |" \
         "${M[http,$c]:-} | ${M[http-pthread,$c]:-} | ${A[http,$c]:-} | ${A[http-pthread,$c]:-} |" \
         "$(ratio "${A[http-pthread,$c]:-}" "${A[http,$c]:-}") | ${T[http-pthread,$c]:-} |"
  done
  echo
  echo "Socket errors and non-2xx responses (wrk): $(for c in "${levels[@]}"; do printf '%s: %s/%s  ' "$c" "${E[http,$c]:--}" "${E[http-pthread,$c]:--}"; done)"
} >"$md"

echo
cat "$md"

if command -v gnuplot >/dev/null; then
  for what in throughput:3:"requests/s" p99:4:"p99 latency (ms)" rss:8:"server memory, all-in (MiB)"; do
    IFS=: read -r name col label <<<"$what"
    gnuplot <<GP 2>/dev/null || echo "note: gnuplot failed for $name"
set terminal pngcairo size 800,480 noenhanced
set output "$out/http-$name.png"
set title "http under wrk: $label"
set xlabel "connections"
set ylabel "$label"
set logscale x
set key top left
set grid
plot "< awk '\$2==\"http\"' $dat" using 1:$col with linespoints lw 2 pt 7 title "tendril", \
     "< awk '\$2==\"http-pthread\"' $dat" using 1:$col with linespoints lw 2 pt 5 title "thread per connection"
GP
  done
  echo "charts: $out/http-throughput.png $out/http-p99.png $out/http-rss.png"
else
  echo "note: gnuplot not installed; no charts (apt-get install gnuplot-nox)"
fi
