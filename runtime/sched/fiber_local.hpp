// The runtime's side of FiberLocal (include/tendril/fiber_local.hpp).
#pragma once

#include <exception>

#include "tendril/fiber_local.hpp"

namespace tendril::detail {

// Where the calling fiber's table pointer lives (its FiberCtl), or the calling
// thread's outside a fiber (worker.cpp). Out of line, like fiber_local_table.
FiberLocalTable** fiber_local_home() noexcept;

// At a fiber's end, on the fiber: destroys its values and frees its table.
// The first exception a destructor throws goes to *error if that is empty.
void fiber_locals_destroy(FiberLocalTable*& table, std::exception_ptr& error) noexcept;

}  // namespace tendril::detail
