# Every dependency comes from a Debian 12 package. A missing one stops the
# configure step with the apt-get line that installs it.
find_package(PkgConfig)

function(tendril_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "tendril needs ${what}. Install it with:\n  apt-get install ${package}")
  endif()
endfunction()

if(NOT PkgConfig_FOUND)
  message(FATAL_ERROR "tendril needs pkg-config. Install it with:\n  apt-get install pkg-config")
endif()

find_package(Boost 1.74 QUIET COMPONENTS context)
tendril_require(Boost_FOUND "Boost.Context" libboost-context-dev)
# Link Boost.Context's static archive into libtendril where it is usable:
# jump_fcontext is then a direct call on the switch path instead of a PLT call
# into another shared library. (Its x86-64 assembly is position-independent.)
find_library(TENDRIL_BOOST_CONTEXT_STATIC NAMES libboost_context.a)
if(TENDRIL_BOOST_CONTEXT_STATIC)
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_LIBRARIES "${TENDRIL_BOOST_CONTEXT_STATIC}")
  set(CMAKE_REQUIRED_LINK_OPTIONS "-shared")
  set(CMAKE_REQUIRED_FLAGS "-fPIC")
  check_cxx_source_compiles("
    #include <boost/context/detail/fcontext.hpp>
    void* tendril_probe() { return (void*)&boost::context::detail::jump_fcontext; }
    int main() { return 0; }" TENDRIL_BOOST_CONTEXT_STATIC_OK)
  unset(CMAKE_REQUIRED_LIBRARIES)
  unset(CMAKE_REQUIRED_LINK_OPTIONS)
  unset(CMAKE_REQUIRED_FLAGS)
endif()
if(TENDRIL_BOOST_CONTEXT_STATIC_OK)
  set(TENDRIL_BOOST_CONTEXT "${TENDRIL_BOOST_CONTEXT_STATIC}")
else()
  set(TENDRIL_BOOST_CONTEXT Boost::context)
endif()

find_package(Threads REQUIRED)

pkg_check_modules(URING QUIET IMPORTED_TARGET liburing)
tendril_require(URING_FOUND "liburing" liburing-dev)

# elfutils' libdw: unwinding and symbolizing fiber stacks for the fiber dump.
pkg_check_modules(DW QUIET IMPORTED_TARGET libdw)
tendril_require(DW_FOUND "libdw (elfutils)" libdw-dev)

# No jemalloc: the one candidate use, idle-stack compaction buffers, is
# better served by glibc malloc (its size classes cost ~470 B more per
# compacted fiber; see the stack design comment in runtime/stack/arena.cpp).
# bench/compact_alloc links it when its development files are installed.

find_library(NUMA_LIBRARY numa)
find_path(NUMA_INCLUDE_DIR numa.h)
if(NUMA_LIBRARY AND NUMA_INCLUDE_DIR)
  set(NUMA_FOUND TRUE)
endif()
tendril_require(NUMA_FOUND "libnuma" libnuma-dev)
if(NOT TARGET tendril_numa)
  add_library(tendril_numa INTERFACE IMPORTED)
  set_target_properties(tendril_numa PROPERTIES
    INTERFACE_LINK_LIBRARIES "${NUMA_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${NUMA_INCLUDE_DIR}")
endif()

if(TENDRIL_BUILD_TESTS)
  find_package(GTest QUIET)
  tendril_require(GTest_FOUND "GoogleTest" "libgtest-dev libgmock-dev")
endif()
if(TENDRIL_BUILD_BENCH)
  find_package(benchmark QUIET)
  tendril_require(benchmark_FOUND "Google Benchmark" libbenchmark-dev)
endif()
