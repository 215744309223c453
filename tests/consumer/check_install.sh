#!/usr/bin/env bash
# Checks that an installed tendril can be used from outside the tree (ctest
# test consumer_install, registered by tests/consumer/CMakeLists.txt):
#   1. cmake --install <build dir> --prefix <work>/prefix
#   2. configure + build project/ with find_package(tendril) against that
#      prefix (-DCMAKE_PREFIX_PATH) and run it
#   3. compile project/main.cpp with `pkg-config --cflags --libs tendril`
#      (PKG_CONFIG_PATH=<prefix>/<libdir>/pkgconfig) and run it
# Any failing step fails the test. The work dir is removed afterwards unless
# TENDRIL_KEEP_CONSUMER_WORK=1.
set -euo pipefail

build_dir="" config="" project="" work="" libdir="lib" includedir="include" version=""
cxx="${CXX:-g++}" generator="" make_program="" flags=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2" ;;
    --config) config="$2" ;;
    --project) project="$2" ;;
    --work) work="$2" ;;
    --libdir) libdir="$2" ;;
    --includedir) includedir="$2" ;;
    --version) version="$2" ;;
    --cxx) cxx="$2" ;;
    --generator) generator="$2" ;;
    --make-program) make_program="$2" ;;
    --flags) flags="$2" ;;
    *) echo "check_install.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift 2
done
if [[ -z "$build_dir" || -z "$project" || -z "$work" ]]; then
  echo "usage: check_install.sh --build-dir DIR --project DIR --work DIR [--libdir lib] [--includedir include]" >&2
  echo "         [--version X.Y.Z] [--config CFG] [--cxx CXX] [--generator G] [--make-program P] [--flags F]" >&2
  exit 2
fi

prefix="$work/prefix"
# Absolute CMAKE_INSTALL_LIBDIR/INCLUDEDIR are used as they are.
[[ "$libdir" = /* ]] && libdir_abs="$libdir" || libdir_abs="$prefix/$libdir"
[[ "$includedir" = /* ]] && includedir_abs="$includedir" || includedir_abs="$prefix/$includedir"
read -r -a extra_flags <<<"$flags"

cleanup() {
  local rc=$?
  if [[ "${TENDRIL_KEEP_CONSUMER_WORK:-0}" = 1 ]]; then
    echo "check_install.sh: kept $work"
  else
    rm -rf "$work"
  fi
  if [[ $rc -ne 0 ]]; then
    echo "check_install.sh: FAILED (exit $rc)${current_step:+ at: $current_step}" >&2
  fi
}
current_step=""
trap cleanup EXIT

step() {
  current_step="$*"
  echo
  echo "==== $*"
}
fail() {
  echo "check_install.sh: $*" >&2
  exit 1
}
expect_file() {
  [[ -f "$1" ]] || fail "expected installed file missing: $1"
}

rm -rf "$work"
mkdir -p "$work"

# ---------------------------------------------------------------- 1. install
step "install $build_dir into $prefix"
install_args=(--install "$build_dir" --prefix "$prefix")
[[ -n "$config" ]] && install_args+=(--config "$config")
cmake "${install_args[@]}"
expect_file "$includedir_abs/tendril/tendril.hpp"
expect_file "$includedir_abs/tendril/detail/park.hpp"
expect_file "$libdir_abs/libtendril.so"
expect_file "$libdir_abs/cmake/tendril/tendril-config.cmake"
expect_file "$libdir_abs/cmake/tendril/tendril-config-version.cmake"
expect_file "$libdir_abs/cmake/tendril/tendril-targets.cmake"
expect_file "$libdir_abs/pkgconfig/tendril.pc"
# The gdb extension and the file gdb auto-loads with the library (named after
# the library's real path), which must source the installed script.
expect_file "$prefix/share/tendril/tendril-gdb.py"
if [[ -n "$version" ]]; then
  autoload="$prefix/share/gdb/auto-load$(realpath "$libdir_abs")/libtendril.so.$version-gdb.py"
  expect_file "$autoload"
  grep -qF "\"$prefix/share/tendril/tendril-gdb.py\"" "$autoload" || fail "$autoload does not source the installed script"
fi
# The exported link interface must not name build-tree-only targets
# (tendril_numa, PkgConfig::*, Boost::*) that a consumer cannot resolve, nor
# paths into the source/build tree. (IMPORTED_LINK_DEPENDENT_LIBRARIES may name
# Boost::context: a -rpath-link hint that tendril-config.cmake filters.)
if grep -nE 'INTERFACE_LINK_LIBRARIES.*(tendril_numa|PkgConfig::|Boost::)' \
     "$libdir_abs"/cmake/tendril/tendril-targets*.cmake; then
  fail "tendril-targets*.cmake links a private dependency into consumers (above)"
fi
# (The scratch prefix itself lives in the build tree, so mask it out first.)
src_root="$(cd "$project/../../.." && pwd)"
build_root="$(cd "$build_dir" && pwd)"
for f in "$libdir_abs"/cmake/tendril/*.cmake "$libdir_abs/pkgconfig/tendril.pc"; do
  if sed "s|$prefix||g" "$f" | grep -nF -e "$src_root/" -e "$build_root/"; then
    fail "$f points into the source or build tree (above)"
  fi
done

run_app() {
  local exe="$1"
  echo "ldd: $(LD_LIBRARY_PATH="$libdir_abs" ldd "$exe" | grep libtendril || true)"
  LD_LIBRARY_PATH="$libdir_abs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$exe" ||
    fail "$exe exited with status $?"
}

# ------------------------------------------------------- 2. find_package(tendril)
step "configure the consumer project with find_package(tendril)"
cmake_args=(-S "$project" -B "$work/cmake-build" -Werror=dev
  -DCMAKE_PREFIX_PATH="$prefix"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
  -DCMAKE_BUILD_TYPE="${config:-Release}"
  -DCMAKE_CXX_COMPILER="$cxx"
  -DCMAKE_CXX_FLAGS="$flags"
  -DCMAKE_EXE_LINKER_FLAGS="$flags")
[[ -n "$generator" ]] && cmake_args+=(-G "$generator")
[[ -n "$make_program" ]] && cmake_args+=(-DCMAKE_MAKE_PROGRAM="$make_program")
cmake "${cmake_args[@]}"
found_dir="$(sed -n 's/^tendril_DIR:PATH=//p' "$work/cmake-build/CMakeCache.txt")"
[[ "$found_dir" = "$libdir_abs/cmake/tendril" ]] ||
  fail "find_package(tendril) found '$found_dir', not the fresh install in $libdir_abs/cmake/tendril"

step "build the consumer project"
cmake --build "$work/cmake-build" ${config:+--config "$config"} --verbose

step "run the find_package consumer"
app="$work/cmake-build/app"
[[ -x "$app" ]] || app="$work/cmake-build/${config:-Release}/app"
run_app "$app"

# ------------------------------------------------------------- 3. pkg-config
step "build main.cpp with pkg-config"
export PKG_CONFIG_PATH="$libdir_abs/pkgconfig"
pkg-config --exists --print-errors tendril
pc_version="$(pkg-config --modversion tendril)"
echo "pkg-config: tendril $pc_version"
[[ -z "$version" || "$pc_version" = "$version" ]] || fail "tendril.pc has version $pc_version, the build has $version"
pc_prefix="$(pkg-config --variable=prefix tendril)"
[[ "$pc_prefix" = "$prefix" ]] || fail "tendril.pc has prefix=$pc_prefix, installed to $prefix"
read -r -a pc_cflags <<<"$(pkg-config --cflags tendril)"
read -r -a pc_libs <<<"$(pkg-config --libs tendril)"
echo "cflags: ${pc_cflags[*]}"
echo "libs:   ${pc_libs[*]}"
mkdir -p "$work/pc-build"
(set -x; "$cxx" -std=c++20 -O2 -Wall -Wextra "${extra_flags[@]}" "${pc_cflags[@]}" \
  "$project/main.cpp" -o "$work/pc-build/app" "${pc_libs[@]}")

step "run the pkg-config consumer"
run_app "$work/pc-build/app"

current_step=""
echo
echo "check_install.sh: install, find_package and pkg-config consumers all OK"
