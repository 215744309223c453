// The poller for a runtime with no I/O backend: workers sleep on a futex word
// each. (Replaced by the io_uring / epoll backends.)
#include <atomic>
#include <memory>

#include "runtime/io/poller.hpp"
#include "runtime/sched/futex.hpp"

namespace tendril::detail {

namespace {
struct alignas(64) WakeWord {
  std::atomic<std::uint32_t> word{0};
};
std::unique_ptr<WakeWord[]> g_words;
}  // namespace

void io_init(const IoConfig& config) { g_words = std::make_unique<WakeWord[]>(config.workers); }
void io_shutdown() noexcept { g_words.reset(); }
void io_thread_init(unsigned) noexcept {}
void io_thread_exit(unsigned) noexcept {}
std::uint32_t io_poll(unsigned, bool) noexcept { return 0; }

void io_wait(unsigned worker, const std::chrono::steady_clock::time_point* deadline) noexcept {
  std::atomic<std::uint32_t>& w = g_words[worker].word;
  if (w.exchange(0, std::memory_order_acquire) != 0) return;
  futex_wait(w, 0, deadline);
  w.store(0, std::memory_order_relaxed);
}

void io_wake(unsigned worker) noexcept {
  std::atomic<std::uint32_t>& w = g_words[worker].word;
  if (w.exchange(1, std::memory_order_release) == 0) futex_wake_one(w);
}

std::string io_backend_name() { return "none"; }

}  // namespace tendril::detail
