// tendril: fibers with growable stacks for high-fan-out servers.
//
//   #include <tendril/tendril.hpp>
//   int main() {
//     tendril::run([] {
//       tendril::Channel<int> ch;
//       auto producer = tendril::spawn([ch]() mutable { ch.send(42); });
//       int v = *ch.recv();
//       producer.join();
//     });
//   }
//
// One header per concept; this one includes them all.
#pragma once

#include "tendril/blocking.hpp"
#include "tendril/channel.hpp"
#include "tendril/condvar.hpp"
#include "tendril/debug.hpp"
#include "tendril/fiber.hpp"
#include "tendril/fiber_local.hpp"
#include "tendril/io.hpp"
#include "tendril/mutex.hpp"
#include "tendril/net.hpp"
#include "tendril/options.hpp"
#include "tendril/runtime.hpp"
#include "tendril/scope.hpp"
#include "tendril/select.hpp"
#include "tendril/semaphore.hpp"
#include "tendril/stats.hpp"
#include "tendril/wait_group.hpp"
