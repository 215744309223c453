// libFuzzer target: the TENDRIL_* variables, through the public entry point
// Options::with_environment (setenv, then parse). Each variable is set or not
// and gets arbitrary bytes (up to the first NUL). The only allowed outcomes:
// std::invalid_argument naming the variable or the field, or Options that are
// within their documented ranges.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "tendril/options.hpp"

namespace {

constexpr const char* kVars[] = {"TENDRIL_WORKERS",    "TENDRIL_STACK_LIMIT", "TENDRIL_SPIN_US",
                                 "TENDRIL_PIN",        "TENDRIL_STACK_MODE",  "TENDRIL_STACK_CACHE_BYTES",
                                 "TENDRIL_IO"};

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "options_env_fuzz: %s: %s\n", what, detail.c_str());
  for (const char* v : kVars) {
    const char* s = std::getenv(v);
    if (s != nullptr) std::fprintf(stderr, "  %s=\"%s\"\n", v, s);
  }
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  for (const char* v : kVars) {
    if (in.ConsumeBool()) {
      const std::string value = in.ConsumeRandomLengthString(64);
      setenv(v, value.c_str(), 1);
    } else {
      unsetenv(v);
    }
  }
  tendril::Options base;
  base.workers = in.ConsumeIntegralInRange<unsigned>(0, 300);
  base.stack_limit = in.ConsumeIntegral<std::size_t>();
  try {
    const tendril::Options o = base.with_environment();
    if (o.workers > 256) fail("accepted workers", std::to_string(o.workers));
    if (o.stack_limit < 16 * 1024 || o.stack_limit > (std::size_t{1} << 30))
      fail("accepted stack_limit", std::to_string(o.stack_limit));
    if (o.spin_before_park.count() < 0 || o.spin_before_park.count() > 1000000)
      fail("accepted spin_before_park", std::to_string(o.spin_before_park.count()));
    if (!o.stack_mode.empty() && o.stack_mode != "uffd" && o.stack_mode != "kernel")
      fail("accepted stack_mode", o.stack_mode);
    if (!o.io_backend.empty() && o.io_backend != "uring" && o.io_backend != "epoll")
      fail("accepted io_backend", o.io_backend);
  } catch (const std::invalid_argument& e) {
    if (std::strncmp(e.what(), "tendril", 7) != 0) fail("invalid_argument without the tendril prefix", e.what());
  }
  return 0;
}
