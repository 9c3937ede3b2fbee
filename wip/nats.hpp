// ---- NATS client ----
//
// A minimal, production-minded NATS client: text protocol, one reader thread
// (parses and dispatches), one writer thread (coalesces everything published
// since its last write into one send), one wildcard inbox subscription for
// all request/reply traffic, reconnect with jittered backoff.

namespace wrpc_http {
namespace nats {

// Thrown for every NATS failure at the API edge; `kind` lets callers map it.
class Error : public std::runtime_error {
public:
  enum class Kind { connect, disconnected, timeout, no_responders, protocol, payload_too_large, closed };
  Error(Kind kind, const std::string &what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const { return kind_; }

private:
  Kind kind_;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Message {
  std::string subject;
  std::string reply;
  std::string data;
  Headers headers;
  int status = 0;  // from an HMSG status line such as `NATS/1.0 503`; 0 when absent
  std::string status_text;
  bool no_responders() const { return status == 503; }
  // Value of the first header named `name` (case-insensitive), or "".
  std::string header(const std::string &name) const;
};

using MessageHandler = std::function<void(Message &)>;

enum class LogLevel { trace, debug, info, warn, error };
using LogSink = std::function<void(LogLevel, const std::string &)>;

struct Options {
  // One URL or a comma-separated list, tried in order: nats://[user:pass@|token@]host[:port]
  std::string url = "nats://127.0.0.1:4222";
  std::string name = "wrpc-http-provider";
  // JWT/nkey auth: with a seed, the server's nonce is signed (needs WRPC_HTTP_OPENSSL_SUPPORT);
  // with a JWT too, the JWT is sent, otherwise the seed's public nkey.
  std::string user_jwt;
  std::string user_seed;
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds reconnect_wait_min{WRPC_HTTP_NATS_RECONNECT_MIN_MS};
  std::chrono::milliseconds reconnect_wait_max{WRPC_HTTP_NATS_RECONNECT_MAX_MS};
  int max_reconnect_attempts = -1;  // -1: keep trying until close()
  std::chrono::milliseconds ping_interval{WRPC_HTTP_NATS_PING_INTERVAL_MS};
  int max_pings_out = 2;
  // Bound on bytes waiting for the writer thread; publishers block (then fail) past it.
  size_t max_pending_bytes = WRPC_HTTP_NATS_MAX_PENDING_BYTES;
  std::chrono::milliseconds pending_wait{5000};
  LogSink log;
  std::function<void()> on_disconnected;  // from the reader thread
  std::function<void()> on_reconnected;   // from the reader thread
};

// Builds several messages into one buffer so that they reach the socket in one write.
class Batch {
public:
  explicit Batch(size_t max_payload) : max_payload_(max_payload) {}
  void publish(const std::string &subject, const char *data, size_t size, const std::string &reply = "",
               const Headers *headers = nullptr);
  void publish(const std::string &subject, const std::string &data, const std::string &reply = "",
               const Headers *headers = nullptr) {
    publish(subject, data.data(), data.size(), reply, headers);
  }
  bool empty() const { return wire_.empty(); }
  size_t size() const { return wire_.size(); }
  std::string take() { return std::move(wire_); }
  size_t max_payload() const { return max_payload_; }

private:
  size_t max_payload_;
  std::string wire_;
};

// Receives every message sent to one inbox token (`<inbox>.<token>` and below it).
struct InboxHandler {
  // `suffix` is the part of the subject after the token ("" or ".results.0.0" ...).
  std::function<void(const std::string &suffix, Message &)> on_message;
  // The connection was lost: nothing more will arrive for this token.
  std::function<void()> on_disconnected;
};

class Client {
public:
  explicit Client(Options options);
  ~Client();
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;

  // Connects (throws Error on failure) and starts the reader and writer threads.
  void connect();
  // Unsubscribes everything, flushes what was published, closes, joins the threads.
  void close();

  bool connected() const { return connected_.load(); }
  size_t max_payload() const { return max_payload_.load(); }
  Batch batch() const { return Batch(max_payload()); }

  void publish(const std::string &subject, const std::string &data, const std::string &reply = "",
               const Headers *headers = nullptr);
  void send(Batch &batch);

  uint64_t subscribe(const std::string &subject, MessageHandler handler, const std::string &queue = "");
  void unsubscribe(uint64_t sid, unsigned max_messages = 0);

  // Request/reply over the connection's single wildcard inbox subscription.
  Message request(const std::string &subject, const std::string &data, std::chrono::milliseconds timeout,
                  const Headers *headers = nullptr);

  // Routes everything under `<inbox>.<token>` to `handler` until release_inbox(token).
  // Returns the full reply subject `<inbox>.<token>`.
  std::string register_inbox(const std::string &token, InboxHandler handler);
  void release_inbox(const std::string &token);
  std::string next_inbox_token();

  // Round trip to the server: everything published before has been processed by it.
  void flush(std::chrono::milliseconds timeout);

private:
  struct Subscription {
    std::string subject, queue;
    MessageHandler handler;
    unsigned max_messages = 0, received = 0;
  };

  int open_connection();  // socket + INFO/CONNECT handshake; returns the fd or throws
  void reader_loop();
  void writer_loop();
  bool reconnect();
  void lost_connection(const std::string &why);
  void handle_info(const std::string &json);
  void dispatch(Message &msg, uint64_t sid);
  void dispatch_inbox(Message &msg);
  void enqueue(std::string &&wire);
  void log(LogLevel level, const std::string &text) const {
    if (opts_.log) opts_.log(level, text);
  }

  Options opts_;
  std::vector<std::string> urls_;
  size_t url_index_ = 0;
  std::string inbox_prefix_;  // `_INBOX.<random>`

  int fd_ = -1;  // owned by the reader thread; the writer uses it while connected_
  std::atomic<bool> connected_{false};
  std::atomic<bool> closing_{false};
  std::mutex close_mu_;
  std::atomic<size_t> max_payload_{1024 * 1024};
  std::string nonce_;

  std::thread reader_, writer_;

  std::mutex out_mu_;
  std::condition_variable out_cv_;      // writer waits for data
  std::condition_variable space_cv_;    // publishers wait for room
  std::string out_buf_;
  bool writer_busy_ = false;

  std::mutex subs_mu_;
  std::map<uint64_t, std::shared_ptr<Subscription>> subs_;
  uint64_t next_sid_ = 1;
  uint64_t inbox_sid_ = 0;

  std::mutex inbox_mu_;
  std::unordered_map<std::string, std::shared_ptr<InboxHandler>> inboxes_;
  std::atomic<uint64_t> next_token_{1};

  std::mutex pong_mu_;
  std::condition_variable pong_cv_;
  uint64_t pings_sent_ = 0, pongs_received_ = 0;
  std::atomic<int> pings_out_{0};
};

}  // namespace nats

namespace detail {

// Splits `url` into host, port and credentials. Accepts nats://, tls:// (later) or no scheme.
struct NatsUrl {
  std::string host = "127.0.0.1";
  std::string port = "4222";
  std::string user, password, token;
};

inline NatsUrl parse_nats_url(const std::string &url) {
  NatsUrl out;
  std::string rest = url;
  auto scheme_end = rest.find("://");
  if (scheme_end != std::string::npos) {
    std::string scheme = rest.substr(0, scheme_end);
    if (scheme != "nats")
      throw nats::Error(nats::Error::Kind::connect, "unsupported NATS URL scheme '" + scheme + "' in " + url);
    rest = rest.substr(scheme_end + 3);
  }
  auto slash = rest.find('/');
  if (slash != std::string::npos) rest = rest.substr(0, slash);
  auto at = rest.rfind('@');
  if (at != std::string::npos) {
    std::string userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    auto colon = userinfo.find(':');
    if (colon == std::string::npos) {
      out.token = userinfo;
    } else {
      out.user = userinfo.substr(0, colon);
      out.password = userinfo.substr(colon + 1);
    }
  }
  if (!rest.empty() && rest[0] == '[') {  // [v6]:port
    auto close = rest.find(']');
    if (close == std::string::npos) throw nats::Error(nats::Error::Kind::connect, "bad NATS URL " + url);
    out.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size() && rest[close + 1] == ':') out.port = rest.substr(close + 2);
  } else {
    auto colon = rest.rfind(':');
    if (colon != std::string::npos) {
      out.host = rest.substr(0, colon);
      out.port = rest.substr(colon + 1);
    } else if (!rest.empty()) {
      out.host = rest;
    }
  }
  if (out.host.empty()) out.host = "127.0.0.1";
  if (out.port.empty() || out.port.find_first_not_of("0123456789") != std::string::npos)
    throw nats::Error(nats::Error::Kind::connect, "bad port in NATS URL " + url);
  return out;
}

inline std::vector<std::string> split(const std::string &s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    auto pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return parts;
}

inline std::string random_token(size_t length) {
  static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<int> pick(0, 61);
  std::string out(length, '0');
  for (auto &c : out) c = alphabet[pick(rng)];
  return out;
}

// A NATS subject (for publishing) must be non-empty tokens separated by dots, without
// whitespace; wildcards are only for subscriptions.
inline bool valid_subject(const std::string &subject, bool allow_wildcards) {
  if (subject.empty()) return false;
  for (auto &token : split(subject, '.')) {
    if (token.empty()) return false;
    for (unsigned char c : token) {
      if (c <= ' ' || c == 0x7f) return false;
    }
    if (!allow_wildcards && (token == "*" || token == ">")) return false;
  }
  return true;
}

inline bool iequals(const std::string &a, const std::string &b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::tolower(x) == std::tolower(y); });
}

// Connects a TCP socket with a deadline. Returns the fd or throws.
inline int tcp_connect(const std::string &host, const std::string &port, std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo *res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0)
    throw nats::Error(nats::Error::Kind::connect, "cannot resolve " + host + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
  std::string last_error = "no address";
  for (auto *ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last_error = std::strerror(errno);
      ::close(fd);
      continue;
    }
    pollfd pfd{fd, POLLOUT, 0};
    int ready = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (ready == 1) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
    if (ready != 1 || so_error != 0) {
      last_error = ready == 1 ? std::strerror(so_error) : "connect timed out";
      ::close(fd);
      continue;
    }
    int flags = ::fcntl(fd, F_GETFL, 0);
    ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
  }
  throw nats::Error(nats::Error::Kind::connect, "cannot connect to " + host + ":" + port + ": " + last_error);
}

inline bool write_all(int fd, const char *data, size_t size) {
  while (size > 0) {
    ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Incremental parser of the server-to-client protocol. Never assumes that one read is
// one message: bytes are appended and complete operations are taken off the front.
class NatsParser {
public:
  struct Events {
    std::function<void(nats::Message &, uint64_t sid)> msg;
    std::function<void(const std::string &)> info;
    std::function<void()> ping, pong, ok;
    std::function<void(const std::string &)> err;
  };

  explicit NatsParser(Events events) : ev_(std::move(events)) {}

  // Throws nats::Error(protocol) on bytes that are not the NATS protocol.
  void feed(const char *data, size_t size) {
    buf_.append(data, size);
    while (step()) {
    }
    if (pos_ > 0 && (pos_ == buf_.size() || pos_ > 64 * 1024)) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
  }

  void reset() {
    buf_.clear();
    pos_ = 0;
    pending_ = false;
  }

private:
  static constexpr size_t kMaxControlLine = WRPC_HTTP_NATS_MAX_CONTROL_LINE;

  [[noreturn]] static void fail(const std::string &why) {
    throw nats::Error(nats::Error::Kind::protocol, "NATS protocol error: " + why);
  }

  static uint64_t parse_size(const std::string &s) {
    if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos)
      fail("bad size '" + s + "'");
    return std::stoull(s);
  }

  // Returns true when an operation was consumed and another may follow.
  bool step() {
    if (pending_) return take_payload();
    auto eol = buf_.find("\r\n", pos_);
    if (eol == std::string::npos) {
      if (buf_.size() - pos_ > kMaxControlLine) fail("control line too long");
      return false;
    }
    std::string line = buf_.substr(pos_, eol - pos_);
    pos_ = eol + 2;
    auto space = line.find_first_of(" \t");
    std::string op = line.substr(0, space);
    for (auto &c : op) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    std::string args = space == std::string::npos ? "" : line.substr(line.find_first_not_of(" \t", space));
    if (op == "MSG" || op == "HMSG") {
      start_message(op == "HMSG", args);
      return take_payload();
    }
    if (op == "PING") {
      ev_.ping();
    } else if (op == "PONG") {
      ev_.pong();
    } else if (op == "+OK") {
      ev_.ok();
    } else if (op == "-ERR") {
      ev_.err(args);
    } else if (op == "INFO") {
      ev_.info(args);
    } else {
      fail("unknown operation '" + op.substr(0, 16) + "'");
    }
    return true;
  }

  void start_message(bool with_headers, const std::string &args) {
    std::vector<std::string> fields;
    std::istringstream in(args);
    for (std::string f; in >> f;) fields.push_back(f);
    size_t need = with_headers ? 4 : 3;
    if (fields.size() != need && fields.size() != need + 1) fail("bad MSG arguments");
    msg_ = nats::Message{};
    msg_.subject = fields[0];
    sid_ = parse_size(fields[1]);
    if (fields.size() == need + 1) msg_.reply = fields[2];
    total_ = parse_size(fields.back());
    header_size_ = with_headers ? parse_size(fields[fields.size() - 2]) : 0;
    if (header_size_ > total_) fail("header size larger than message");
    pending_ = true;
  }

  bool take_payload() {
    if (buf_.size() - pos_ < total_ + 2) return false;
    if (buf_.compare(pos_ + total_, 2, "\r\n") != 0) fail("message not terminated by CRLF");
    if (header_size_ > 0) parse_headers(buf_.data() + pos_, header_size_);
    msg_.data.assign(buf_, pos_ + header_size_, total_ - header_size_);
    pos_ += total_ + 2;
    pending_ = false;
    ev_.msg(msg_, sid_);
    return true;
  }

  // `NATS/1.0[ status[ text]]\r\n(Name: value\r\n)*\r\n`
  void parse_headers(const char *data, size_t size) {
    std::string block(data, size);
    if (block.compare(0, 8, "NATS/1.0") != 0) fail("header block without NATS/1.0");
    auto eol = block.find("\r\n");
    if (eol == std::string::npos) fail("header block without CRLF");
    std::string status_line = block.substr(8, eol - 8);
    auto first = status_line.find_first_not_of(' ');
    if (first != std::string::npos) {
      status_line = status_line.substr(first);
      auto sp = status_line.find(' ');
      std::string code = status_line.substr(0, sp);
      if (code.size() != 3 || code.find_first_not_of("0123456789") != std::string::npos) fail("bad status");
      msg_.status = std::stoi(code);
      if (sp != std::string::npos) msg_.status_text = status_line.substr(sp + 1);
    }
    size_t pos = eol + 2;
    while (pos < block.size()) {
      auto line_end = block.find("\r\n", pos);
      if (line_end == std::string::npos) line_end = block.size();
      if (line_end == pos) break;  // blank line ends the block
      std::string line = block.substr(pos, line_end - pos);
      auto colon = line.find(':');
      if (colon == std::string::npos) fail("header line without ':'");
      auto value_start = line.find_first_not_of(' ', colon + 1);
      msg_.headers.emplace_back(line.substr(0, colon),
                                value_start == std::string::npos ? "" : line.substr(value_start));
      pos = line_end + 2;
    }
  }

  Events ev_;
  std::string buf_;
  size_t pos_ = 0;
  bool pending_ = false;
  nats::Message msg_;
  uint64_t sid_ = 0;
  size_t total_ = 0, header_size_ = 0;
};

inline std::string nats_header_block(const nats::Headers &headers) {
  std::string block = "NATS/1.0\r\n";
  for (auto &h : headers) block += h.first + ": " + h.second + "\r\n";
  block += "\r\n";
  return block;
}

}  // namespace detail

namespace nats {

inline std::string Message::header(const std::string &name) const {
  for (auto &h : headers)
    if (detail::iequals(h.first, name)) return h.second;
  return "";
}

inline void Batch::publish(const std::string &subject, const char *data, size_t size, const std::string &reply,
                           const Headers *headers) {
  if (!detail::valid_subject(subject, false)) throw Error(Error::Kind::protocol, "invalid subject '" + subject + "'");
  std::string header_block = headers && !headers->empty() ? detail::nats_header_block(*headers) : "";
  size_t total = header_block.size() + size;
  if (total > max_payload_)
    throw Error(Error::Kind::payload_too_large, "message of " + std::to_string(total) +
                                                    " bytes exceeds the server's max_payload of " +
                                                    std::to_string(max_payload_));
  if (header_block.empty()) {
    wire_ += "PUB " + subject + " ";
    if (!reply.empty()) wire_ += reply + " ";
    wire_ += std::to_string(size) + "\r\n";
  } else {
    wire_ += "HPUB " + subject + " ";
    if (!reply.empty()) wire_ += reply + " ";
    wire_ += std::to_string(header_block.size()) + " " + std::to_string(total) + "\r\n";
    wire_ += header_block;
  }
  wire_.append(data, size);
  wire_ += "\r\n";
}

inline Client::Client(Options options) : opts_(std::move(options)) {
  for (auto &u : detail::split(opts_.url.empty() ? "nats://127.0.0.1:4222" : opts_.url, ',')) {
    if (!u.empty()) urls_.push_back(u);
  }
  for (auto &u : urls_) detail::parse_nats_url(u);  // reject bad URLs up front
  inbox_prefix_ = "_INBOX." + detail::random_token(22);
}

inline Client::~Client() { close(); }

inline void Client::connect() {
  if (reader_.joinable()) throw Error(Error::Kind::connect, "already connected");
  std::string errors;
  for (size_t i = 0; i < urls_.size(); ++i) {
    url_index_ = i;
    try {
      fd_ = open_connection();
      errors.clear();
      break;
    } catch (const Error &e) {
      errors += (errors.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  if (!errors.empty()) throw Error(Error::Kind::connect, errors);
  {
    std::lock_guard<std::mutex> lk(subs_mu_);
    inbox_sid_ = next_sid_++;
    auto sub = std::make_shared<Subscription>();
    sub->subject = inbox_prefix_ + ".>";
    sub->handler = [this](Message &m) { dispatch_inbox(m); };
    subs_[inbox_sid_] = sub;
    std::string wire = "SUB " + sub->subject + " " + std::to_string(inbox_sid_) + "\r\n";
    if (!detail::write_all(fd_, wire.data(), wire.size()))
      throw Error(Error::Kind::connect, "connection lost while subscribing");
  }
  connected_ = true;
  writer_ = std::thread([this] { writer_loop(); });
  reader_ = std::thread([this] { reader_loop(); });
}

// Opens the socket to urls_[url_index_], reads INFO, sends CONNECT and waits for the
// server to accept it (PONG) or refuse it (-ERR). Returns the handshaken socket.
inline int Client::open_connection() {
  auto url = detail::parse_nats_url(urls_[url_index_]);
  int fd = detail::tcp_connect(url.host, url.port, opts_.connect_timeout);
  auto fail = [&](const std::string &why) {
    ::close(fd);
    throw Error(Error::Kind::connect, "NATS handshake with " + url.host + ":" + url.port + " failed: " + why);
  };
  auto deadline = std::chrono::steady_clock::now() + opts_.connect_timeout;
  std::string info_json, err_text;
  bool got_pong = false;
  detail::NatsParser parser({[](Message &, uint64_t) {}, [&](const std::string &j) { info_json = j; },
                             [&] { detail::write_all(fd, "PONG\r\n", 6); }, [&] { got_pong = true; }, [] {},
                             [&](const std::string &e) { err_text = e; }});
  auto read_until = [&](const std::function<bool()> &done) {
    char buf[4096];
    while (!done()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) fail("timed out");
      pollfd pfd{fd, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) fail(err_text.empty() ? "connection closed by server" : err_text);
      try {
        parser.feed(buf, static_cast<size_t>(n));
      } catch (const Error &e) {
        fail(e.what());
      }
    }
  };
  read_until([&] { return !info_json.empty() || !err_text.empty(); });
  if (!err_text.empty()) fail(err_text);
  handle_info(info_json);

  nlohmann::json connect_json = {{"verbose", false},   {"pedantic", false},      {"headers", true},
                                 {"no_responders", true}, {"name", opts_.name}, {"lang", "cpp"},
                                 {"version", WRPC_HTTP_VERSION}, {"protocol", 1},   {"tls_required", false}};
  if (!url.user.empty()) {
    connect_json["user"] = url.user;
    connect_json["pass"] = url.password;
  }
  if (!url.token.empty()) connect_json["auth_token"] = url.token;
  if (!opts_.user_seed.empty()) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    connect_json["sig"] = detail::nkeys::sign_nonce(opts_.user_seed, nonce_);
    if (!opts_.user_jwt.empty()) {
      connect_json["jwt"] = opts_.user_jwt;
    } else {
      connect_json["nkey"] = detail::nkeys::public_key_from_seed(opts_.user_seed);
    }
#else
    fail("nkey/JWT authentication needs WRPC_HTTP_OPENSSL_SUPPORT");
#endif
  }
  std::string hello = "CONNECT " + connect_json.dump() + "\r\nPING\r\n";
  if (!detail::write_all(fd, hello.data(), hello.size())) fail("write failed");
  read_until([&] { return got_pong || !err_text.empty(); });
  if (!err_text.empty()) fail(err_text);
  return fd;
}

inline void Client::handle_info(const std::string &json) {
  try {
    auto info = nlohmann::json::parse(json);
    if (info.contains("max_payload") && info["max_payload"].is_number_unsigned())
      max_payload_ = info["max_payload"].get<size_t>();
    nonce_ = info.value("nonce", std::string());
    if (info.value("tls_required", false))
      throw Error(Error::Kind::connect, "server requires TLS, which this client does not speak");
  } catch (const nlohmann::json::exception &e) {
    throw Error(Error::Kind::protocol, std::string("bad INFO from server: ") + e.what());
  }
}

inline void Client::close() {
  std::lock_guard<std::mutex> close_lock(close_mu_);
  if (closing_) return;
  if (connected_) {
    // Drain: unsubscribe everything, then a PING whose PONG proves the server has seen all
    // that was published before.
    std::string wire;
    {
      std::lock_guard<std::mutex> lk(subs_mu_);
      for (auto &s : subs_) wire += "UNSUB " + std::to_string(s.first) + "\r\n";
    }
    try {
      if (!wire.empty()) enqueue(std::move(wire));
      flush(std::chrono::milliseconds(2000));
    } catch (const Error &e) {
      log(LogLevel::debug, std::string("drain on close: ") + e.what());
    }
  }
  {
    std::lock_guard<std::mutex> lk(out_mu_);
    closing_ = true;
    connected_ = false;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  out_cv_.notify_all();
  space_cv_.notify_all();
  pong_cv_.notify_all();
  if (reader_.joinable()) reader_.join();
  if (writer_.joinable()) writer_.join();
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  std::unordered_map<std::string, std::shared_ptr<InboxHandler>> orphans;
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    orphans.swap(inboxes_);
  }
  for (auto &o : orphans)
    if (o.second->on_disconnected) o.second->on_disconnected();
}

inline void Client::enqueue(std::string &&wire) {
  std::unique_lock<std::mutex> lk(out_mu_);
  if (!connected_) throw Error(Error::Kind::disconnected, "not connected to NATS");
  if (out_buf_.size() + wire.size() > opts_.max_pending_bytes && !out_buf_.empty()) {
    bool room = space_cv_.wait_for(lk, opts_.pending_wait, [&] {
      return !connected_ || out_buf_.size() + wire.size() <= opts_.max_pending_bytes || out_buf_.empty();
    });
    if (!connected_) throw Error(Error::Kind::disconnected, "not connected to NATS");
    if (!room) throw Error(Error::Kind::timeout, "NATS write buffer full (server not reading)");
  }
  if (out_buf_.empty()) {
    out_buf_ = std::move(wire);
  } else {
    out_buf_ += wire;
  }
  if (!writer_busy_) out_cv_.notify_one();
}

inline void Client::writer_loop() {
  std::string chunk;
  std::unique_lock<std::mutex> lk(out_mu_);
  while (!closing_ || (connected_ && !out_buf_.empty())) {
    out_cv_.wait(lk, [&] { return closing_ || (connected_ && !out_buf_.empty()); });
    if (!connected_ || out_buf_.empty()) {
      if (closing_) break;
      continue;
    }
    chunk.clear();
    chunk.swap(out_buf_);
    writer_busy_ = true;
    int fd = fd_;
    lk.unlock();
    space_cv_.notify_all();
    bool ok = detail::write_all(fd, chunk.data(), chunk.size());
    lk.lock();
    writer_busy_ = false;
    // A failed write means the connection is gone; the reader sees it too and reconnects.
    if (!ok && fd_ == fd) ::shutdown(fd, SHUT_RDWR);
    out_cv_.notify_all();
  }
}

inline void Client::publish(const std::string &subject, const std::string &data, const std::string &reply,
                            const Headers *headers) {
  Batch b = batch();
  b.publish(subject, data, reply, headers);
  send(b);
}

inline void Client::send(Batch &batch) {
  if (closing_) throw Error(Error::Kind::closed, "NATS client is closed");
  if (!batch.empty()) enqueue(batch.take());
}

inline uint64_t Client::subscribe(const std::string &subject, MessageHandler handler, const std::string &queue) {
  if (!detail::valid_subject(subject, true)) throw Error(Error::Kind::protocol, "invalid subject '" + subject + "'");
  std::lock_guard<std::mutex> lk(subs_mu_);
  uint64_t sid = next_sid_++;
  auto sub = std::make_shared<Subscription>();
  sub->subject = subject;
  sub->queue = queue;
  sub->handler = std::move(handler);
  subs_[sid] = sub;
  std::string wire = "SUB " + subject + (queue.empty() ? "" : " " + queue) + " " + std::to_string(sid) + "\r\n";
  // While disconnected the subscription is only recorded; reconnect() sends it.
  try {
    enqueue(std::move(wire));
  } catch (const Error &e) {
    if (e.kind() != Error::Kind::disconnected) throw;
  }
  return sid;
}

inline void Client::unsubscribe(uint64_t sid, unsigned max_messages) {
  {
    std::lock_guard<std::mutex> lk(subs_mu_);
    auto it = subs_.find(sid);
    if (it == subs_.end()) return;
    if (max_messages == 0 || it->second->received >= max_messages) {
      subs_.erase(it);
    } else {
      it->second->max_messages = max_messages;
    }
  }
  try {
    enqueue("UNSUB " + std::to_string(sid) + (max_messages ? " " + std::to_string(max_messages) : "") + "\r\n");
  } catch (const Error &e) {
    if (e.kind() != Error::Kind::disconnected) throw;
  }
}

inline std::string Client::next_inbox_token() {
  // Counter-based tokens are unique per connection and cheap; the prefix is random.
  return std::to_string(next_token_.fetch_add(1));
}

inline std::string Client::register_inbox(const std::string &token, InboxHandler handler) {
  std::lock_guard<std::mutex> lk(inbox_mu_);
  inboxes_[token] = std::make_shared<InboxHandler>(std::move(handler));
  return inbox_prefix_ + "." + token;
}

inline void Client::release_inbox(const std::string &token) {
  std::lock_guard<std::mutex> lk(inbox_mu_);
  inboxes_.erase(token);
}

inline Message Client::request(const std::string &subject, const std::string &data,
                               std::chrono::milliseconds timeout, const Headers *headers) {
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false, lost = false;
    Message reply;
  };
  auto state = std::make_shared<State>();
  std::string token = next_inbox_token();
  InboxHandler handler;
  handler.on_message = [state](const std::string &suffix, Message &m) {
    if (!suffix.empty()) return;
    std::lock_guard<std::mutex> lk(state->mu);
    if (state->done) return;
    state->reply = std::move(m);
    state->done = true;
    state->cv.notify_all();
  };
  handler.on_disconnected = [state] {
    std::lock_guard<std::mutex> lk(state->mu);
    state->lost = true;
    state->cv.notify_all();
  };
  std::string reply_to = register_inbox(token, std::move(handler));
  struct Release {
    Client *c;
    std::string t;
    ~Release() { c->release_inbox(t); }
  } release{this, token};
  Batch b = batch();
  b.publish(subject, data, reply_to, headers);
  send(b);
  std::unique_lock<std::mutex> lk(state->mu);
  if (!state->cv.wait_for(lk, timeout, [&] { return state->done || state->lost; }))
    throw Error(Error::Kind::timeout, "request on '" + subject + "' timed out");
  if (!state->done) throw Error(Error::Kind::disconnected, "connection lost while waiting for a reply");
  if (state->reply.no_responders()) throw Error(Error::Kind::no_responders, "no responders on '" + subject + "'");
  return std::move(state->reply);
}

inline void Client::flush(std::chrono::milliseconds timeout) {
  uint64_t target;
  {
    std::lock_guard<std::mutex> lk(pong_mu_);
    target = ++pings_sent_;
  }
  enqueue("PING\r\n");
  std::unique_lock<std::mutex> lk(pong_mu_);
  if (!pong_cv_.wait_for(lk, timeout, [&] { return pongs_received_ >= target || !connected_; }))
    throw Error(Error::Kind::timeout, "flush timed out");
  if (pongs_received_ < target) throw Error(Error::Kind::disconnected, "connection lost during flush");
}

inline void Client::dispatch(Message &msg, uint64_t sid) {
  std::shared_ptr<Subscription> sub;
  {
    std::lock_guard<std::mutex> lk(subs_mu_);
    auto it = subs_.find(sid);
    if (it == subs_.end()) return;  // unsubscribed while in flight
    sub = it->second;
    if (sub->max_messages && ++sub->received >= sub->max_messages) subs_.erase(it);
  }
  try {
    sub->handler(msg);
  } catch (const std::exception &e) {
    log(LogLevel::error, "handler for '" + sub->subject + "' threw: " + e.what());
  }
}

inline void Client::dispatch_inbox(Message &msg) {
  // `_INBOX.<random>.<token>[.<suffix>]`
  size_t token_start = inbox_prefix_.size() + 1;
  if (msg.subject.size() <= token_start) return;
  size_t token_end = msg.subject.find('.', token_start);
  std::string token = msg.subject.substr(token_start, token_end - token_start);
  std::string suffix = token_end == std::string::npos ? "" : msg.subject.substr(token_end);
  std::shared_ptr<InboxHandler> handler;
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    auto it = inboxes_.find(token);
    if (it == inboxes_.end()) return;  // late reply for a finished call: dropped
    handler = it->second;
  }
  handler->on_message(suffix, msg);
}

inline void Client::reader_loop() {
  detail::NatsParser parser({[this](Message &m, uint64_t sid) { dispatch(m, sid); },
                             [this](const std::string &j) { handle_info(j); },
                             [this] {
                               try {
                                 enqueue("PONG\r\n");
                               } catch (const Error &) {
                               }
                             },
                             [this] {
                               pings_out_ = 0;
                               std::lock_guard<std::mutex> lk(pong_mu_);
                               ++pongs_received_;
                               pong_cv_.notify_all();
                             },
                             [] {},
                             [this](const std::string &e) { log(LogLevel::warn, "NATS server error: " + e); }});
  std::vector<char> buf(64 * 1024);
  auto last_ping = std::chrono::steady_clock::now();
  while (!closing_) {
    pollfd pfd{fd_, POLLIN, 0};
    int ready = ::poll(&pfd, 1, 250);
    std::string lost_reason;
    if (ready > 0) {
      ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
      if (n > 0) {
        try {
          parser.feed(buf.data(), static_cast<size_t>(n));
        } catch (const Error &e) {
          lost_reason = e.what();
        }
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        lost_reason = n == 0 ? "connection closed by server" : std::strerror(errno);
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (lost_reason.empty() && now - last_ping >= opts_.ping_interval) {
      last_ping = now;
      if (pings_out_ >= opts_.max_pings_out) {
        lost_reason = "server did not answer pings (stale connection)";
      } else {
        ++pings_out_;
        try {
          enqueue("PING\r\n");
        } catch (const Error &) {
        }
      }
    }
    if (lost_reason.empty()) continue;
    if (closing_) break;
    lost_connection(lost_reason);
    parser.reset();
    if (!reconnect()) break;
    last_ping = std::chrono::steady_clock::now();
  }
}

// Marks the connection down, drops unsent bytes (they belonged to calls that now fail) and
// tells every waiting inbox, so that no caller waits for a reply that cannot come.
inline void Client::lost_connection(const std::string &why) {
  log(LogLevel::warn, "NATS connection lost: " + why);
  {
    std::unique_lock<std::mutex> lk(out_mu_);
    connected_ = false;
    ::shutdown(fd_, SHUT_RDWR);
    out_cv_.wait(lk, [&] { return !writer_busy_; });
    ::close(fd_);
    fd_ = -1;
    out_buf_.clear();
  }
  space_cv_.notify_all();
  pong_cv_.notify_all();
  pings_out_ = 0;
  std::vector<std::shared_ptr<InboxHandler>> waiting;
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    for (auto &i : inboxes_) waiting.push_back(i.second);
  }
  for (auto &w : waiting)
    if (w->on_disconnected) w->on_disconnected();
  if (opts_.on_disconnected) opts_.on_disconnected();
}

// Retries with exponential backoff and jitter until connected, close() or the attempt
// limit. Restores every subscription before publishers may write again.
inline bool Client::reconnect() {
  std::mt19937_64 rng{std::random_device{}()};
  auto wait = opts_.reconnect_wait_min;
  for (int attempt = 1; !closing_; ++attempt) {
    if (opts_.max_reconnect_attempts >= 0 && attempt > opts_.max_reconnect_attempts) {
      log(LogLevel::error, "giving up reconnecting to NATS");
      return false;
    }
    std::uniform_int_distribution<long> jitter(0, wait.count() / 2 + 1);
    auto sleep_for = wait + std::chrono::milliseconds(jitter(rng));
    for (auto slept = std::chrono::milliseconds(0); slept < sleep_for && !closing_;
         slept += std::chrono::milliseconds(10))
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (closing_) return false;
    wait = std::min(wait * 2, opts_.reconnect_wait_max);
    url_index_ = (url_index_ + (attempt > 1 ? 1 : 0)) % urls_.size();
    int fd;
    try {
      fd = open_connection();
    } catch (const Error &e) {
      log(LogLevel::debug, std::string("reconnect attempt ") + std::to_string(attempt) + ": " + e.what());
      continue;
    }
    {
      // Holding subs_mu_ until connected_ is set: a concurrent subscribe() either is in
      // this list or waits and then sends its own SUB on the new connection.
      std::lock_guard<std::mutex> subs_lock(subs_mu_);
      std::string wire;
      for (auto &s : subs_)
        wire += "SUB " + s.second->subject + (s.second->queue.empty() ? "" : " " + s.second->queue) + " " +
                std::to_string(s.first) + "\r\n";
      if (!detail::write_all(fd, wire.data(), wire.size())) {
        ::close(fd);
        continue;
      }
      std::lock_guard<std::mutex> lk(out_mu_);
      fd_ = fd;
      connected_ = true;
    }
    log(LogLevel::info, "NATS reconnected after " + std::to_string(attempt) + " attempt(s)");
    if (opts_.on_reconnected) opts_.on_reconnected();
    return true;
  }
  return false;
}

}  // namespace nats
}  // namespace wrpc_http
