# TENDRIL_SANITIZE=address gives ASan+UBSan, =thread gives TSan. The runtime
# annotates its context switches for both (runtime/context/switch.cpp).
if(TENDRIL_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(TENDRIL_SANITIZE STREQUAL "thread")
  # -Wno-tsan: GCC warns that TSan does not model atomic_thread_fence; the
  # runtime's fences (a seqlock reader, the idle-worker handshake) pair with
  # atomics TSan does see, and -Werror (CI) must not stop on the notice.
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer -Wno-tsan)
  add_link_options(-fsanitize=thread)
elseif(NOT TENDRIL_SANITIZE STREQUAL "")
  message(FATAL_ERROR "TENDRIL_SANITIZE must be '', 'address' or 'thread', not '${TENDRIL_SANITIZE}'")
endif()
