# tendril_target_defaults(target): the compile options every target of this
# project gets (warnings; -Werror with -DTENDRIL_WERROR=ON, which CI uses).
option(TENDRIL_WERROR "Treat compiler warnings as errors" OFF)

function(tendril_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(TENDRIL_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
