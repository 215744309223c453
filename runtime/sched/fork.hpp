// fork(2) while run() is in progress. The child gets one thread (the caller
// of fork) and a copy of the parent's runtime: its scheduler, run queues,
// stacks and caches, with the other workers, the userfaultfd handler threads
// and the I/O rings' owners gone, and the epoll instance shared with the
// parent. Nothing of it can work in the child, so every entry point that
// would need it stops with a message instead of hanging or touching the
// parent's shared state (see "fork and signals" in the README):
//  - run() and spawn() throw std::logic_error;
//  - a fiber that parks, yields or waits for I/O, and a plain thread that
//    waits on a tendril primitive, stop the child with a message on stderr.
// exec, and async-signal-safe calls before it, are what a child may do.
#pragma once

namespace tendril::detail {

// Registers the pthread_atfork child handler (once per process).
void watch_fork() noexcept;

// True in a child of fork() taken while run() was in progress.
bool forked_from_running_runtime() noexcept;

// The message that names what the child tried; stops the child (abort).
[[noreturn]] void die_used_after_fork(const char* what) noexcept;

// The text of the std::logic_error thrown by run() and spawn() in such a child.
const char* used_after_fork_message() noexcept;

}  // namespace tendril::detail
