// ---- NATS client ----
//
// A minimal, production-minded NATS client: text protocol, one reader thread
// (parses and dispatches), one writer thread (coalesces everything published
// since its last write into one send), one wildcard inbox subscription for
// all request/reply traffic, reconnect with jittered backoff. TLS (tls:// URLs or
// servers that require it) with WRPC_HTTP_OPENSSL_SUPPORT.

#ifdef WRPC_HTTP_OPENSSL_SUPPORT
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <climits>
#endif

namespace wrpc_http {
namespace detail {
class NatsSocket;
}
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
  // One URL or a comma-separated list, tried in order: nats://[user:pass@|token@]host[:port];
  // tls://... asks for TLS (needs WRPC_HTTP_OPENSSL_SUPPORT).
  std::string url = "nats://127.0.0.1:4222";
  std::string name = "wrpc-http-provider";
  // JWT/nkey auth: with a seed, the server's nonce is signed (needs WRPC_HTTP_OPENSSL_SUPPORT);
  // with a JWT too, the JWT is sent, otherwise the seed's public nkey.
  std::string user_jwt;
  std::string user_seed;
  // TLS is used for tls:// URLs and whenever the server's INFO says tls_required (a
  // nats:// URL is then upgraded). The server certificate and host name are always
  // verified: against the system's CAs, or only against the PEM CAs in `tls_ca_file`.
  std::string tls_ca_file;
  // A client certificate (PEM chain) and its key, for servers that verify clients.
  std::string tls_cert_file, tls_key_file;
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

  // Socket (TLS when asked for) + INFO/CONNECT handshake; returns the connection or throws.
  std::unique_ptr<detail::NatsSocket> open_connection();
  void reader_loop();
  void writer_loop();
  bool reconnect();
  void lost_connection(const std::string &why);
  // Applies an INFO (max_payload, nonce) and returns it parsed.
  nlohmann::json handle_info(const std::string &json);
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

  // Owned by the reader thread (replaced on reconnect under out_mu_); the writer uses it
  // while connected_, and lost_connection() waits for the writer before destroying it.
  std::unique_ptr<detail::NatsSocket> socket_;
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

// Splits `url` into host, port and credentials. Accepts nats://, tls:// or no scheme.
struct NatsUrl {
  std::string host = "127.0.0.1";
  std::string port = "4222";
  std::string user, password, token;
  bool tls = false;  // tls://: the connection must be TLS
};

inline NatsUrl parse_nats_url(const std::string &url) {
  NatsUrl out;
  std::string rest = url;
  auto scheme_end = rest.find("://");
  if (scheme_end != std::string::npos) {
    std::string scheme = rest.substr(0, scheme_end);
    if (scheme != "nats" && scheme != "tls")
      throw nats::Error(nats::Error::Kind::connect, "unsupported NATS URL scheme '" + scheme + "' in " + url);
    out.tls = scheme == "tls";
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

#ifdef WRPC_HTTP_OPENSSL_SUPPORT

// OpenSSL's socket BIO writes with write(2), which raises SIGPIPE once the server has
// closed the connection; this one uses send(MSG_NOSIGNAL), as the plain path does.
// Its data is a pointer to the socket's fd.
inline BIO_METHOD *nosigpipe_socket_bio() {
  static BIO_METHOD *method = [] {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "nats socket");
    BIO_meth_set_create(m, [](BIO *bio) {
      BIO_set_init(bio, 1);
      return 1;
    });
    BIO_meth_set_write(m, [](BIO *bio, const char *data, int size) {
      BIO_clear_retry_flags(bio);
      ssize_t n = ::send(*static_cast<int *>(BIO_get_data(bio)), data, static_cast<size_t>(size), MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) BIO_set_retry_write(bio);
      return static_cast<int>(n);
    });
    BIO_meth_set_read(m, [](BIO *bio, char *data, int size) {
      BIO_clear_retry_flags(bio);
      ssize_t n = ::recv(*static_cast<int *>(BIO_get_data(bio)), data, static_cast<size_t>(size), 0);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) BIO_set_retry_read(bio);
      return static_cast<int>(n);
    });
    // TLS needs only flush (nothing to do on a socket); every other control is unsupported.
    BIO_meth_set_ctrl(m, [](BIO *, int cmd, long, void *) -> long { return cmd == BIO_CTRL_FLUSH ? 1 : 0; });
    return m;
  }();
  return method;
}

// OpenSSL's reason for the failure on this thread, for error messages: the first error
// queued is the cause (later ones only say which layer passed it on).
inline std::string openssl_reason() {
  unsigned long error = ERR_peek_error();
#ifdef ERR_SYSTEM_ERROR  // OpenSSL 3: errno packed into the error code
  if (ERR_SYSTEM_ERROR(error)) return std::strerror(ERR_GET_REASON(error));
#endif
  const char *reason = ERR_reason_error_string(error);
  return reason ? reason : "unknown OpenSSL error";
}

// Why a TLS read or write failed (`ssl_error` from SSL_get_error, `sys_errno` saved after the call).
inline std::string tls_failure(int ssl_error, int sys_errno) {
  if (ssl_error == SSL_ERROR_SSL) return "TLS error: " + openssl_reason();
  if (ssl_error == SSL_ERROR_SYSCALL && sys_errno != 0) return std::strerror(sys_errno);
  return "connection closed by server";
}

// A client TLS context from the options: verification of the server is always on.
inline std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> new_tls_context(const nats::Options &opts) {
  auto fail = [](const std::string &what) {
    throw nats::Error(nats::Error::Kind::connect, what + ": " + openssl_reason());
  };
  ERR_clear_error();  // so that openssl_reason() finds this failure's cause
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx) fail("cannot create a TLS context");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  // With renegotiation SSL_write could have to read; NatsSocket lets only the reader wait for input.
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION);
  // A long write returns after each record, so the reader gets its turns in between.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (!opts.tls_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), opts.tls_ca_file.c_str(), nullptr) != 1)
      fail("cannot load tls_ca_file '" + opts.tls_ca_file + "'");
  } else if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) {
    fail("cannot load the system's CA certificates");
  }
  if (opts.tls_cert_file.empty() != opts.tls_key_file.empty())
    throw nats::Error(nats::Error::Kind::connect, "tls_cert_file and tls_key_file must be given together");
  if (!opts.tls_cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), opts.tls_cert_file.c_str()) != 1)
      fail("cannot load tls_cert_file '" + opts.tls_cert_file + "'");
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), opts.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1)
      fail("cannot load tls_key_file '" + opts.tls_key_file + "'");
    if (SSL_CTX_check_private_key(ctx.get()) != 1) fail("tls_key_file does not match tls_cert_file");
  }
  return ctx;
}

#endif  // WRPC_HTTP_OPENSSL_SUPPORT

// The connection's byte stream: a TCP socket, or TLS over it after start_tls().
//
// The reader thread reads while the writer thread writes. A plain socket allows that as
// is, without locking. One SSL object does not: its calls are serialized by tls_mu_, on a
// non-blocking socket so that the mutex is never held while waiting in the kernel; a
// thread that has to wait releases it and polls, then tries again.
class NatsSocket {
public:
  explicit NatsSocket(int fd) : fd_(fd) {}
  ~NatsSocket() {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    // No close_notify: NATS frames its own messages, so a cut cannot pass for a complete one.
    if (ssl_) SSL_free(ssl_);
#endif
    ::close(fd_);
  }
  NatsSocket(const NatsSocket &) = delete;
  NatsSocket &operator=(const NatsSocket &) = delete;

  // Wakes both threads from any thread: reads then see the end, writes fail.
  void shutdown() { ::shutdown(fd_, SHUT_RDWR); }

  // Waits at most `timeout` until read_some() may have bytes.
  bool wait_readable(std::chrono::milliseconds timeout) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    // Decrypted bytes left over from the last record are not visible to poll().
    if (ssl_) {
      std::lock_guard<std::mutex> lk(tls_mu_);
      if (SSL_pending(ssl_) > 0) return true;
    }
#endif
    return wait_for(POLLIN, timeout);
  }

  // Returns the number of bytes read, 0 when none are there yet; throws
  // nats::Error(disconnected) with the reason once the connection has ended.
  size_t read_some(char *buf, size_t size) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (ssl_) return tls_read_some(buf, size);
#endif
    ssize_t n = ::recv(fd_, buf, size, 0);
    if (n > 0) return static_cast<size_t>(n);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 0;
    throw nats::Error(nats::Error::Kind::disconnected,
                      n == 0 ? "connection closed by server" : std::strerror(errno));
  }

  // False when the connection is broken.
  bool write_all(const char *data, size_t size) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (ssl_) return tls_write_all(data, size);
#endif
    return detail::write_all(fd_, data, size);
  }

#ifdef WRPC_HTTP_OPENSSL_SUPPORT
  // Client handshake (before the reader and writer threads use the socket), verifying the
  // certificate chain and that it names `host` (a DNS name, also sent as SNI, or an IP
  // address). Throws nats::Error(connect) with the reason.
  void start_tls(const nats::Options &opts, const std::string &host, std::chrono::steady_clock::time_point deadline);
#endif

private:
  bool wait_for(short events, std::chrono::milliseconds timeout) {
    pollfd pfd{fd_, events, 0};
    return ::poll(&pfd, 1, static_cast<int>(std::max<long long>(0, timeout.count()))) > 0;
  }

  int fd_;

#ifdef WRPC_HTTP_OPENSSL_SUPPORT
  // Bounds a wait for the socket during TLS I/O; the call is then simply tried again.
  static constexpr std::chrono::milliseconds kTlsRetryWait{100};

  size_t tls_read_some(char *buf, size_t size) {
    int n, error, sys_errno;
    {
      std::lock_guard<std::mutex> lk(tls_mu_);
      ERR_clear_error();
      n = SSL_read(ssl_, buf, static_cast<int>(std::min<size_t>(size, INT_MAX)));
      error = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, n);
      sys_errno = errno;
    }
    if (n > 0) return static_cast<size_t>(n);
    if (error == SSL_ERROR_WANT_READ) return 0;
    if (error == SSL_ERROR_WANT_WRITE) {  // TLS has to send something first (a key update)
      wait_for(POLLOUT, kTlsRetryWait);
      return 0;
    }
    throw nats::Error(nats::Error::Kind::disconnected, tls_failure(error, sys_errno));
  }

  bool tls_write_all(const char *data, size_t size) {
    while (size > 0) {
      int n, error;
      {
        std::lock_guard<std::mutex> lk(tls_mu_);
        ERR_clear_error();
        n = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(size, INT_MAX)));
        error = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, n);
      }
      if (n > 0) {
        data += n;
        size -= static_cast<size_t>(n);
      } else if (error == SSL_ERROR_WANT_WRITE) {
        wait_for(POLLOUT, kTlsRetryWait);
      } else if (error == SSL_ERROR_WANT_READ) {
        wait_for(POLLIN, kTlsRetryWait);
      } else {
        return false;
      }
    }
    return true;
  }

  SSL *ssl_ = nullptr;
  std::mutex tls_mu_;
#endif
};

#ifdef WRPC_HTTP_OPENSSL_SUPPORT
inline void NatsSocket::start_tls(const nats::Options &opts, const std::string &host,
                                  std::chrono::steady_clock::time_point deadline) {
  auto fail = [](const std::string &why) { throw nats::Error(nats::Error::Kind::connect, why); };
  auto ctx = new_tls_context(opts);
  ERR_clear_error();
  ssl_ = SSL_new(ctx.get());  // holds its own reference to the context
  BIO *bio = ssl_ ? BIO_new(nosigpipe_socket_bio()) : nullptr;
  if (!bio) fail("cannot create a TLS connection: " + openssl_reason());
  BIO_set_data(bio, &fd_);
  SSL_set_bio(ssl_, bio, bio);
  in6_addr ip;
  bool is_ip = ::inet_pton(AF_INET, host.c_str(), &ip) == 1 || ::inet_pton(AF_INET6, host.c_str(), &ip) == 1;
  if (is_ip) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl_, host.c_str());  // SNI is for names only (RFC 6066)
    SSL_set1_host(ssl_, host.c_str());
  }
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL, 0) | O_NONBLOCK);
  while (true) {
    ERR_clear_error();
    int rc = SSL_connect(ssl_);
    if (rc == 1) return;
    int error = SSL_get_error(ssl_, rc);
    int sys_errno = errno;
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) fail("TLS handshake timed out");
      wait_for(error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, left);
      continue;
    }
    long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK)
      fail(std::string("server certificate verification failed: ") + X509_verify_cert_error_string(verify));
    fail("TLS handshake failed: " + tls_failure(error, sys_errno));
  }
}
#endif

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
    // Blanks may also trail the operation ("PING \r\n"): then there are no arguments.
    auto args_start = line.find_first_not_of(" \t", space);
    std::string args = args_start == std::string::npos ? "" : line.substr(args_start);
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
    // A server never sends more than its max_payload; a hostile one must not make us buffer GiBs.
    if (total_ > WRPC_HTTP_NATS_MAX_MESSAGE_BYTES) fail("message larger than WRPC_HTTP_NATS_MAX_MESSAGE_BYTES");
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
      socket_ = open_connection();
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
    if (!socket_->write_all(wire.data(), wire.size()))
      throw Error(Error::Kind::connect, "connection lost while subscribing");
  }
  connected_ = true;
  writer_ = std::thread([this] { writer_loop(); });
  reader_ = std::thread([this] { reader_loop(); });
}

// Opens the socket to urls_[url_index_], reads INFO (always in plain text), switches to
// TLS when the URL or the server asks for it, sends CONNECT and waits for the server to
// accept it (PONG) or refuse it (-ERR). Returns the handshaken connection.
inline std::unique_ptr<detail::NatsSocket> Client::open_connection() {
  auto url = detail::parse_nats_url(urls_[url_index_]);
  auto socket = std::make_unique<detail::NatsSocket>(detail::tcp_connect(url.host, url.port, opts_.connect_timeout));
  auto fail = [&](const std::string &why) {
    throw Error(Error::Kind::connect, "NATS handshake with " + url.host + ":" + url.port + " failed: " + why);
  };
  auto deadline = std::chrono::steady_clock::now() + opts_.connect_timeout;
  std::string info_json, err_text;
  bool got_pong = false;
  detail::NatsParser parser({[](Message &, uint64_t) {}, [&](const std::string &j) { info_json = j; },
                             [&] { socket->write_all("PONG\r\n", 6); }, [&] { got_pong = true; }, [] {},
                             [&](const std::string &e) { err_text = e; }});
  auto read_until = [&](const std::function<bool()> &done) {
    char buf[4096];
    while (!done()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) fail("timed out");
      if (!socket->wait_readable(left)) continue;
      try {
        parser.feed(buf, socket->read_some(buf, sizeof(buf)));
      } catch (const Error &e) {
        fail(err_text.empty() ? e.what() : err_text);  // a server's -ERR says more than the close after it
      }
    }
  };
  read_until([&] { return !info_json.empty() || !err_text.empty(); });
  if (!err_text.empty()) fail(err_text);
  auto info = handle_info(info_json);

  // As in the Go client: a server that requires TLS upgrades a nats:// URL (verifying it
  // as always, so without its CA in tls_ca_file or the system store this fails); a tls://
  // URL insists on TLS.
  auto info_flag = [&](const char *key) { return info.contains(key) && info[key] == true; };
  bool server_requires_tls = info_flag("tls_required");
  if (url.tls && !server_requires_tls && !info_flag("tls_available"))
    fail("the URL asks for TLS (tls://) but the server does not offer it");
  bool use_tls = url.tls || server_requires_tls;
  if (use_tls) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    try {
      socket->start_tls(opts_, url.host, deadline);
    } catch (const Error &e) {
      fail(e.what());
    }
#else
    fail(std::string(url.tls ? "a tls:// URL" : "this server requires TLS, which") +
         " needs WRPC_HTTP_OPENSSL_SUPPORT");
#endif
  }

  nlohmann::json connect_json = {{"verbose", false},   {"pedantic", false},      {"headers", true},
                                 {"no_responders", true}, {"name", opts_.name}, {"lang", "cpp"},
                                 {"version", WRPC_HTTP_VERSION}, {"protocol", 1},   {"tls_required", use_tls}};
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
  if (!socket->write_all(hello.data(), hello.size())) fail("write failed");
  read_until([&] { return got_pong || !err_text.empty(); });
  if (!err_text.empty()) fail(err_text);
  return socket;
}

inline nlohmann::json Client::handle_info(const std::string &json) {
  try {
    auto info = nlohmann::json::parse(json);
    if (info.contains("max_payload") && info["max_payload"].is_number_unsigned())
      max_payload_ = info["max_payload"].get<size_t>();
    nonce_ = info.value("nonce", std::string());
    return info;
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
    if (socket_) socket_->shutdown();
  }
  out_cv_.notify_all();
  space_cv_.notify_all();
  pong_cv_.notify_all();
  if (reader_.joinable()) reader_.join();
  if (writer_.joinable()) writer_.join();
  socket_.reset();
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
    detail::NatsSocket *socket = socket_.get();
    lk.unlock();
    space_cv_.notify_all();
    bool ok = socket->write_all(chunk.data(), chunk.size());
    lk.lock();
    writer_busy_ = false;
    // A failed write means the connection is gone; the reader sees it too and reconnects.
    if (!ok && socket_.get() == socket) socket->shutdown();
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
    std::string lost_reason;
    if (socket_->wait_readable(std::chrono::milliseconds(250))) {
      try {
        size_t n = socket_->read_some(buf.data(), buf.size());
        if (n > 0) parser.feed(buf.data(), n);
      } catch (const Error &e) {
        lost_reason = e.what();
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
    socket_->shutdown();
    out_cv_.wait(lk, [&] { return !writer_busy_; });
    socket_.reset();
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
    std::unique_ptr<detail::NatsSocket> socket;
    try {
      socket = open_connection();
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
      if (!socket->write_all(wire.data(), wire.size())) continue;
      std::lock_guard<std::mutex> lk(out_mu_);
      socket_ = std::move(socket);
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
