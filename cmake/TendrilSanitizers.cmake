# TENDRIL_SANITIZE=address gives ASan+UBSan, =thread gives TSan. The runtime
# annotates its context switches for both (runtime/context/switch.cpp).
if(TENDRIL_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(TENDRIL_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT TENDRIL_SANITIZE STREQUAL "")
  message(FATAL_ERROR "TENDRIL_SANITIZE must be '', 'address' or 'thread', not '${TENDRIL_SANITIZE}'")
endif()
