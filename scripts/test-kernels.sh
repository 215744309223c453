#!/usr/bin/env bash
# Runs a TCG-sized subset of the test suite on Debian 12's stock kernel (6.1)
# in a qemu guest with two NUMA nodes, in both stack modes (uffd, kernel) and
# both I/O backends (uring, epoll), and prints a summary. Exit status non-zero
# if any test fails (or the guest does not come back with results).
#
#   bash scripts/test-kernels.sh              # build if needed, boot, test
#   TENDRIL_KERNELS_FILTER='stack_* numa' bash scripts/test-kernels.sh   # only these suites
#
# No /dev/kvm is needed: the guest runs under TCG (10-20x slower than the
# host), which is why only a subset runs and no timing is trusted. Placement
# is real in the guest, though: two memory backends, one per node.
#
# How it works: the host's / is the guest's root, read-only over virtio-9p,
# so the binaries built here run unchanged. A second, writable 9p share
# (a fresh directory on the host) carries the guest's command script in and
# the logs and results out. A tiny initramfs (busybox-static and the kernel's
# virtio/9p modules) mounts both, chroots into the host's root and runs the
# script, then powers off.
#
# Cached between runs (TENDRIL_KERNELS_CACHE, default ~/.cache/tendril-kernels):
# the unpacked kernel package and the initramfs. Build: build-kernels/
# (Release, no LTO; TENDRIL_KERNELS_BUILD to change).
#
# Environment:
#   TENDRIL_KERNELS_CACHE    cache directory (kernel + initramfs)
#   TENDRIL_KERNELS_BUILD    build directory (default build-kernels)
#   TENDRIL_KERNELS_PACKAGE  kernel package (default: what linux-image-amd64 depends on)
#   TENDRIL_KERNELS_FILTER   shell globs over suite names, space-separated (default: all)
#   TENDRIL_KERNELS_TIMEOUT  seconds the whole guest run may take (default 1800)
#   TENDRIL_KERNELS_KEEP=1   keep the results directory (printed at the end)
#   TENDRIL_KERNELS_EXTRA    shell commands to run in the guest after the suites
#                            (from the build directory; output in extra.log,
#                            printed at the end), for measurements
# Needs: qemu-system-x86 and busybox-static (installed here when missing and
# running as root), apt-get (for the kernel package), cmake, ninja.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
cache="${TENDRIL_KERNELS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tendril-kernels}"
build="${TENDRIL_KERNELS_BUILD:-$root/build-kernels}"
[[ "$build" = /* ]] || build="$root/$build"
filter="${TENDRIL_KERNELS_FILTER:-*}"
timeout_s="${TENDRIL_KERNELS_TIMEOUT:-1800}"
start_all=$SECONDS

die() { echo "test-kernels: $*" >&2; exit 1; }
say() { echo "== test-kernels: $*"; }

# ---- the suites run in the guest -------------------------------------------
# name|binary (relative to the build dir)|gtest filter|axes
# axes: "mode" runs the suite once per stack mode (TENDRIL_STACK_MODE), "io"
# once per I/O backend (TENDRIL_IO); a suite that covers an axis itself
# (stack_arena: both stack modes; net_tcp, stack_compact: both backends) is
# not run per value. stack_compact: idle-stack compaction needs UFFDIO_MOVE
# (6.8+), so on this kernel it checks that compaction is off and says so.
# Sized for TCG: the whole of every stack suite (the code that depends most on
# the kernel), the scheduler, sync and I/O semantics, without the stress tests
# that scale with the machine. numa_test needs two real nodes: it skips itself
# on one node and runs here.
suites=(
  "stack_arena|tests/stack_arena_test|*|io"
  "stack_fiber|tests/stack_fiber_test|*|mode io"
  "stack_cache|tests/stack_cache_test|*|mode io"
  "stack_compact|tests/stack_compact_test|*|mode"
  "numa|tests/numa_test|*|mode io"
  "fiber|tests/fiber_test|*|mode io"
  "sync|tests/sync_test|*:-*Stress*:*stress*|mode io"
  "channel|tests/channel_test|*:-*Stress*:*stress*|mode io"
  "io_fd|tests/io_fd_test|*|mode io"
  "net_tcp|tests/net_tcp_test|*|mode"
  "misuse|tests/misuse_test|*|mode io"
)
modes=(uffd kernel)
ios=(uring epoll)

# ---- dependencies -------------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
[[ "$(dpkg-query -W -f='${db:Status-Status}' busybox-static 2>/dev/null)" = installed ]] || need_pkgs+=(busybox-static)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
  [[ $(id -u) -eq 0 ]] || die "needs ${need_pkgs[*]}: apt-get install ${need_pkgs[*]} (as root)"
  say "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 install -y --no-install-recommends "${need_pkgs[@]}" </dev/null \
    || { apt-get -o Dpkg::Use-Pty=0 update && DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 install -y \
           --no-install-recommends "${need_pkgs[@]}" </dev/null; } || die "could not install ${need_pkgs[*]}"
fi

# ---- build ------------------------------------------------------------------------
say "building in $build"
if [[ ! -f "$build/build.ninja" ]]; then
  launcher=()
  if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTENDRIL_LTO=OFF \
    -DTENDRIL_BUILD_BENCH=ON -DTENDRIL_BUILD_SAMPLES=OFF "${launcher[@]}" >/dev/null || die "configure failed"
fi
targets=()
for s in "${suites[@]}"; do
  IFS='|' read -r name bin _ _ <<<"$s"
  targets+=("$(basename "$bin")")
done
cmake --build "$build" --target "${targets[@]}" stack_cache -- -j"${TENDRIL_KERNELS_JOBS:-2}" \
  || die "build failed"

# ---- kernel and initramfs (cached) -------------------------------------------------
mkdir -p "$cache"
pkg="${TENDRIL_KERNELS_PACKAGE:-}"
if [[ -z "$pkg" ]]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [[ -z "$pkg" ]]; then
    # No package index yet: use what is cached, else refresh the index once.
    pkg=$(cd "$cache" && ls -d linux-image-* 2>/dev/null | grep -v '\.' | sort -V | tail -1)
    if [[ -z "$pkg" ]]; then
      apt-get -o Dpkg::Use-Pty=0 update >/dev/null || die "apt-get update failed"
      pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
  fi
fi
[[ -n "$pkg" ]] || die "cannot tell which kernel package linux-image-amd64 means"
kdir="$cache/$pkg"
kver="${pkg#linux-image-}"
if [[ ! -f "$kdir/.complete" ]]; then
  say "downloading $pkg"
  rm -rf "$kdir" "$cache/dl"
  mkdir -p "$cache/dl" "$kdir"
  (cd "$cache/dl" && apt-get -q -o APT::Sandbox::User=root download "$pkg") || die "apt-get download $pkg failed"
  dpkg -x "$cache"/dl/*.deb "$kdir" || die "dpkg -x failed"
  rm -rf "$cache/dl"
  touch "$kdir/.complete"
fi
vmlinuz="$kdir/boot/vmlinuz-$kver"
[[ -f "$vmlinuz" ]] || die "no $vmlinuz in $pkg"

# Loaded in this order (each depends on the ones before).
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p)
initrd="$cache/initramfs-$kver.cpio.gz"
init_src="$(dirname "${BASH_SOURCE[0]}")/test-kernels-init.sh"
if [[ ! -f "$initrd" || "$init_src" -nt "$initrd" ]]; then
  say "building $initrd"
  ird="$(mktemp -d)"
  mkdir -p "$ird"/{bin,dev,proc,sys,mnt,lib/modules}
  cp /bin/busybox "$ird/bin/busybox"
  ln -s busybox "$ird/bin/sh"
  for m in "${modules[@]}"; do
    f=$(find "$kdir/lib/modules/$kver" -name "$m.ko*" | head -1)
    [[ -n "$f" ]] || die "module $m not in $pkg"
    case "$f" in
      *.xz) xz -dc "$f" >"$ird/lib/modules/$m.ko" ;;
      *.zst) zstd -qdc "$f" >"$ird/lib/modules/$m.ko" ;;
      *) cp "$f" "$ird/lib/modules/$m.ko" ;;
    esac
  done
  printf '%s\n' "${modules[@]}" >"$ird/lib/modules/order"
  cp "$init_src" "$ird/init"
  chmod +x "$ird/init"
  (cd "$ird" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$initrd.tmp" && mv "$initrd.tmp" "$initrd" \
    || die "cpio failed"
  rm -rf "$ird"
fi

# selected NAME: NAME matches one of the globs in TENDRIL_KERNELS_FILTER.
selected() {
  local g globs
  read -r -a globs <<<"$filter"  # no pathname expansion, unlike an unquoted $filter
  for g in "${globs[@]}"; do
    # shellcheck disable=SC2053
    [[ "$1" == $g ]] && return 0
  done
  return 1
}

# ---- the guest's command script ------------------------------------------------------
out="$(mktemp -d "${TMPDIR:-/tmp}/tendril-kernels.XXXXXX")"
chmod 777 "$out"
{
  echo "#!/bin/sh"
  echo "# Written by scripts/test-kernels.sh; runs in the guest, chrooted into the host's root."
  echo "out=/tmp/out"
  echo "cd '$build' || exit 1"
  echo "{ echo \"kernel \$(uname -r), \$(nproc) CPUs\"; for n in /sys/devices/system/node/node[0-9]*; do echo \"\${n##*/}: cpus \$(cat \$n/cpulist), \$(grep MemTotal \$n/meminfo | awk '{print \$4, \$5}')\"; done; } >\$out/guest-info.txt 2>&1"
  # 100k parked fibers instead of a million: a million top pages are 4 GiB,
  # the guest's whole memory.
  echo "export TENDRIL_PIN=1 GTEST_COLOR=no STACK_FIBER_PARKED=100000"
  echo "ulimit -n 65536"
  for s in "${suites[@]}"; do
    IFS='|' read -r name bin gfilter axes <<<"$s"
    selected "$name" || continue
    smodes=(-) sios=(-)
    [[ "$axes" == *mode* ]] && smodes=("${modes[@]}")
    [[ "$axes" == *io* ]] && sios=("${ios[@]}")
    for mode in "${smodes[@]}"; do
      for io in "${sios[@]}"; do
        tag="$name.${mode/-/both}.${io/-/both}"
        menv=""
        [[ "$mode" != - ]] && menv+=" TENDRIL_STACK_MODE=$mode"
        [[ "$io" != - ]] && menv+=" TENDRIL_IO=$io"
        echo "t0=\$(date +%s)"
        echo "env$menv ./$bin --gtest_filter='$gfilter' >\$out/$tag.log 2>&1"
        echo "rc=\$?; echo \"$tag \$rc \$((\$(date +%s) - t0))\" >>\$out/results.txt"
      done
    done
  done
  # Where stack growth pages land, by fault placement (the default on two
  # nodes, "faulter", is in the numa suite above): the handler on the slot
  # owner's node, and per-worker page pools (TENDRIL_STACK_FILL=move, which
  # needs UFFDIO_MOVE, Linux 6.8+: it says so and falls back to UFFDIO_COPY).
  if selected numa; then
    for v in "TENDRIL_STACK_PLACE=owner" "TENDRIL_STACK_FILL=move"; do
      echo "env TENDRIL_STACK_MODE=uffd $v ./tests/numa_test --gtest_filter='RealNumaRun.*' >\$out/placement.${v#*=}.log 2>&1"
    done
  fi
  # Placement and cache counters of the NUMA cache benchmark, on the real
  # topology (its timings mean nothing under TCG).
  if selected stack_cache_bench; then
    echo "TENDRIL_IO=epoll ./bench/stack_cache --quick >\$out/stack_cache_bench.log 2>&1"
    echo "echo \"stack_cache_bench \$? 0\" >>\$out/bench.txt"
  fi
  if [[ -n "${TENDRIL_KERNELS_EXTRA:-}" ]]; then
    echo "( $TENDRIL_KERNELS_EXTRA ) >\$out/extra.log 2>&1"
  fi
  echo "echo done >\$out/done"
} >"$out/run.sh"
chmod +x "$out/run.sh"
echo "$build" >"$out/build_path"  # mounted there by the guest's init (test-kernels-init.sh)

# ---- boot ---------------------------------------------------------------------------
say "booting $kver (2 NUMA nodes, 4 CPUs, TCG), results in $out"
t_boot=$SECONDS
timeout --foreground "$timeout_s" qemu-system-x86_64 \
  -machine q35 -accel tcg,thread=multi -cpu max -smp 4 -m 4G \
  -object memory-backend-ram,id=m0,size=2G -object memory-backend-ram,id=m1,size=2G \
  -numa node,nodeid=0,cpus=0-1,memdev=m0 -numa node,nodeid=1,cpus=2-3,memdev=m1 \
  -kernel "$vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$out",mount_tag=out,security_model=none,multidevs=remap \
  -virtfs local,path="$build",mount_tag=build,security_model=none,readonly=on,multidevs=remap \
  -nographic -no-reboot -serial mon:stdio -monitor none -display none -net none \
  </dev/null >"$out/console.log" 2>&1
qemu_rc=$?
guest_secs=$((SECONDS - t_boot))

# ---- summary ------------------------------------------------------------------------
echo
echo "================================================================"
echo "tendril on $kver, 2 NUMA nodes (guest ran ${guest_secs}s, whole script $((SECONDS - start_all))s)"
failed=0
if [[ ! -f "$out/done" ]]; then
  echo "  guest did not finish (qemu exit $qemu_rc; timeout ${timeout_s}s); last console lines:"
  tail -n 20 "$out/console.log" | sed 's/^/    /'
  failed=1
fi
[[ -f "$out/guest-info.txt" ]] && sed 's/^/  guest: /' "$out/guest-info.txt" | head -12
if [[ -f "$out/results.txt" ]]; then
  while read -r tag rc secs; do
    log="$out/$tag.log"
    passed=$(grep -c '^\[       OK \]' "$log" 2>/dev/null)
    skipped=$(grep -c '^\[  SKIPPED \]' "$log" 2>/dev/null)
    status=ok
    if [[ "$rc" != 0 ]]; then
      status="FAILED (exit $rc)"
      failed=1
    fi
    printf '  %-32s %4ss  %3s passed %2s skipped  %s\n' "$tag" "$secs" "$passed" "$skipped" "$status"
    if [[ "$rc" != 0 ]]; then
      grep -E '^\[  FAILED  \]|Failure|error|terminate|Abort' "$log" | head -n 10 | sed 's/^/      /'
    fi
  done <"$out/results.txt"
else
  echo "  no results"
  failed=1
fi
if compgen -G "$out/numa.*.log" >/dev/null; then
  echo "  placement (numa_test RealNumaRun, 4 workers on 2 nodes, 20 rounds of 400 fibers growing 64 KiB and yielding):"
  for f in "$out"/numa.*.log "$out"/placement.*.log; do
    [[ -f "$f" ]] || continue
    grep -h '^placement:' "$f" | sed "s|^placement:|    $(basename "$f" .log):|"
  done
fi
if [[ -f "$out/stack_cache_bench.log" ]]; then
  echo "  stack_cache benchmark (counters only; TCG timings mean nothing):"
  grep -v '^tendril:' "$out/stack_cache_bench.log" | grep -iE 'node|hit|mismatch|trim|steal' | head -n 20 | sed 's/^/    /'
fi
if [[ -f "$out/extra.log" ]]; then
  echo "  TENDRIL_KERNELS_EXTRA output:"
  sed 's/^/    /' "$out/extra.log"
fi
# Lines the runtime printed once per run (fallbacks it chose), deduplicated.
if compgen -G "$out/*.log" >/dev/null; then
  echo "  runtime notices in the guest (fallbacks):"
  cat "$out"/*.log | grep -E '^tendril:' | grep -v 'stacks: mode=' | sed -E 's/[0-9]+ (fibers|slots)/N \1/' | sort | uniq -c | sort -rn | head -n 12 \
    | sed 's/^/    /'
fi
if [[ $failed -ne 0 ]]; then
  echo "RESULT: FAILED (logs: $out)"
  echo "================================================================"
  exit 1
fi
echo "RESULT: all guest tests OK"
echo "================================================================"
if [[ "${TENDRIL_KERNELS_KEEP:-0}" = 1 ]]; then
  echo "logs: $out"
else
  rm -rf "$out"
fi
