# Installation and packaging: `cmake --install <build> [--prefix <dir>]` puts
#   <libdir>/libtendril.so*                      the runtime
#   <includedir>/tendril/**.hpp                  its public headers
#   <libdir>/cmake/tendril/tendril-config*.cmake find_package(tendril) -> tendril::tendril
#   <libdir>/pkgconfig/tendril.pc                pkg-config --cflags --libs tendril
# Consumers need a C++20 compiler and -pthread; the runtime's own dependencies
# (Boost.Context, liburing, libnuma) are private to the shared library, so a
# consumer needs neither their headers nor their link flags.
# tests/consumer checks all of this by building a program against an install.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TENDRIL_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/tendril")

# The public headers are C++20 (concepts, <chrono> ceil, ...): say so in the
# exported target, so a find_package consumer gets -std=c++20 without asking.
set_property(TARGET tendril APPEND PROPERTY INTERFACE_COMPILE_FEATURES cxx_std_20)

# The library, exported as tendril::tendril. Its PRIVATE link dependencies
# (Boost::context, PkgConfig::URING, tendril_numa) are imported targets that
# exist only in this build; for a SHARED library CMake leaves them out of the
# exported INTERFACE_LINK_LIBRARIES (they are recorded in the .so's DT_NEEDED
# instead), so the export set needs only Threads::Threads from the consumer.
# (The exported targets file may still name Boost::context, in
# IMPORTED_LINK_DEPENDENT_LIBRARIES: a hint for -rpath-link only, which
# tendril-config.cmake drops unless the consumer has such a target itself.)
# runtime/ exports $<INSTALL_INTERFACE:include>; add the real include dir if
# CMAKE_INSTALL_INCLUDEDIR was changed.
if(CMAKE_INSTALL_INCLUDEDIR STREQUAL "include")
  set(_tendril_includes_dest "")
else()
  set(_tendril_includes_dest INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
endif()
install(TARGETS tendril
  EXPORT tendrilTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  ${_tendril_includes_dest})

# Public headers: the whole include/tendril tree (detail/ included, the public
# templates need it).
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/tendril"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  FILES_MATCHING PATTERN "*.hpp" PATTERN "*.h")

# CMake package: tendril-config.cmake, -config-version.cmake, -targets*.cmake.
install(EXPORT tendrilTargets
  FILE tendril-targets.cmake
  NAMESPACE tendril::
  DESTINATION "${TENDRIL_INSTALL_CMAKEDIR}")

configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/tendril-config.cmake.in"
  "${PROJECT_BINARY_DIR}/tendril-config.cmake"
  INSTALL_DESTINATION "${TENDRIL_INSTALL_CMAKEDIR}")
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/tendril-config-version.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMajorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/tendril-config.cmake"
  "${PROJECT_BINARY_DIR}/tendril-config-version.cmake"
  DESTINATION "${TENDRIL_INSTALL_CMAKEDIR}")

# pkg-config file. libdir and includedir are written relative to ${prefix};
# prefix itself is filled in at install time, so `cmake --install --prefix X`
# (and DESTDIR staging, which is not part of the prefix) give a correct file.
# Stage 1 (configure time) fills in everything but the prefix.
foreach(_dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_dir}}")
    set(TENDRIL_PC_${_dir} "${CMAKE_INSTALL_${_dir}}")
  else()
    set(TENDRIL_PC_${_dir} "\${prefix}/${CMAKE_INSTALL_${_dir}}")
  endif()
endforeach()
set(TENDRIL_PC_PREFIX "@TENDRIL_PC_PREFIX@")  # kept as a placeholder for stage 2
configure_file("${CMAKE_CURRENT_LIST_DIR}/tendril.pc.in"
  "${PROJECT_BINARY_DIR}/tendril.pc.stage" @ONLY)
unset(TENDRIL_PC_PREFIX)
# Stage 2 (install time): the prefix being installed to.
install(CODE "
  set(TENDRIL_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  configure_file(\"${PROJECT_BINARY_DIR}/tendril.pc.stage\"
                 \"${PROJECT_BINARY_DIR}/pkgconfig/tendril.pc\" @ONLY)
")
install(FILES "${PROJECT_BINARY_DIR}/pkgconfig/tendril.pc"
  DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")

# gdb extension: <datadir>/tendril/tendril-gdb.py (`info tendril-fibers`,
# `tendril-fiber-bt`), and the file gdb's auto-load looks for when it loads
# libtendril.so.<version>:
#   <datadir>/gdb/auto-load/<absolute libdir>/libtendril.so.<version>-gdb.py
# which sources the script. The auto-load file lives under share/gdb/auto-load
# rather than beside the library (gdb would look there too) because ldconfig
# takes every lib*.so* in a library directory for a library and warns about it;
# this is where libstdc++ and GLib put theirs. gdb searches
# <gdb's datadir>/auto-load by default, so an install to gdb's prefix (/usr)
# auto-loads with no setup; elsewhere see README ("Debugging with gdb").
# The absolute paths depend on the prefix being installed to, so the file is
# written at install time (as tendril.pc is).
install(FILES "${PROJECT_SOURCE_DIR}/share/tendril/tendril-gdb.py"
  DESTINATION "${CMAKE_INSTALL_DATADIR}/tendril")
set(_tendril_gdb_lib "libtendril.so.${PROJECT_VERSION}")
install(CODE "
  foreach(_d LIBDIR DATADIR)
    if(_d STREQUAL LIBDIR)
      set(_rel \"${CMAKE_INSTALL_LIBDIR}\")
    else()
      set(_rel \"${CMAKE_INSTALL_DATADIR}\")
    endif()
    if(IS_ABSOLUTE \"\${_rel}\")
      set(_\${_d} \"\${_rel}\")
    else()
      set(_\${_d} \"\${CMAKE_INSTALL_PREFIX}/\${_rel}\")
    endif()
  endforeach()
  set(_autoload \"\$ENV{DESTDIR}\${_DATADIR}/gdb/auto-load\${_LIBDIR}/${_tendril_gdb_lib}-gdb.py\")
  message(STATUS \"Installing: \${_autoload}\")
  configure_file(\"${PROJECT_SOURCE_DIR}/cmake/tendril-autoload-gdb.py.in\" \"\${_autoload}\" @ONLY)
")
