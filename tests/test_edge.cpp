// The HTTP edge (issue 10): what the provider does with every byte a client may send it, tried
// as an attacker would, with raw sockets against build/http-server (host data on stdin), a real
// nats-server and the demo component (build/fault-component for broken component answers).
// Each attack goes out in one write and again cut in pieces with pauses between them, so that
// the parser meets it whole and in every partial state. Where a refused request must never
// reach the component, the test's own NATS connection counts the component's invocations.
#include <doctest/doctest.h>
#include <sys/resource.h>

#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::Clock;
using testsupport::Lattice;
using testsupport::pattern_bytes;

// Worker threads the provider may hold beside its poll thread (the issue's default bound).
#ifdef WRPC_HTTP_MAX_WORKERS
constexpr int kMaxWorkers = WRPC_HTTP_MAX_WORKERS;
#else
constexpr int kMaxWorkers = 64;
#endif

namespace {

// ---- raw HTTP client ----

// How an attack's bytes leave: in one write, or in kPieces writes kPause apart.
enum class Delivery { whole, split };
const Delivery kDeliveries[] = {Delivery::whole, Delivery::split};
constexpr size_t kPieces = 6;
constexpr auto kPause = 20ms;

std::string to_string(Delivery d) { return d == Delivery::whole ? "one write" : "split across writes"; }

std::string lower(std::string s) {
  for (auto &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Bytes as a C string literal would show them: \r, \n, \t and other control bytes escaped.
std::string printable(const std::string &bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c >= 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", c);
      out += hex;
    } else out += static_cast<char>(c);
  }
  return out;
}

// One HTTP response as it came off the wire.
struct Response {
  int status = 0;
  std::string head;  // status line and fields, up to and including the empty line
  std::vector<std::pair<std::string, std::string>> fields;  // names lower-cased
  std::string body;  // without framing
  std::vector<std::pair<std::string, std::string>> trailers;

  int count(const std::string &name) const {
    return static_cast<int>(std::count_if(fields.begin(), fields.end(), [&](auto &f) { return f.first == name; }));
  }
  std::string field(const std::string &name) const {
    for (auto &f : fields)
      if (f.first == name) return f.second;
    return "";
  }
  nlohmann::json json() const {
    try {
      return nlohmann::json::parse(body);
    } catch (const std::exception &) {
      FAIL_CHECK("not JSON: " << body.substr(0, 200));
      return nlohmann::json::object();
    }
  }
};

// A raw client connection to the provider.
class Connection {
public:
  explicit Connection(int port) : fd_(testsupport::connect_loopback(port)) {
    timeval send_timeout{5, 0};  // a server that neither reads nor closes fails the send
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
  }
  Connection(const Connection &) = delete;
  Connection &operator=(const Connection &) = delete;
  ~Connection() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Sends `bytes`; false when the server stopped taking them (what it answered stays readable).
  bool send(const std::string &bytes, Delivery delivery = Delivery::whole) {
    if (delivery == Delivery::whole) return send_all(bytes);
    size_t piece = std::max<size_t>(1, (bytes.size() + kPieces - 1) / kPieces);
    for (size_t at = 0; at < bytes.size(); at += piece) {
      if (at > 0) std::this_thread::sleep_for(kPause);
      if (!send_all(bytes.substr(at, piece))) return false;
    }
    return true;
  }

  // Reads one whole response (HEAD's answer: `bodyless`). Nothing when none came within
  // `timeout` or the connection ended first; a malformed one fails the test.
  std::optional<Response> read_response(std::chrono::milliseconds timeout = 2s, bool bodyless = false) {
    auto deadline = Clock::now() + timeout;
    size_t head_end;
    while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill(deadline)) return std::nullopt;
    Response r;
    r.head = buf_.substr(0, head_end + 4);
    if (r.head.compare(0, 9, "HTTP/1.1 ") != 0 || r.head.size() < 12) {
      FAIL_CHECK("not an HTTP/1.1 response: " << printable(r.head.substr(0, 100)));
      return std::nullopt;
    }
    r.status = std::atoi(r.head.substr(9, 3).c_str());
    r.fields = parse_fields(r.head.substr(r.head.find("\r\n") + 2));
    size_t at = head_end + 4;
    bool no_body = bodyless || r.status < 200 || r.status == 204 || r.status == 304;
    if (!no_body && lower(r.field("transfer-encoding")) == "chunked") {
      if (!read_chunked(at, r, deadline)) return std::nullopt;
    } else if (!no_body && r.count("content-length") > 0) {
      size_t length = std::stoull(r.field("content-length"));
      while (buf_.size() < at + length)
        if (!fill(deadline)) return std::nullopt;
      r.body = buf_.substr(at, length);
      at += length;
    } else if (!no_body) {
      while (fill(deadline)) {  // framed by the close
      }
      if (!eof_) return std::nullopt;
      r.body = buf_.substr(at);
      at = buf_.size();
    }
    buf_.erase(0, at);
    return r;
  }

  // True when a response's status line and fields have arrived within `timeout` (they stay
  // unread for read_response).
  bool head_within(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (buf_.find("\r\n\r\n") == std::string::npos)
      if (!fill(deadline)) return false;
    return true;
  }

  // True when the server closes the connection (EOF or reset) within `timeout`; whatever
  // else it sent meanwhile is left in `unread()`.
  bool closed_within(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (fill(deadline)) {
    }
    return eof_;
  }
  const std::string &unread() const { return buf_; }

private:
  bool send_all(const std::string &bytes) { return testsupport::send_all(fd_, bytes); }

  // Reads what comes before `deadline`; false on timeout or at the end of the connection.
  bool fill(Clock::time_point deadline) {
    if (eof_) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd pfd{fd_, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) return false;
    char chunk[65536];
    ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) {
      eof_ = true;  // a reset counts as closed: the server is gone either way
      return false;
    }
    buf_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  static std::vector<std::pair<std::string, std::string>> parse_fields(const std::string &lines) {
    std::vector<std::pair<std::string, std::string>> fields;
    size_t at = 0, end;
    while ((end = lines.find("\r\n", at)) != std::string::npos && end > at) {
      std::string line = lines.substr(at, end - at);
      auto colon = line.find(':');
      std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      value.erase(value.find_last_not_of(" \t") + 1);
      fields.push_back({lower(line.substr(0, colon)), value});
      at = end + 2;
    }
    return fields;
  }

  // Chunked framing from buf_[at]: the body and the trailers into `r`, `at` past the end.
  bool read_chunked(size_t &at, Response &r, Clock::time_point deadline) {
    while (true) {
      size_t line_end;
      while ((line_end = buf_.find("\r\n", at)) == std::string::npos)
        if (!fill(deadline)) return false;
      size_t size = std::stoull(buf_.substr(at, line_end - at), nullptr, 16);
      at = line_end + 2;
      if (size == 0) break;
      while (buf_.size() < at + size + 2)
        if (!fill(deadline)) return false;
      r.body += buf_.substr(at, size);
      at += size + 2;
    }
    size_t end;
    while ((end = buf_.find("\r\n\r\n", at - 2)) == std::string::npos)
      if (!fill(deadline)) return false;
    r.trailers = parse_fields(buf_.substr(at, end + 2 - at));
    at = end + 4;
    return true;
  }

  int fd_;
  std::string buf_;
  bool eof_ = false;
};

// ---- requests ----

// `METHOD target HTTP/1.1`, Host: x, the given field lines (each with its CRLF), the empty line.
std::string request(const std::string &method, const std::string &target, const std::string &fields = "") {
  return method + " " + target + " HTTP/1.1\r\nHost: x\r\n" + fields + "\r\n";
}

std::string with_length(const std::string &method, const std::string &target, const std::string &body) {
  return request(method, target, "Content-Length: " + std::to_string(body.size()) + "\r\n") + body;
}

// `body` as one chunk and the last chunk.
std::string chunked(const std::string &method, const std::string &target, const std::string &body) {
  char size[20];
  std::snprintf(size, sizeof(size), "%zx", body.size());
  return request(method, target, "Transfer-Encoding: chunked\r\n") + size + "\r\n" + body + "\r\n0\r\n\r\n";
}

// A request pipelined behind an attack: if the attack's framing is misread, this is what
// runs next. It would reach the component (and be counted).
const std::string kSmuggled = request("GET", "/proxy/count");

const std::string kProviderAnswer = "Hello from the provider!";

// The provider's own refusal: exactly one answer with one of `statuses`, with
// `Connection: close` and no `Keep-Alive`, and then the connection really closed (nothing
// after it is answered).
void check_refused_and_closed(int port, const std::string &bytes, std::vector<int> statuses, Delivery delivery,
                              const std::string &what) {
  INFO(printable(what) << ", " << to_string(delivery));
  Connection c(port);
  c.send(bytes, delivery);
  auto res = c.read_response(3s);
  CHECK_MESSAGE(res, "no answer; got: " << printable(c.unread().substr(0, 200)));
  if (!res) return;
  INFO("answer: " << printable(res->head));
  CHECK(std::find(statuses.begin(), statuses.end(), res->status) != statuses.end());
  CHECK(lower(res->field("connection")) == "close");
  CHECK(res->count("keep-alive") == 0);
  CHECK(c.closed_within(3s));
  CHECK_MESSAGE(c.unread().empty(), "more after the refusal: " << printable(c.unread().substr(0, 200)));
}

void check_all_refused(int port, const std::vector<std::string> &attacks, std::vector<int> statuses,
                       const std::string &what) {
  for (auto delivery : kDeliveries)
    for (auto &attack : attacks) check_refused_and_closed(port, attack + kSmuggled, statuses, delivery, what + ": " + attack);
}

// GET /proxy/inspect with the given field lines, answered 200 with the component's view.
nlohmann::json inspect(int port, const std::string &request_bytes, Delivery delivery = Delivery::whole) {
  Connection c(port);
  c.send(request_bytes, delivery);
  auto res = c.read_response(3s);
  REQUIRE_MESSAGE(res, "no answer; got: " << printable(c.unread().substr(0, 200)));
  INFO("answer: " << printable(res->head + res->body.substr(0, 300)));
  REQUIRE(res->status == 200);
  return res->json();
}

// Fields as the demo component reports them: [[name, [values]], ...] -> the values of `name`.
nlohmann::json field_values(const nlohmann::json &inspected, const std::string &name) {
  for (auto &f : inspected["headers"])
    if (f[0] == name) return f[1];
  return nlohmann::json();
}

long proc_status_kib(pid_t pid, const std::string &key) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.compare(0, key.size() + 1, key + ":") == 0) return std::stol(line.substr(key.size() + 1));
  return -1;
}

}  // namespace

TEST_SUITE("edge") {

// ---- framing: request smuggling ----

TEST_CASE("edge: Content-Length together with Transfer-Encoding is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  std::string body = "5\r\nhello\r\n0\r\n\r\n";
  std::string length = "Content-Length: " + std::to_string(body.size()) + "\r\n";
  check_all_refused(lattice.http_port,
                    {request("POST", "/proxy/count", length + "Transfer-Encoding: chunked\r\n") + body,
                     request("POST", "/proxy/count", "Transfer-Encoding: chunked\r\n" + length) + body},
                    {400}, "CL+TE");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: two Content-Length fields, equal or not, are refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  check_all_refused(lattice.http_port,
                    {request("POST", "/proxy/count", "Content-Length: 5\r\nContent-Length: 5\r\n") + "hello",
                     request("POST", "/proxy/count", "Content-Length: 5\r\nContent-Length: 10\r\n") + "hello",
                     request("POST", "/proxy/count", "Content-Length: 10\r\nContent-Length: 5\r\n") + "hello"},
                    {400}, "two Content-Length");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: a Content-Length that is not plain decimal digits is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  std::vector<std::string> attacks;
  for (std::string value : {"+5", "0x5", "5 5", "5, 5", "-1", "", "12345678901234567890"})
    attacks.push_back(request("POST", "/proxy/count", "Content-Length: " + value + "\r\n") + "hello");
  check_all_refused(lattice.http_port, attacks, {400}, "invalid Content-Length");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: an unknown transfer coding is refused 501 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  std::vector<std::string> attacks;
  for (std::string coding : {"gzip", "foo"})
    attacks.push_back(request("POST", "/proxy/count", "Transfer-Encoding: " + coding + "\r\n") +
                      "5\r\nhello\r\n0\r\n\r\n");
  check_all_refused(lattice.http_port, attacks, {501}, "unknown coding");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: a Transfer-Encoding other than exactly chunked is refused 400 or 501 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  std::string body = "5\r\nhello\r\n0\r\n\r\n";
  std::vector<std::string> attacks;
  for (std::string te : {"identity, chunked", "chunked, chunked", "gzip, chunked", "chunked;q=1"})
    attacks.push_back(request("POST", "/proxy/count", "Transfer-Encoding: " + te + "\r\n") + body);
  attacks.push_back(request("POST", "/proxy/count", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") +
                    body);
  check_all_refused(lattice.http_port, attacks, {400, 501}, "Transfer-Encoding not exactly chunked");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: a chunk size that is not 1 to 16 hex digits is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  std::vector<std::string> attacks;
  for (std::string size : {"0x5", " 5", "+5", "5zz", "00000000000000005", "10000000000000000", ""})
    attacks.push_back(request("POST", "/proxy/count", "Transfer-Encoding: chunked\r\n") + size +
                      "\r\nhello\r\n0\r\n\r\n");
  check_all_refused(lattice.http_port, attacks, {400}, "bad chunk size");
  CHECK(lattice.invocations() == 0);  // no body byte was valid: nothing reached the component
}

TEST_CASE("edge: chunk data not followed by CRLF is refused 400 and the connection closed") {
  Lattice lattice;
  std::vector<std::string> attacks;
  for (std::string body : {"5\r\nhelloXX\r\n0\r\n\r\n", "5\r\nhello0\r\n\r\n", "5\r\nhello\n0\r\n\r\n"})
    attacks.push_back(request("POST", "/proxy/count", "Transfer-Encoding: chunked\r\n") + body);
  check_all_refused(lattice.http_port, attacks, {400}, "chunk without CRLF");
}

TEST_CASE("edge: chunk extensions are skipped and the body arrives whole") {
  Lattice lattice;
  std::string body = "5;name=value\r\nhello\r\n6;a;b=\"q;x\"\r\n world\r\n0;last\r\n\r\n";
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    Connection c(lattice.http_port);
    c.send(request("POST", "/proxy/echo", "Transfer-Encoding: chunked\r\n") + body + request("GET", "/"), delivery);
    auto echoed = c.read_response();
    REQUIRE(echoed);
    CHECK(echoed->status == 200);
    CHECK(echoed->body == "hello world");
    auto next = c.read_response();
    REQUIRE(next);
    CHECK(next->body == kProviderAnswer);
  }
}

TEST_CASE("edge: a request line that does not parse is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  check_all_refused(lattice.http_port, {"JUNK\r\n\r\n", "GET /proxy/count HTTP/1.1 x\r\nHost: x\r\n\r\n"}, {400},
                    "bad request line");
  CHECK(lattice.invocations() == 0);
}

// ---- bodies on any method, pipelining ----

TEST_CASE("edge: a body on GET, HEAD, OPTIONS, DELETE or PURGE reaches the component, and the next request follows it") {
  Lattice lattice;
  for (auto delivery : kDeliveries) {
    for (std::string method : {"GET", "HEAD", "OPTIONS", "DELETE", "PURGE"}) {
      INFO(method << ", " << to_string(delivery));
      Connection c(lattice.http_port);
      c.send(with_length(method, "/proxy/inspect", "ping") + request("GET", "/proxy/inspect?second"), delivery);
      auto first = c.read_response(3s, method == "HEAD");
      REQUIRE(first);
      CHECK(first->status == 200);
      CHECK(first->field("x-body-bytes") == "4");
      if (method != "HEAD") {
        auto seen = first->json();
        CHECK(seen["method"] == method);
        CHECK(seen["body"] == "ping");
      }
      auto second = c.read_response();
      REQUIRE(second);
      CHECK(second->status == 200);
      CHECK(second->json()["path"] == "/proxy/inspect?second");
    }
  }
}

TEST_CASE("edge: a body on a request to the provider's own route is consumed, never run as a request") {
  Lattice lattice;
  lattice.count_invocations();
  std::string hidden = request("GET", "/proxy/count");  // the body looks like a request
  for (auto delivery : kDeliveries) {
    for (std::string method : {"GET", "HEAD", "OPTIONS", "DELETE", "POST", "PUT", "PATCH"}) {
      INFO(method << ", " << to_string(delivery));
      Connection c(lattice.http_port);
      c.send(with_length(method, "/", hidden) + chunked(method, "/", hidden) + request("GET", "/"), delivery);
      for (int i = 0; i < 3; ++i) {
        auto res = c.read_response(3s, method == "HEAD" && i < 2);
        REQUIRE_MESSAGE(res, "answer " << i + 1 << " missing");
        CHECK(res->status == 200);
        if (method != "HEAD" || i == 2) CHECK(res->body == kProviderAnswer);
      }
    }
  }
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: two requests pipelined in one write are both answered, in order, byte-exact") {
  Lattice lattice;
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    Connection c(lattice.http_port);
    c.send(request("GET", "/proxy/bytes/100000") + request("GET", "/proxy/bytes/3"), delivery);
    auto first = c.read_response(3s);
    auto second = c.read_response(3s);
    REQUIRE(first);
    REQUIRE(second);
    CHECK(first->body == pattern_bytes(100000));
    CHECK(second->body == "abc");
  }
}

TEST_CASE("edge: three requests pipelined in one write (component, echo with body, provider) are answered in order") {
  Lattice lattice;
  std::string binary_body;
  for (int i = 0; i < 256; ++i) binary_body += static_cast<char>(i);
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    Connection c(lattice.http_port);
    c.send(request("GET", "/proxy/inspect?first") + with_length("POST", "/proxy/echo", binary_body) +
               request("GET", "/"),
           delivery);
    auto first = c.read_response(3s);
    auto second = c.read_response(3s);
    auto third = c.read_response(3s);
    REQUIRE(first);
    REQUIRE(second);
    REQUIRE(third);
    CHECK(first->json()["path"] == "/proxy/inspect?first");
    CHECK(second->body == binary_body);
    CHECK(third->body == kProviderAnswer);
  }
}

// ---- heads ----

TEST_CASE("edge: the last request a keep-alive connection may carry is answered with Connection: close") {
  Lattice lattice;
  Connection c(lattice.http_port);
  const int allowed = WRPC_HTTP_KEEPALIVE_MAX_COUNT;
  const int per_write = 50;
  std::string batch;
  for (int i = 0; i < per_write; ++i) batch += request("GET", "/");
  int answered = 0;
  while (answered < allowed) {
    REQUIRE(c.send(batch.substr(0, request("GET", "/").size() * std::min(per_write, allowed - answered))));
    for (int i = 0; i < per_write && answered < allowed; ++i) {
      auto res = c.read_response();
      REQUIRE(res);
      ++answered;
      CHECK(res->body == kProviderAnswer);
      if (answered < allowed) {
        CHECK(lower(res->field("connection")) != "close");
      } else {
        CHECK(lower(res->field("connection")) == "close");  // the client opens a new one
      }
    }
  }
  CHECK(c.closed_within(2s));
}

TEST_CASE("edge: a head over 64 KiB is refused 431 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  std::string fields;  // 70 lines of ~1 KB: over 64 KiB in bytes, under 100 lines
  for (int i = 0; i < 70; ++i) fields += "X-Fill-" + std::to_string(i) + ": " + std::string(1000, 'a') + "\r\n";
  check_all_refused(lattice.http_port, {request("GET", "/proxy/count", fields)}, {431}, "70 KB head");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: a head of 60 KB is served") {
  Lattice lattice;
  std::string fields;  // 60 lines of ~1 KB: under 64 KiB
  for (int i = 0; i < 60; ++i) fields += "X-Fill-" + std::to_string(i) + ": " + std::string(1000, 'a') + "\r\n";
  auto seen = inspect(lattice.http_port, request("GET", "/proxy/inspect", fields));
  CHECK(field_values(seen, "x-fill-59") == nlohmann::json::array({std::string(1000, 'a')}));
}

TEST_CASE("edge: more than 100 header lines are refused 431 and the connection closed; 100 are served") {
  Lattice lattice;
  lattice.count_invocations();
  std::string fields;  // Host and 99 more: 100 lines
  for (int i = 0; i < 99; ++i) fields += "X-N" + std::to_string(i) + ": v\r\n";
  auto seen = inspect(lattice.http_port, request("GET", "/proxy/inspect", fields));
  CHECK(field_values(seen, "x-n98") == nlohmann::json::array({"v"}));
  int before = lattice.invocations();
  check_all_refused(lattice.http_port, {request("GET", "/proxy/count", fields + "X-One-Too-Many: v\r\n")}, {431},
                    "101 header lines");
  CHECK(lattice.invocations() == before);
}

TEST_CASE("edge: a head unfinished after head_timeout_ms is answered 408 and the connection closed") {
  Lattice lattice("demo-component", {{"head_timeout_ms", "1000"}});
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    Connection c(lattice.http_port);
    auto start = Clock::now();
    c.send("GET / HTTP/1.1\r\nHost: x\r\n", delivery);
    auto res = c.read_response(4s);
    double took = testsupport::seconds_since(start);
    REQUIRE(res);
    CHECK(res->status == 408);
    CHECK(lower(res->field("connection")) == "close");
    CHECK(took >= 0.9);
    CHECK(took < 2.5);
    CHECK(c.closed_within(2s));
  }
}

TEST_CASE("edge: a head trickling in one byte every 100 ms is still cut at head_timeout_ms with 408") {
  Lattice lattice("demo-component", {{"head_timeout_ms", "1000"}});
  Connection c(lattice.http_port);
  std::string head = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(100, 's') + "\r\n\r\n";
  auto start = Clock::now();
  std::optional<Response> res;
  for (char byte : head) {  // at most 12 s; the answer should come after ~1 s
    if (!c.send(std::string(1, byte))) break;
    if ((res = c.read_response(100ms))) break;
  }
  double took = testsupport::seconds_since(start);
  REQUIRE_MESSAGE(res, "no answer while the head trickled in");
  CHECK(res->status == 408);
  CHECK(took >= 0.9);
  CHECK(took < 2.5);
  CHECK(c.closed_within(2s));
}

TEST_CASE("edge: an obs-folded header line is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  check_all_refused(lattice.http_port,
                    {request("GET", "/proxy/count", "X-Fold: a\r\n b\r\n"),
                     request("GET", "/proxy/count", "X-Fold: a\r\n\tb\r\n"),
                     "GET /proxy/count HTTP/1.1\r\n Host: x\r\n\r\n",
                     request("POST", "/proxy/count", "Content-Length: 5\r\nX-Hide: a\r\n Transfer-Encoding: chunked\r\n") +
                         "hello",
                     request("POST", "/proxy/count", "Transfer-Encoding:\r\n chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n"},
                    {400}, "obs-fold");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: a line ending in a bare LF is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  check_all_refused(lattice.http_port,
                    {"GET /proxy/count HTTP/1.1\nHost: x\r\n\r\n", "GET /proxy/count HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
                     "GET /proxy/count HTTP/1.1\r\nHost: x\r\n\n",
                     request("POST", "/proxy/count", "Content-Length: 5\r\nTransfer-Encoding: chunked\n") + "hello"},
                    {400}, "bare LF");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: whitespace between a field name and its colon is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  check_all_refused(lattice.http_port,
                    {"GET /proxy/count HTTP/1.1\r\nHost : x\r\n\r\n", request("GET", "/proxy/count", "X-A\t: b\r\n"),
                     request("POST", "/proxy/count", "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n") +
                         "hello"},
                    {400}, "whitespace before the colon");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: a control byte in a field name or value is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  std::vector<std::string> attacks = {request("GET", "/proxy/count", std::string("X\x01" "A: b\r\n")),
                                      request("GET", "/proxy/count", std::string("X-A: a\x01" "b\r\n")),
                                      request("GET", "/proxy/count", std::string("X-A: a\x7f" "b\r\n")),
                                      request("GET", "/proxy/count", std::string("X-A: a\0b\r\n", 10)),
                                      request("GET", "/proxy/count", std::string("X-A: a\rb\r\n"))};
  check_all_refused(lattice.http_port, attacks, {400}, "control byte");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: field values reach the component byte-exact, never percent-decoded") {
  Lattice lattice;
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    auto seen = inspect(lattice.http_port,
                        "GET /proxy/inspect HTTP/1.1\r\nHost: ex%41mple.com\r\nX: a%0d%0ab\r\nX-Tab: a\tb\r\n"
                        "X-Pad:   padded  \r\nContent-Type: text/plain%3b x=1\r\n\r\n",
                        delivery);
    CHECK(seen["authority"] == "ex%41mple.com");
    CHECK(field_values(seen, "x") == nlohmann::json::array({"a%0d%0ab"}));
    CHECK(field_values(seen, "x-tab") == nlohmann::json::array({"a\tb"}));
    CHECK(field_values(seen, "x-pad") == nlohmann::json::array({"padded"}));  // OWS is not part of a value
    CHECK(field_values(seen, "content-type") == nlohmann::json::array({"text/plain%3b x=1"}));
  }
}

TEST_CASE("edge: an HTTP/1.1 request without Host is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  check_all_refused(lattice.http_port, {"GET /proxy/count HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nX: y\r\n\r\n"}, {400},
                    "no Host");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: an HTTP/1.1 request with two Host fields is refused 400 and the connection closed") {
  Lattice lattice;
  lattice.count_invocations();
  check_all_refused(lattice.http_port,
                    {"GET /proxy/count HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                     "GET /proxy/count HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"},
                    {400}, "two Host");
  CHECK(lattice.invocations() == 0);
}

TEST_CASE("edge: an absolute-form target is served: path and authority come from it") {
  Lattice lattice;
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    auto seen = inspect(lattice.http_port,
                        "GET http://example.com/proxy/inspect?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", delivery);
    CHECK(seen["path"] == "/proxy/inspect?q=1");
    CHECK(seen["authority"] == "example.com");
  }
}

// ---- limits ----

TEST_CASE("edge: a Content-Length over max_content_len is refused 413 and the connection closed, on /proxy and on /") {
  Lattice lattice("demo-component", {{"max_content_len", "1024"}});
  lattice.count_invocations();
  std::string body(1025, 'x');
  check_all_refused(lattice.http_port, {with_length("POST", "/proxy/count", body), with_length("POST", "/", body),
                                        with_length("GET", "/", body)},
                    {413}, "Content-Length over the limit");
  CHECK(lattice.invocations() == 0);
  auto at_limit = inspect(lattice.http_port, with_length("POST", "/proxy/inspect", std::string(1024, 'x')));
  CHECK(at_limit["body"] == std::string(1024, 'x'));
}

TEST_CASE("edge: a chunked body growing over max_content_len is refused 413 and the connection closed, on /proxy and on /") {
  Lattice lattice("demo-component", {{"max_content_len", "1024"}});
  std::string chunk = "200\r\n" + std::string(512, 'x') + "\r\n";
  std::string body = chunk + chunk + chunk + "0\r\n\r\n";
  std::string te = "Transfer-Encoding: chunked\r\n";
  check_all_refused(lattice.http_port,
                    {request("POST", "/proxy/count", te) + body, request("POST", "/", te) + body,
                     request("GET", "/", te) + body},
                    {413}, "chunked body over the limit");
}

TEST_CASE("edge: refusing a 64 MiB chunked body on / grows the provider's memory by a few MiB at most") {
  Lattice lattice("demo-component", {{"max_content_len", "1024"}});
  pid_t pid = lattice.provider->pid();
  for (int i = 0; i < 3; ++i) {  // warm up: the first requests allocate for good
    Connection c(lattice.http_port);
    c.send(request("POST", "/", "Transfer-Encoding: chunked\r\n") + "10\r\n0123456789abcdef\r\n0\r\n\r\n");
    REQUIRE(c.read_response());
  }
  long peak_before = proc_status_kib(pid, "VmHWM");
  Connection c(lattice.http_port);
  c.send(request("POST", "/", "Transfer-Encoding: chunked\r\n"));
  std::string chunk = "10000\r\n" + std::string(65536, 'x') + "\r\n";
  size_t sent = 0;
  auto stop_at = Clock::now() + 20s;
  while (sent < (64u << 20) && Clock::now() < stop_at && c.send(chunk)) sent += 65536;
  auto res = c.read_response(3s);
  long growth_kib = proc_status_kib(pid, "VmHWM") - peak_before;
  MESSAGE("sent " << (sent >> 10) << " KiB of body before the provider stopped reading; peak RSS grew "
                  << growth_kib << " KiB");
  REQUIRE(res);
  CHECK(res->status == 413);
  CHECK(growth_kib < 8 * 1024);
}

// ---- methods, trailers, 100-continue ----

TEST_CASE("edge: a PURGE request reaches the component as method other(PURGE)") {
  Lattice lattice;
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    auto seen = inspect(lattice.http_port, request("PURGE", "/proxy/inspect"), delivery);
    CHECK(seen["method"] == "PURGE");
    CHECK(seen["method_other"] == "PURGE");
  }
}

TEST_CASE("edge: request trailers reach the component") {
  Lattice lattice;
  for (auto delivery : kDeliveries) {
    INFO(to_string(delivery));
    auto seen = inspect(lattice.http_port,
                        request("POST", "/proxy/inspect", "Transfer-Encoding: chunked\r\n") +
                            "5\r\nhello\r\n0\r\nx-trailer: v\r\nx-other: 1\r\n\r\n",
                        delivery);
    CHECK(seen["body"] == "hello");
    CHECK(seen["trailers"] == nlohmann::json::parse(R"([["x-trailer",["v"]],["x-other",["1"]]])"));
  }
}

TEST_CASE("edge: a chunked request without trailers reaches the component with trailers none") {
  Lattice lattice;
  auto seen = inspect(lattice.http_port,
                      request("POST", "/proxy/inspect", "Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n");
  CHECK(seen["body"] == "hello");
  CHECK(seen["trailers"].is_null());
}

TEST_CASE("edge: Expect: 100-continue is answered 100 Continue before the body is sent, then the final answer") {
  Lattice lattice;
  Connection c(lattice.http_port);
  c.send(request("POST", "/proxy/echo", "Content-Length: 5\r\nExpect: 100-continue\r\n"));
  auto interim = c.read_response(2s);
  REQUIRE_MESSAGE(interim, "no 100 Continue while the body was held back");
  CHECK(interim->head == "HTTP/1.1 100 Continue\r\n\r\n");
  c.send("hello");
  auto final_answer = c.read_response(3s);
  REQUIRE(final_answer);
  CHECK(final_answer->status == 200);
  CHECK(final_answer->body == "hello");
}

// ---- component answers ----

TEST_CASE("edge: a component status outside 200-599 is answered 502 and the connection closed") {
  Lattice lattice;
  for (auto delivery : kDeliveries)
    for (std::string status : {"100", "101", "199", "99", "600"})
      check_refused_and_closed(lattice.http_port, request("GET", "/proxy/status/" + status) + request("GET", "/"),
                               {502}, delivery, "component status " + status);
}

TEST_CASE("edge: a component's 204 and 304 carry no body, no Content-Length and no Transfer-Encoding") {
  Lattice lattice;
  for (std::string status : {"204", "304"}) {
    INFO("status " << status);
    Connection c(lattice.http_port);
    c.send(request("GET", "/proxy/status/" + status) + request("GET", "/"));
    auto res = c.read_response();
    REQUIRE(res);
    INFO("answer: " << printable(res->head));
    CHECK(res->status == std::stoi(status));
    CHECK(res->count("content-length") == 0);
    CHECK(res->count("transfer-encoding") == 0);
    auto next = c.read_response();  // a stray body byte would be read as this status line
    REQUIRE(next);
    CHECK(next->body == kProviderAnswer);
  }
}

TEST_CASE("edge: a component header value with a control byte other than HTAB is dropped") {
  Lattice lattice("fault-component");
  Connection c(lattice.http_port);
  c.send(request("GET", "/proxy/fault/header-control"));
  auto res = c.read_response();
  REQUIRE(res);
  INFO("answer: " << printable(res->head));
  CHECK(res->status == 200);
  CHECK(res->body == "control bytes in header values");
  for (std::string name : {"x-ctl-01", "x-ctl-7f", "x-ctl-nul", "x-ctl-cr"}) CHECK(res->count(name) == 0);
  CHECK(res->field("x-tab") == "a\tb");
  CHECK(res->field("x-ok") == "fine");
}

TEST_CASE("edge: a response head goes out at once while the component still produces the body") {
  Lattice lattice("fault-component");
  Connection c(lattice.http_port);
  auto sent = Clock::now();
  c.send(request("GET", "/proxy/fault/slow-body"));
  CHECK(c.head_within(400ms));  // the body follows 600 ms after the head
  auto res = c.read_response(3s);
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "late body");
  CHECK(Clock::now() - sent >= 600ms);
}

// ---- slow clients ----

TEST_CASE("edge: 10,000 clients stalled mid-head neither delay a new request nor hold threads") {
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = files.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &files);
  // 10,000 unless the hard limit is lower (then all it allows, less what the test needs).
  int clients = static_cast<int>(std::min<rlim_t>(10000, files.rlim_max > 200 ? files.rlim_max - 200 : 0));
  if (clients < 10000) MESSAGE("RLIMIT_NOFILE hard limit " << files.rlim_max << ": only " << clients << " clients");
  // The stalled heads must outlive the measurement, whatever the default head_timeout_ms.
  Lattice lattice("demo-component", {{"head_timeout_ms", "60000"}});
  pid_t pid = lattice.provider->pid();
  for (std::string warm_up : {request("GET", "/"), request("GET", "/proxy")}) {
    Connection c(lattice.http_port);
    c.send(warm_up);
    REQUIRE(c.read_response());
  }
  std::this_thread::sleep_for(500ms);
  int baseline = testsupport::thread_count(pid);

  std::vector<int> stalled;
  int peak = baseline;
  auto open_until = Clock::now() + 60s;
  const std::string half = "GET / HTTP/1.1\r\nHost: x\r\n";
  while (static_cast<int>(stalled.size()) < clients && Clock::now() < open_until) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) break;
    timeval connect_timeout{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &connect_timeout, sizeof(connect_timeout));
    auto addr = testsupport::loopback_address(lattice.http_port);
    if (::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0 ||
        ::send(fd, half.data(), half.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(half.size())) {
      ::close(fd);
      break;
    }
    stalled.push_back(fd);
    if (stalled.size() % 500 == 0) peak = std::max(peak, testsupport::thread_count(pid));
  }
  MESSAGE(stalled.size() << " stalled clients open");
  CHECK(static_cast<int>(stalled.size()) == clients);
  std::this_thread::sleep_for(500ms);  // the provider has taken them all in

  Connection fresh(lattice.http_port);
  auto start = Clock::now();
  fresh.send(request("GET", "/"));
  auto res = fresh.read_response(3s);
  double took = testsupport::seconds_since(start);
  int threads = testsupport::thread_count(pid);
  peak = std::max(peak, threads);
  MESSAGE("a new request beside them: " << (res ? std::to_string(res->status) : "no answer") << " after " << took
                                        << " s; threads: idle " << baseline << ", now " << threads << ", peak "
                                        << peak);
  CHECK(res);
  CHECK(took < 0.1);
  // One poll thread holds the stalled heads; workers (kMaxWorkers at most) only serve
  // complete ones; 64 is the allowance for everything else the process runs.
  CHECK(peak < baseline + 64 + kMaxWorkers);

  for (int fd : stalled) ::close(fd);
  // Back at the idle baseline, or below it: the warm-up's workers may have exited meanwhile.
  bool back = testsupport::eventually([&] { return testsupport::thread_count(pid) <= baseline + 2; }, 10s);
  MESSAGE("threads 10 s after the clients left: " << testsupport::thread_count(pid) << " (idle " << baseline << ")");
  CHECK(back);
}

}  // TEST_SUITE("edge")
