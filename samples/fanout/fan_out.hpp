// One request's fan-out: k backend calls made concurrently (one fiber each;
// in the twin, one thread each), gathered until all are back or the deadline
// passed.
//
// At most --max-calls calls are live in the process: a request waits in line
// until all its calls fit, and its deadline starts when they start (see
// CallSlots). Under overload requests queue, instead of all calls missing the
// deadline together.
//
// Outcomes: a call is answered if a correct echo came back before its
// request's answer was taken; late if it came after that, or not by the
// deadline, or the call started after the deadline; failed if it ended in an
// error (connection refused or reset, wrong reply) or could not be started
// (calls_refused: the twin out of threads). On tendril the calls are the
// children of a tendril::Scope with the request's deadline: at the deadline
// the parks of the late ones throw and they end, giving their backend
// connections back, before the answer goes out. In the twin a call may end
// just after its request was answered: it shares ownership of the request's
// state.
//
// No parking in catch blocks: nothing that may park a fiber (a sample::Mutex,
// a Group, I/O) runs inside a handler in this sample. A parked fiber may
// resume on another worker thread, and the C++ runtime keeps the exception
// being handled per thread, so a `throw;` or the end of the handler would then
// act on the wrong thread's state. Handlers record what happened; the work
// follows them.
#pragma once

#include <string>
#include <string_view>

#include "samples/fanout/server.hpp"

namespace sample_fanout {

// Fans out k calls and gathers them until the deadline: the answer line,
// "ok <id> <answered> <k>\n". The deadline runs from when the request has
// room for its calls.
std::string fan_out(Server& srv, std::string_view id, int k);

}  // namespace sample_fanout
