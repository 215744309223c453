// One HTTP/1.1 connection's protocol state, without a socket: bytes in,
// responses out. The connection loop (connection.cpp) feeds it what it reads
// and writes what it returns; the tests feed it directly. Requests are parsed
// by Boost.Beast; this file decides keep-alive, limits and error answers.
//
//   sample_http::Session s(limits, [](const sample_http::Request& r) {
//     return sample_http::Reply{200, "text/plain", "hi\n"};
//   });
//   std::string out;
//   bool open = s.feed("GET / HTTP/1.1\r\nHost: x\r\n\r\n", out);
//   // out holds one response; open: the connection stays for the next one
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace sample_http {

struct Limits {
  std::size_t max_header_bytes = 8192;     // request line + fields; more: 431
  std::size_t max_body_bytes = 1u << 20;   // more: 413
};

// A parsed request, as the routes see it. Valid during the handler call.
struct Request {
  std::string_view method;  // "GET", ...
  std::string_view target;  // "/sleep?ms=5"
  unsigned version = 11;    // 10 or 11
};

// What a route answers. Any status of 400 and above also closes the
// connection (Connection: close).
struct Reply {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::string allow;  // the Allow header of a 405, if not empty
};

using Handler = std::function<Reply(const Request&)>;

class Session {
 public:
  Session(const Limits& limits, Handler handler);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Parses bytes (any split: a part of a request, several requests), answers
  // every complete request in order, and appends the responses to out.
  // Returns false once the connection must close after out is written (the
  // client asked for it, or an error answer); later calls then do nothing.
  bool feed(std::string_view bytes, std::string& out);

  bool open() const noexcept;
  // Bytes held for a request that is not complete yet (bounded by the limits).
  std::size_t buffered() const noexcept;
  // Requests answered so far, error answers included.
  std::size_t responses() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The bytes of one response: status line, Content-Type, Content-Length,
// Connection (and Allow), then the body.
void append_response(const Reply& reply, bool keep_alive, std::string& out);

}  // namespace sample_http
