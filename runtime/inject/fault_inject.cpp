// Test-only fault injection: see fault_inject.hpp.
#include "runtime/inject/fault_inject.hpp"

namespace tendril::detail {

std::atomic<FaultHook> g_fault_hook{nullptr};

void set_fault_hook(FaultHook hook) noexcept { g_fault_hook.store(hook, std::memory_order_release); }

}  // namespace tendril::detail
