// Thin futex(2) wrappers for parking OS threads (idle workers, and plain
// threads blocked on tendril primitives).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace tendril::detail {

// Sleeps while *word == expected, until woken or (if given) the absolute
// steady_clock deadline passes. Returns false only on timeout.
bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                const std::chrono::steady_clock::time_point* deadline = nullptr) noexcept;
void futex_wake_one(std::atomic<std::uint32_t>& word) noexcept;

}  // namespace tendril::detail
