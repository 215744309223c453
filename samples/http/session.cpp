// Session: Beast's request parser fed from the connection's bytes, one parser
// per request, plus the rules Beast leaves to the server: which errors get
// which status, when the connection closes, and how much unparsed input a
// client may make us hold.
#include "samples/http/session.hpp"

#include <optional>

#include "samples/common/runtime.hpp"
#include "samples/http/beast.hpp"

namespace sample_http {

namespace http = boost::beast::http;

namespace {

Reply error_reply(int status, std::string body) {
  Reply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

// The answer to a request Beast could not accept.
Reply parse_error_reply(const boost::beast::error_code& ec) {
  if (ec == http::error::header_limit) return error_reply(431, "request header too large\n");
  if (ec == http::error::body_limit) return error_reply(413, "request body too large\n");
  return error_reply(400, "malformed request\n");
}

}  // namespace

void append_response(const Reply& reply, bool keep_alive, std::string& out) {
  const auto reason = http::obsolete_reason(static_cast<http::status>(reply.status));
  out += "HTTP/1.1 ";
  out += std::to_string(reply.status);
  out += ' ';
  out.append(reason.data(), reason.size());
  out += "\r\nServer: tendril-http\r\nContent-Type: ";
  out += reply.content_type;
  out += "\r\nContent-Length: ";
  out += std::to_string(reply.body.size());
  out += keep_alive ? "\r\nConnection: keep-alive\r\n" : "\r\nConnection: close\r\n";
  if (!reply.allow.empty()) {
    out += "Allow: ";
    out += reply.allow;
    out += "\r\n";
  }
  out += "\r\n";
  out += reply.body;
}

struct Session::Impl {
  Limits limits;
  Handler handler;
  std::optional<http::request_parser<http::string_body>> parser;  // the request in progress
  std::string pending;  // bytes not consumed by the parser yet
  bool open = true;
  std::size_t responses = 0;

  void start_request() {
    parser.emplace();
    parser->header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
    parser->body_limit(static_cast<std::uint64_t>(limits.max_body_bytes));
    parser->eager(true);
  }

  void answer(const Reply& reply, bool keep_alive, std::string& out) {
    keep_alive = keep_alive && reply.status < 400;
    append_response(reply, keep_alive, out);
    ++responses;
    if (!keep_alive) open = false;
  }

  // Parses data from the start; returns how many bytes were consumed.
  std::size_t parse(std::string_view data, std::string& out) {
    std::size_t pos = 0;
    while (open && pos < data.size()) {
      if (!parser) start_request();
      boost::beast::error_code ec;
      std::size_t n = 0;
      // Beast's parser goes deep (parse_fields alone has a 4 KiB frame) and
      // never blocks: on the worker's stack it costs no page of every
      // connection fiber's stack (1 page per busy connection instead of 2).
      sample::on_worker_stack([&] {
        n = parser->put(boost::asio::const_buffer(data.data() + pos, data.size() - pos), ec);
      });
      pos += n;
      if (ec == http::error::need_more) break;
      if (ec) {
        parser.reset();
        answer(parse_error_reply(ec), false, out);
        break;
      }
      if (parser->is_done()) {
        const auto& msg = parser->get();
        Request req;
        req.method = msg.method_string();
        req.target = msg.target();
        req.version = msg.version();
        const bool keep_alive = msg.keep_alive();
        Reply reply = handler(req);
        parser.reset();
        answer(reply, keep_alive, out);
      } else if (n == 0) {
        break;  // no progress without more input
      }
    }
    return pos;
  }
};

Session::Session(const Limits& limits, Handler handler) : impl_(std::make_unique<Impl>()) {
  impl_->limits = limits;
  impl_->handler = std::move(handler);
}

Session::~Session() = default;

bool Session::feed(std::string_view bytes, std::string& out) {
  Impl& s = *impl_;
  if (!s.open) return false;
  if (s.pending.empty()) {
    // The usual case: whole requests in one read, parsed in place.
    const std::size_t used = s.parse(bytes, out);
    if (s.open) s.pending.assign(bytes.substr(used));
  } else {
    s.pending.append(bytes);
    const std::size_t used = s.parse(s.pending, out);
    s.pending.erase(0, used);
  }
  if (!s.open) {
    s.pending.clear();
    s.pending.shrink_to_fit();
    return false;
  }
  // Beast bounds a request header by header_limit, but not a chunk-size line
  // or a trailer: whatever it leaves unconsumed must stay within the header
  // limit too, or a client could make us hold any amount.
  if (s.pending.size() > s.limits.max_header_bytes + 4) {
    const bool in_header = !s.parser || !s.parser->is_header_done();
    s.parser.reset();
    s.answer(in_header ? error_reply(431, "request header too large\n")
                       : error_reply(413, "request body too large\n"),
             false, out);
    s.pending.clear();
    s.pending.shrink_to_fit();
    return false;
  }
  return true;
}

bool Session::open() const noexcept { return impl_->open; }
std::size_t Session::buffered() const noexcept { return impl_->pending.size(); }
std::size_t Session::responses() const noexcept { return impl_->responses; }

}  // namespace sample_http
