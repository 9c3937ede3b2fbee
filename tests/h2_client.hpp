// HTTP/2 clients for the tests: Http2Client, a well-behaved one on nghttp2's client session
// (requests with bodies and trailers, many streams at once), and RawHttp2, which writes frames
// by hand (what an attacker sends: resets, CONTINUATION floods, pings, a shut window).
#pragma once

#include "lattice.hpp"

#include <nghttp2/nghttp2.h>

#include <cstring>
#include <functional>
#include <map>
#include <optional>

namespace testsupport {

struct Http2Response {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers, trailers;
  std::string body;
  bool closed = false;
  uint32_t error_code = 0;  // RST_STREAM's, when the stream was reset

  std::string header(const std::string &name) const {
    for (auto &h : headers)
      if (h.first == name) return h.second;
    return "";
  }
  std::string trailer(const std::string &name) const {
    for (auto &t : trailers)
      if (t.first == name) return t.second;
    return "";
  }
};

class Http2Client {
public:
  using Fields = std::vector<std::pair<std::string, std::string>>;

  explicit Http2Client(int port) : fd_(connect_loopback(port)) {
    REQUIRE(fd_ >= 0);
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
    nghttp2_session_client_new(&session_, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 16 * 1024 * 1024}};
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 1);
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, 64 * 1024 * 1024);
  }
  ~Http2Client() {
    nghttp2_session_del(session_);
    if (fd_ >= 0) ::close(fd_);
  }
  Http2Client(const Http2Client &) = delete;
  Http2Client &operator=(const Http2Client &) = delete;

  // Opens a stream; `trailers` follow the body when given.
  int32_t submit(const std::string &method, const std::string &path, const Fields &headers = {},
                 std::optional<std::string> body = std::nullopt, const Fields &trailers = {}) {
    auto request = std::make_unique<Outgoing>();
    request->body = body.value_or("");
    request->trailers = trailers;
    request->fields = {{":method", method}, {":scheme", "http"}, {":authority", "localhost"}, {":path", path}};
    for (auto &h : headers) request->fields.push_back(h);
    std::vector<nghttp2_nv> nva;
    wrpc_http::detail::append_name_values(nva, request->fields);
    nghttp2_data_provider provider{};
    provider.source.ptr = request.get();
    provider.read_callback = read_body;
    int32_t id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(),
                                        body || !trailers.empty() ? &provider : nullptr, request.get());
    REQUIRE(id > 0);
    outgoing_[id] = std::move(request);
    responses_[id];
    return id;
  }

  // Exchanges frames until every stream opened so far is closed; false on timeout or when the
  // connection ended first.
  bool wait_all(std::chrono::milliseconds timeout) {
    return run_until([&] {
      for (auto &r : responses_)
        if (!r.second.closed) return false;
      return true;
    }, timeout);
  }

  const Http2Response &response(int32_t id) { return responses_[id]; }

  // GET or POST on one stream, to its end.
  Http2Response fetch(const std::string &method, const std::string &path, std::optional<std::string> body = std::nullopt,
                      const Fields &trailers = {}, const Fields &headers = {}) {
    auto id = submit(method, path, headers, std::move(body), trailers);
    wait_all(std::chrono::seconds(10));
    return responses_[id];
  }

  bool got_goaway() const { return goaway_; }
  uint32_t goaway_error() const { return goaway_error_; }
  bool connection_ended() const { return ended_; }

  bool run_until(const std::function<bool()> &done, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (!done()) {
      if (ended_ || Clock::now() >= deadline) return false;
      const uint8_t *data;
      ssize_t n;
      while ((n = nghttp2_session_mem_send(session_, &data)) > 0)
        if (::send(fd_, data, static_cast<size_t>(n), MSG_NOSIGNAL) != n) ended_ = true;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[64 * 1024];
      ssize_t got = ::recv(fd_, buf, sizeof(buf), 0);
      if (got <= 0) {
        ended_ = true;
        continue;
      }
      if (nghttp2_session_mem_recv(session_, reinterpret_cast<uint8_t *>(buf), static_cast<size_t>(got)) < 0)
        ended_ = true;
    }
    return true;
  }

private:
  struct Outgoing {
    Fields fields, trailers;
    std::string body;
    size_t sent = 0;
  };

  static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                           nghttp2_data_source *source, void *) {
    auto *r = static_cast<Outgoing *>(source->ptr);
    size_t n = std::min(length, r->body.size() - r->sent);
    std::memcpy(buf, r->body.data() + r->sent, n);
    r->sent += n;
    if (r->sent == r->body.size()) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!r->trailers.empty()) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        std::vector<nghttp2_nv> nva;
        wrpc_http::detail::append_name_values(nva, r->trailers);
        nghttp2_submit_trailer(session, id, nva.data(), nva.size());
      }
    }
    return static_cast<ssize_t>(n);
  }
  static int on_header(nghttp2_session *, const nghttp2_frame *frame, const uint8_t *name, size_t name_len,
                       const uint8_t *value, size_t value_len, uint8_t, void *self) {
    auto &c = *static_cast<Http2Client *>(self);
    auto &r = c.responses_[frame->hd.stream_id];
    std::string n(reinterpret_cast<const char *>(name), name_len), v(reinterpret_cast<const char *>(value), value_len);
    if (n == ":status") r.status = std::atoi(v.c_str());
    else if (r.status && frame->headers.cat == NGHTTP2_HCAT_HEADERS) r.trailers.emplace_back(n, v);
    else r.headers.emplace_back(n, v);
    return 0;
  }
  static int on_data(nghttp2_session *, uint8_t, int32_t id, const uint8_t *data, size_t len, void *self) {
    static_cast<Http2Client *>(self)->responses_[id].body.append(reinterpret_cast<const char *>(data), len);
    return 0;
  }
  static int on_close(nghttp2_session *, int32_t id, uint32_t error_code, void *self) {
    auto &r = static_cast<Http2Client *>(self)->responses_[id];
    r.closed = true;
    r.error_code = error_code;
    return 0;
  }
  static int on_frame(nghttp2_session *, const nghttp2_frame *frame, void *self) {
    auto &c = *static_cast<Http2Client *>(self);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      c.goaway_ = true;
      c.goaway_error_ = frame->goaway.error_code;
    }
    return 0;
  }

  int fd_;
  nghttp2_session *session_ = nullptr;
  std::map<int32_t, std::unique_ptr<Outgoing>> outgoing_;
  std::map<int32_t, Http2Response> responses_;
  bool goaway_ = false, ended_ = false;
  uint32_t goaway_error_ = 0;
};

// Frames written by hand on a plain socket.
class RawHttp2 {
public:
  struct Frame {
    uint8_t type = 0, flags = 0;
    uint32_t stream = 0;
    std::string payload;
  };

  explicit RawHttp2(int port) : fd_(connect_loopback(port)) { REQUIRE(fd_ >= 0); }
  ~RawHttp2() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawHttp2(const RawHttp2 &) = delete;
  RawHttp2 &operator=(const RawHttp2 &) = delete;

  // The preface and a SETTINGS frame with `settings` (id, value).
  bool open(const std::vector<std::pair<uint16_t, uint32_t>> &settings = {}) {
    std::string payload;
    for (auto &s : settings) payload += be16(s.first) + be32(s.second);
    return send_bytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(NGHTTP2_SETTINGS, 0, 0, payload));
  }

  static std::string frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string &payload) {
    std::string out = be32(static_cast<uint32_t>(payload.size()) << 8).substr(0, 3);
    out += static_cast<char>(type);
    out += static_cast<char>(flags);
    out += be32(stream & 0x7fffffffu);
    return out + payload;
  }
  // An HPACK block of literal fields (never indexed, new names): what any decoder takes.
  static std::string header_block(const std::vector<std::pair<std::string, std::string>> &fields) {
    std::string out;
    for (auto &f : fields) {
      out += '\x10';
      out += hpack_length(f.first.size()) + f.first;
      out += hpack_length(f.second.size()) + f.second;
    }
    return out;
  }
  static std::string get_request(const std::string &path) {
    return header_block({{":method", "GET"}, {":scheme", "http"}, {":authority", "localhost"}, {":path", path}});
  }
  // A whole GET on `stream` (END_HEADERS, END_STREAM), and the acknowledgement of the settings.
  static std::string get(uint32_t stream, const std::string &path) {
    return frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, stream, get_request(path));
  }
  static std::string settings_ack() { return frame(NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0, ""); }

  // False once the server closed or reset the connection.
  bool send_bytes(const std::string &bytes) { return send_all(fd_, bytes); }

  // Reads frames until `want` returns true for one (then true) or the connection ends or the
  // time is up (false). Every frame read is kept in frames().
  bool read_until(const std::function<bool(const Frame &)> &want, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (true) {
      while (in_.size() >= 9) {
        size_t length = (static_cast<uint8_t>(in_[0]) << 16) | (static_cast<uint8_t>(in_[1]) << 8) | static_cast<uint8_t>(in_[2]);
        if (in_.size() < 9 + length) break;
        Frame f;
        f.type = static_cast<uint8_t>(in_[3]);
        f.flags = static_cast<uint8_t>(in_[4]);
        f.stream = ((static_cast<uint8_t>(in_[5]) & 0x7fu) << 24) | (static_cast<uint8_t>(in_[6]) << 16) |
                   (static_cast<uint8_t>(in_[7]) << 8) | static_cast<uint8_t>(in_[8]);
        f.payload = in_.substr(9, length);
        in_.erase(0, 9 + length);
        frames_.push_back(f);
        if (want(f)) return true;
      }
      if (closed_) return false;
      int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
      if (left <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, left) <= 0) continue;
      char buf[64 * 1024];
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) closed_ = true;
      else in_.append(buf, static_cast<size_t>(n));
    }
  }
  // Reads until the server closes the connection (true) or the time is up.
  bool read_to_close(std::chrono::milliseconds timeout) {
    read_until([](const Frame &) { return false; }, timeout);
    return closed_;
  }
  const std::vector<Frame> &frames() const { return frames_; }
  // The GOAWAY's error code, or -1 when none came.
  long goaway_error() const {
    for (auto &f : frames_)
      if (f.type == NGHTTP2_GOAWAY && f.payload.size() >= 8)
        return static_cast<long>(be32_value(f.payload, 4));
    return -1;
  }
  static uint32_t be32_value(const std::string &s, size_t at) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(s[at])) << 24) | (static_cast<uint8_t>(s[at + 1]) << 16) |
           (static_cast<uint8_t>(s[at + 2]) << 8) | static_cast<uint8_t>(s[at + 3]);
  }
  static std::string be32(uint32_t v) {
    return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
  }
  static std::string be16(uint16_t v) { return {static_cast<char>(v >> 8), static_cast<char>(v)}; }

private:
  static std::string hpack_length(size_t n) {
    if (n < 127) return std::string(1, static_cast<char>(n));
    std::string out(1, '\x7f');
    n -= 127;
    while (n >= 128) {
      out += static_cast<char>((n & 0x7f) | 0x80);
      n >>= 7;
    }
    return out + static_cast<char>(n);
  }

  int fd_;
  std::string in_;
  bool closed_ = false;
  std::vector<Frame> frames_;
};

}  // namespace testsupport
