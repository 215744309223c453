#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, clang) with ASan+UBSan, of the targets in
# fuzz/: builds them in build-fuzz/ and runs each for a bounded time, starting
# from its committed seed corpus (fuzz/corpus/<target>/) plus what earlier runs
# found (build-fuzz/corpus/<target>/, not committed). A crash, a sanitizer
# report, a hang or an out-of-memory stops that target with its input saved in
# build-fuzz/artifacts/; the script then exits non-zero.
#
#   bash scripts/fuzz.sh            # every target, 15 s each (CI: about a minute)
#   bash scripts/fuzz.sh 600        # every target, 10 minutes each
#   bash scripts/fuzz.sh 300 http_session_fuzz   # one target
#
# Reproduce a finding: build-fuzz/fuzz/<target> build-fuzz/artifacts/<target>/crash-...
# Dependencies: clang and libclang-rt-14-dev (scripts/install-deps.sh).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
secs="${1:-15}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(http_session_fuzz fanout_lines_fuzz options_env_fuzz spawn_options_fuzz)
fi

if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ is needed: bash scripts/install-deps.sh" >&2
  exit 1
fi

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S "$root" -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DTENDRIL_FUZZ=ON -DTENDRIL_SANITIZE=address \
  -DTENDRIL_LTO=OFF -DTENDRIL_BUILD_TESTS=OFF -DTENDRIL_BUILD_BENCH=OFF -DTENDRIL_BUILD_SAMPLES=ON \
  "${launcher[@]}" >build-fuzz.configure.log 2>&1 || { cat build-fuzz.configure.log; exit 1; }
rm -f build-fuzz.configure.log
cmake --build build-fuzz --target "${targets[@]}" || exit 1

export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# Fibers keep heap pointers on their own stacks, which LeakSanitizer does not
# scan: it would report every live fiber's allocations (the runtime targets
# turn it off).
declare -A extra=(
  [http_session_fuzz]="-max_len=4096"
  [fanout_lines_fuzz]="-max_len=9000 -detect_leaks=0 -timeout=30"
  [options_env_fuzz]="-max_len=512"
  [spawn_options_fuzz]="-max_len=256 -detect_leaks=0 -rss_limit_mb=8192"
)

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/artifacts/$t"
  log="build-fuzz/$t.log"
  echo "fuzz.sh: $t for ${secs}s (log: $log)"
  asan="${ASAN_OPTIONS:-}"
  [[ " ${extra[$t]:-} " = *" -detect_leaks=0 "* ]] && asan="detect_leaks=0${asan:+:$asan}"
  # spawn_options_fuzz runs in pieces of at most 20 s: under ASan its RSS
  # grows by about 1 MB per input (shadow memory of the fiber stacks; the same
  # spawns in the release build stay flat), which would reach libFuzzer's RSS
  # limit in a long run.
  # Each piece starts from the seed corpus only (loading a large corpus alone
  # costs gigabytes of shadow).
  chunk=$secs
  corpus="build-fuzz/corpus/$t"
  if [[ $t = spawn_options_fuzz ]]; then
    [[ $chunk -gt 20 ]] && chunk=20
    corpus="build-fuzz/corpus/$t.piece"
  fi
  left=$secs
  rc=0
  execs=0
  : >"$log"
  while [[ $left -gt 0 && $rc -eq 0 ]]; do
    run=$((left < chunk ? left : chunk))
    [[ $corpus = *.piece ]] && rm -rf "$corpus" && mkdir -p "$corpus"
    # shellcheck disable=SC2086
    ASAN_OPTIONS="$asan" build-fuzz/fuzz/"$t" -max_total_time="$run" -print_final_stats=1 \
      -artifact_prefix="build-fuzz/artifacts/$t/" ${extra[$t]:-} "$corpus" "fuzz/corpus/$t" >>"$log" 2>&1
    rc=$?
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=$((execs + ${n:-0}))
    left=$((left - run))
  done
  cov=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 | sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\).*/\1 edges, \2 features/p')
  line=$(printf '%-20s %10s execs  %s' "$t" "${execs:-?}" "${cov:-?}")
  if [[ $rc -ne 0 ]]; then
    failed+=("$t")
    line+="  FAILED (exit $rc; see $log and build-fuzz/artifacts/$t/)"
    grep -E 'ERROR|SUMMARY|_fuzz:' "$log" | head -5
  fi
  summary+=("$line")
done
echo
printf '  %s\n' "${summary[@]}"
if [[ ${#failed[@]} -ne 0 ]]; then
  echo "fuzz.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz.sh: all targets ran clean"
