#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. release  build/       Release, benchmarks and samples built, full ctest
#   2. asan     build-asan/  ASan+UBSan, samples built, ctest -LE no-asan
#   3. tsan     build-tsan/  TSan,       ctest -LE no-tsan
#   4. kernels  build-kernels/  scripts/test-kernels.sh: a TCG-sized subset on
#                Debian 12's 6.1 kernel in a two-node qemu guest (about 6 min);
#                only when TENDRIL_TEST_KERNELS=1, which .ci/run sets
#   5. fuzz     build-fuzz/  libFuzzer (clang) + ASan+UBSan, every fuzz/ target
#                            for TENDRIL_FUZZ_SECONDS (default 15) each
# Every pass runs even if an earlier one failed; a summary comes at the end and
# the exit status is non-zero if any step failed.
#
# Environment:
#   TENDRIL_TEST_FAST=1   only the release pass (skip the sanitizer passes)
#   TENDRIL_TEST_JOBS=N   ctest parallelism (default 2)
#   TENDRIL_TEST_KERNELS=1  also run scripts/test-kernels.sh (CI does)
#   TENDRIL_TEST_FUZZ=0   skip the fuzz pass
# Dependencies: bash scripts/install-deps.sh
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
jobs="${TENDRIL_TEST_JOBS:-2}"
fast="${TENDRIL_TEST_FAST:-0}"
export CTEST_OUTPUT_ON_FAILURE=1
# Sanitizer reports: stack traces, and stop at the first UBSan finding.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  echo "test.sh: cmake and ninja are needed: bash scripts/install-deps.sh" >&2
  exit 1
fi

summary=()
failed=0
start_all=$SECONDS

# run_pass NAME BUILD_DIR "CTEST ARGS" [CMAKE ARGS...]
# CTEST ARGS may start with "setarch" to run ctest without ASLR (see tsan_prefix).
run_pass() {
  local name="$1" dir="$2" ctest_args="$3"
  shift 3
  local t0=$SECONDS status="ok" step
  echo
  echo "################################################################"
  echo "## $name: $dir"
  echo "################################################################"
  step="configure"
  if cmake -S "$root" -B "$dir" -G Ninja "$@"; then
    step="build"
    if cmake --build "$dir"; then
      step="test"
      local -a cargs
      read -r -a cargs <<<"$ctest_args"
      local -a runner=()
      if [[ "$name" = tsan && ${#tsan_prefix[@]} -gt 0 ]]; then
        runner=("${tsan_prefix[@]}")
      fi
      if "${runner[@]}" ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 600 "${cargs[@]}"; then
        step=""
      fi
    fi
  fi
  local secs=$((SECONDS - t0))
  if [[ -n "$step" ]]; then
    status="FAILED ($step)"
    failed=1
  fi
  summary+=("$(printf '%-8s %-16s %5ds  %s' "$name" "$dir/" "$secs" "$status")")
}

# TSan (GCC 12) cannot map its shadow memory when the kernel randomizes mmap
# with more bits than it expects (vm.mmap_rnd_bits > 28 on newer kernels):
# every TSan binary then dies with "unexpected memory mapping". If a probe
# program hits that, run the TSan tests with ASLR off (setarch -R).
tsan_prefix=()
probe_tsan() {
  local tmp
  tmp="$(mktemp -d)"
  printf 'int main() { return 0; }\n' >"$tmp/p.cpp"
  if c++ -fsanitize=thread "$tmp/p.cpp" -o "$tmp/p" 2>/dev/null && ! "$tmp/p" >/dev/null 2>&1; then
    if setarch "$(uname -m)" -R "$tmp/p" >/dev/null 2>&1; then
      echo "test.sh: TSan needs ASLR off on this kernel; running the TSan tests under setarch -R"
      tsan_prefix=(setarch "$(uname -m)" -R)
    fi
  fi
  rm -rf "$tmp"
}

# Warnings are errors here (CI runs this script); a plain build only warns.
run_pass release build "" \
  -DCMAKE_BUILD_TYPE=Release -DTENDRIL_BUILD_TESTS=ON -DTENDRIL_BUILD_BENCH=ON -DTENDRIL_BUILD_SAMPLES=ON \
  -DTENDRIL_WERROR=ON

if [[ "$fast" = 1 ]]; then
  summary+=("$(printf '%-8s %-16s %5s   %s' asan build-asan/ - "skipped (TENDRIL_TEST_FAST=1)")")
  summary+=("$(printf '%-8s %-16s %5s   %s' tsan build-tsan/ - "skipped (TENDRIL_TEST_FAST=1)")")
else
  run_pass asan build-asan "-LE no-asan" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTENDRIL_SANITIZE=address \
    -DTENDRIL_BUILD_BENCH=OFF -DTENDRIL_BUILD_SAMPLES=ON -DTENDRIL_WERROR=ON
  probe_tsan
  run_pass tsan build-tsan "-LE no-tsan" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTENDRIL_SANITIZE=thread \
    -DTENDRIL_BUILD_BENCH=OFF -DTENDRIL_BUILD_SAMPLES=OFF -DTENDRIL_WERROR=ON
fi

if [[ "${TENDRIL_TEST_KERNELS:-0}" = 1 ]]; then
  t0=$SECONDS
  echo
  echo "################################################################"
  echo "## kernels: scripts/test-kernels.sh (Linux 6.1, two NUMA nodes, qemu)"
  echo "################################################################"
  status="ok"
  if ! bash "$root/scripts/test-kernels.sh"; then
    status="FAILED"
    failed=1
  fi
  summary+=("$(printf '%-8s %-16s %5ds  %s' kernels build-kernels/ "$((SECONDS - t0))" "$status")")
fi

if [[ "$fast" = 1 || "${TENDRIL_TEST_FUZZ:-1}" = 0 ]]; then
  summary+=("$(printf '%-8s %-16s %5s   %s' fuzz build-fuzz/ - "skipped")")
else
  echo
  echo "################################################################"
  echo "## fuzz: build-fuzz"
  echo "################################################################"
  t0=$SECONDS
  if bash scripts/fuzz.sh "${TENDRIL_FUZZ_SECONDS:-15}"; then fstatus=ok; else fstatus=FAILED; failed=1; fi
  summary+=("$(printf '%-8s %-16s %5ds  %s' fuzz build-fuzz/ "$((SECONDS - t0))" "$fstatus")")
fi

echo
echo "================================================================"
echo "tendril test summary ($((SECONDS - start_all))s)"
printf '  %s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
  echo "RESULT: FAILED"
  echo "================================================================"
  exit 1
fi
echo "RESULT: all passes OK"
echo "================================================================"
