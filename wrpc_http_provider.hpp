//
//  wrpc_http_provider.hpp
//
//  A wasmCloud HTTP-server capability provider in one header: HTTP in (cpp-httplib),
//  wRPC over NATS out (`wrpc:http/incoming-handler@0.1.0.handle`), to a component that
//  exports `wasi:http/incoming-handler`.
//
//  API overview
//  ------------
//    wrpc_http::Provider     the provider process: host data, lattice subjects (health,
//                            links, config, shutdown), HTTP listeners, clean shutdown
//    wrpc_http::Forwarder    forwards HTTP requests to a component over wRPC; a Director
//                            (or wrpc_http::single_target) picks the component per request
//    wrpc_http::Launch       host data from stdin, or flags for local development
//    wrpc_http::HttpPolicy   CORS, cache_control, readonly_mode of a listener (the Rust
//                            provider's config keys), applied around every request
//    wrpc_http::Telemetry    OTLP/HTTP export of spans, metrics and logs, as otel_config asks
//    wrpc_http::Router       what Provider::serve hands your routes: cpp-httplib's Get, Post,
//                            ... by pattern, and nothing else of the listener's server
//
//        int main(int argc, char **argv) {
//          auto launch = wrpc_http::Launch::from(argc, argv, "http-http_component");
//          wrpc_http::Provider provider(launch.host_data);
//          auto proxy = provider.forwarder(wrpc_http::single_target(launch.target));
//          provider.serve([&](wrpc_http::Router &http) { proxy.mount(http, "/proxy"); });
//          return provider.run();
//        }
//
//    wrpc_http::EdgeServer          the HTTP edge: an httplib::Server whose connections,
//                                   framing and limits the provider owns (routes as usual; a
//                                   route may detach its response from its worker); HTTP/2
//                                   streams reach it as HTTP/1.1 requests (HTTP/2 front)
//    wrpc_http::nats::Client        a small NATS client (pub/sub, request/reply, reconnect, TLS)
//    wrpc_http::wrpc::OutgoingCall  one `handle` invocation, client side
//    wrpc_http::wrpc::Server        serves `handle` (the demo component is built on it)
//
//  Sections, in order: configuration macros, cpp-httplib versions, utilities, nkeys, NATS
//  client, wRPC codec, wRPC transport, provider runtime, HTTP edge, HTTP/2 front, telemetry (OTLP export),
//  HTTP policies (CORS, cache-control, read-only mode), HTTP bridge, provider.
//
//  A request's path (HTTP/1.1 in, wRPC over NATS out, and back)
//  -----------------------------------------------------------
//    socket      EdgeServer::serve (epoll loop) -> accept_all -> park: waits without a thread
//    edge        dispatch -> worker: serve_connection -> http1::parse_request_head
//                -> serve_request (EdgeBody frames the body, EdgeStream feeds cpp-httplib)
//    router      EdgeServer::process -> httplib::Server::process_request: the pre-routing
//                step (install_request_hooks: Telemetry::begin_request, CORS, readonly_mode),
//                then the route that matches
//    forwarder   Forwarder::handle: detail::edge_request(req) finds the edge's request (the
//                one place it crosses cpp-httplib's (req, res); a parameter from here on);
//                the Director picks the target; the head becomes a RequestHead
//    call        wrpc::OutgoingCall: invocation -> send_whole_request (the body is all here),
//                or await_handshake -> write_body ... finish_request (a streamed upload)
//    NATS        nats::Client::send -> NatsConnection::enqueue -> write_pending (or the
//                writer thread's writer_loop, when a write is under way) -> socket
//    detach      EdgeServer::detach: a detail::ForwardedResponse will write the response; the
//                worker returns from the route (cpp-httplib's answer to it is dropped) and
//                moves on, and the connection is the DetachedResponse's
//    reply       nats::Client::reader_loop -> NatsParser -> NatsSubscriptions::dispatch_inbox
//                -> OutgoingCall::State::on_message (the call's channels, AsyncChannels)
//                -> once the read is dispatched (Client::after_this_read), its progress
//                callback -> DetachedResponse::kick, on the reader thread
//    response    kick -> ForwardedResponse::advance: poll_response (the head: the post-routing
//                step, Telemetry::end_request and cache_control, then status and fields),
//                poll_body / poll_trailers (each piece framed), written with non-blocking
//                sends; a full socket waits in the edge loop (EPOLLOUT kicks it), a missing
//                piece waits for the call's next news; the edge loop's 100 ms tick kicks every
//                detached response for its deadlines (timeout_ms 504, body idle, write stall)
//    done        the edge loop: the response-done step (the spans end), then the connection's
//                next request goes to a worker, or it is parked, or closed
//  HTTP/2: a connection that opens with the preface (or chose h2 by ALPN) goes from its worker
//  to the edge loop (EdgeServer::hand_to_http2), where detail::Http2Connection runs nghttp2;
//  each stream's request is written as HTTP/1.1 into a socket pair whose other end takes the
//  path above from `edge` on (EdgeServer::serve_stream), and its answer is read back as frames.
//  A worker holds a forwarded request from `edge` until its call is sent (a streamed upload:
//  until its last byte); no thread waits for the component. Routes of your own (cpp-httplib
//  handlers) take the `router` step's place of the forwarder and hold their worker to the end.
//
//  Threads, and the lock order
//  ---------------------------
//  Threads: the NATS reader (reads, answers health, moves detached responses on with
//  non-blocking writes, hands everything that can wait to the control thread: it never waits
//  for a listener or a request), the NATS writer, a lame duck
//  mover while one runs, each listener's edge loop (which also runs its HTTP/2 sessions) and its workers, the provider's control
//  thread (link put/del and config updates, one at a time, in arrival order), one telemetry
//  exporter per enabled signal, and run()'s own thread (signals, shutdown). Each has one
//  owner that joins it.
//
//  A lock is taken only while holding locks to its left in these chains, never the reverse:
//    nats::Client    Client::close_mu_ -> { NatsSubscriptions::subs_mu_, NatsConnection::mu_,
//                                       Client::pong_mu_, NatsLameDuck::mu_ }
//                    NatsLameDuck::mu_ -> NatsSubscriptions::subs_mu_
//                    NatsSubscriptions::dispatch_mu_ -> subs_mu_
//                    subs_mu_ -> { inbox_mu_, NatsConnection::mu_, NatsSocket::tls_mu_ }
//    wRPC transport  AsyncChannels::mu -> ReaderStallAllowance::mu_
//  A detached response's kick takes none of these across another: DetachedResponse::mu_ only
//  to take its turn, the call's AsyncChannels::mu inside each poll, EdgeServer::mu_ to hand it
//  to the edge loop (on the reader thread, under dispatch_mu_, each of them alone).
//  Every other lock is a leaf: NatsServerPool::mu_, Client::read_end_mu_, NatsSubscriptions::inbox_mu_,
//  Client::pong_mu_, NatsConnection::mu_ (a write happens with it released), EdgeServer::mu_,
//  ElasticTaskQueue::mu_ (worker pools and the control queue), Telemetry::mu_, Logger::mu_,
//  Provider::links_mu_ and shutdown_mu_.
//  Nothing calls out (a log line, a log hook, a user callback, a route) while holding a lock,
//  with one deliberate exception: dispatch_mu_ is held across a subscription handler, so
//  handlers run one at a time; they may publish and subscribe (locks right of it) and must
//  return at once (the provider's hand a message to the control thread).
//
//  Configuration macros (define before including; defaults below):
//    WRPC_HTTP_OPENSSL_SUPPORT  nkey/JWT auth and TLS to NATS, HTTPS (needs OpenSSL: -lssl -lcrypto)
//    WRPC_HTTP_SODIUM_SUPPORT   opens link secrets sealed with xkeys (needs libsodium: -lsodium)
//    WRPC_HTTP_NGHTTP2_SUPPORT  HTTP/2 on every listener: h2c by prior knowledge, h2 by ALPN
//                               (needs nghttp2: -lnghttp2)
//    WRPC_HTTP_NATS_*           NATS client tuning
//    WRPC_HTTP_OTEL_*           OpenTelemetry export queue, batches, intervals, timeout
//    WRPC_HTTP_*                limits and timeouts of the wRPC transport and the HTTP edge
//
//  Needs: cpp-httplib 0.11.4 to 0.53.x, nlohmann/json, a C++17 compiler, POSIX sockets.
//
#ifndef WRPC_HTTP_PROVIDER_HPP
#define WRPC_HTTP_PROVIDER_HPP

#define WRPC_HTTP_VERSION "0.1.0"

#ifndef WRPC_HTTP_NATS_RECONNECT_MIN_MS
#define WRPC_HTTP_NATS_RECONNECT_MIN_MS 50
#endif
#ifndef WRPC_HTTP_NATS_RECONNECT_MAX_MS
#define WRPC_HTTP_NATS_RECONNECT_MAX_MS 2000
#endif
#ifndef WRPC_HTTP_NATS_PING_INTERVAL_MS
#define WRPC_HTTP_NATS_PING_INTERVAL_MS 20000
#endif
#ifndef WRPC_HTTP_NATS_MAX_PENDING_BYTES
#define WRPC_HTTP_NATS_MAX_PENDING_BYTES (8u * 1024u * 1024u)
#endif
#ifndef WRPC_HTTP_NATS_MAX_MESSAGE_BYTES
#define WRPC_HTTP_NATS_MAX_MESSAGE_BYTES (64u * 1024u * 1024u)
#endif
#ifndef WRPC_HTTP_NATS_MAX_CONTROL_LINE
#define WRPC_HTTP_NATS_MAX_CONTROL_LINE 4096
#endif
// Servers one client knows at most: the configured ones plus those a cluster announces.
#ifndef WRPC_HTTP_NATS_MAX_SERVERS
#define WRPC_HTTP_NATS_MAX_SERVERS 64
#endif
// Upper bound for one head value (request params, response result, trailers), and for any
// single string or list length declared inside one. A hostile length above it is an error at
// once instead of a wait for bytes that will never come.
#ifndef WRPC_HTTP_MAX_HEAD_BYTES
#define WRPC_HTTP_MAX_HEAD_BYTES (1024u * 1024u)
#endif
// A connection's NATS reader may be kept waiting by calls whose body consumers are behind (see
// WRPC_HTTP_BODY_STALL_BUDGET_MS) for this share of the time, in bursts of at most this long,
// however many calls are slow at once: nats-server buffers for the connection meanwhile and
// disconnects it past its max_pending (64 MiB), so the reader must read most of the time.
#ifndef WRPC_HTTP_NATS_READER_STALL_PERCENT
#define WRPC_HTTP_NATS_READER_STALL_PERCENT 10
#endif
#ifndef WRPC_HTTP_NATS_READER_STALL_BURST_MS
#define WRPC_HTTP_NATS_READER_STALL_BURST_MS 100
#endif
// Response (or request) body bytes one call may hold while its consumer is slower.
#ifndef WRPC_HTTP_MAX_BUFFERED_BODY
#define WRPC_HTTP_MAX_BUFFERED_BODY (16u * 1024u * 1024u)
#endif
// Beyond its own WRPC_HTTP_MAX_BUFFERED_BODY, a call whose consumer is behind may borrow up to
// WRPC_HTTP_BODY_OVERFLOW_PER_CALL more from one pool of WRPC_HTTP_BODY_OVERFLOW_POOL bytes
// shared by the process, returned as its consumer drains: a component that writes at memory
// speed to a client that reads at network speed needs a deeper buffer for a moment, which the
// NATS reader's bounded waits alone cannot give (they protect the other calls on the
// connection). Memory stays bounded: calls x own bound + the pool. 0 turns borrowing off.
#ifndef WRPC_HTTP_BODY_OVERFLOW_POOL
#define WRPC_HTTP_BODY_OVERFLOW_POOL (128u * 1024u * 1024u)
#endif
#ifndef WRPC_HTTP_BODY_OVERFLOW_PER_CALL
#define WRPC_HTTP_BODY_OVERFLOW_PER_CALL (48u * 1024u * 1024u)
#endif
// How long, in all, the NATS reader may wait for one call's consumer to make room in a full
// body buffer before the stream fails: a consumer that a busy machine descheduled now and then
// catches up (nats-server holds the messages meanwhile). Each wait is also bounded by the
// connection's allowance (WRPC_HTTP_NATS_READER_STALL_*), so a consumer that stopped costs the
// other calls at most one burst.
#ifndef WRPC_HTTP_BODY_STALL_BUDGET_MS
#define WRPC_HTTP_BODY_STALL_BUDGET_MS 1000
#endif
// Body bytes gathered before they leave as one NATS message (fewer, larger messages).
#ifndef WRPC_HTTP_BODY_FLUSH_BYTES
#define WRPC_HTTP_BODY_FLUSH_BYTES (256u * 1024u)
#endif
#ifndef WRPC_HTTP_BODY_IDLE_TIMEOUT_MS
#define WRPC_HTTP_BODY_IDLE_TIMEOUT_MS 30000
#endif
// wRPC server (demo component): calls served at once; more wait for a free worker.
#ifndef WRPC_HTTP_SERVER_WORKERS
#define WRPC_HTTP_SERVER_WORKERS 1024
#endif
// Request body limit when the config sets no `max_content_len`.
#ifndef WRPC_HTTP_DEFAULT_MAX_CONTENT_LEN
#define WRPC_HTTP_DEFAULT_MAX_CONTENT_LEN (100u * 1024u * 1024u)
#endif
#ifndef WRPC_HTTP_MAX_HOST_DATA_BYTES
#define WRPC_HTTP_MAX_HOST_DATA_BYTES (16u * 1024u * 1024u)
#endif
// HTTP edge: a connection holds a worker only while a complete request head is there and
// the request is served; idle and slow connections wait in the edge loop without one.
// Workers start on demand up to this many and exit after WRPC_HTTP_WORKER_IDLE_MS idle.
#ifndef WRPC_HTTP_MAX_WORKERS
#define WRPC_HTTP_MAX_WORKERS 1024
#endif
#ifndef WRPC_HTTP_WORKER_IDLE_MS
#define WRPC_HTTP_WORKER_IDLE_MS 5000
#endif
// Workers that start at once for waiting connections; past them, one more starts only when
// none has taken a connection for WRPC_HTTP_WORKER_STALL_MS (all blocked in slow routes or
// uploads), so a burst of requests is served by the threads there are (0: twice the cores).
#ifndef WRPC_HTTP_EAGER_WORKERS
#define WRPC_HTTP_EAGER_WORKERS 0
#endif
#ifndef WRPC_HTTP_WORKER_STALL_MS
#define WRPC_HTTP_WORKER_STALL_MS 10
#endif
// Request line plus header fields (and, separately, the trailer section), and their count.
#ifndef WRPC_HTTP_MAX_REQUEST_HEAD_BYTES
#define WRPC_HTTP_MAX_REQUEST_HEAD_BYTES (64u * 1024u)
#endif
#ifndef WRPC_HTTP_MAX_REQUEST_FIELDS
#define WRPC_HTTP_MAX_REQUEST_FIELDS 100
#endif
#ifndef WRPC_HTTP_MAX_REQUEST_TARGET_BYTES
#define WRPC_HTTP_MAX_REQUEST_TARGET_BYTES (8u * 1024u)
#endif
#ifndef WRPC_HTTP_MAX_CHUNK_EXTENSION_BYTES
#define WRPC_HTTP_MAX_CHUNK_EXTENSION_BYTES 4096
#endif
// A request head not complete this long after its first byte is answered 408 (config
// `head_timeout_ms` overrides it per listener).
#ifndef WRPC_HTTP_HEAD_TIMEOUT_MS
#define WRPC_HTTP_HEAD_TIMEOUT_MS 10000
#endif
// After an answer, a worker waits this long for the next request before parking the
// connection in the edge loop (saves a hand-off for busy keep-alive clients); it does not
// wait when other connections wait for a worker.
#ifndef WRPC_HTTP_KEEPALIVE_LINGER_MS
#define WRPC_HTTP_KEEPALIVE_LINGER_MS 20
#endif
#ifndef WRPC_HTTP_WRITE_TIMEOUT_SECOND
#define WRPC_HTTP_WRITE_TIMEOUT_SECOND 5
#endif
// On shutdown or listener close: how long running requests get to finish.
#ifndef WRPC_HTTP_DRAIN_TIMEOUT_MS
#define WRPC_HTTP_DRAIN_TIMEOUT_MS 3000
#endif
// HTTP/2 (WRPC_HTTP_NGHTTP2_SUPPORT): streams open at once on one connection; the header list
// of a request (names, values and 32 bytes each, as RFC 9113 counts it); the HPACK table this
// end keeps for the client; the flow-control windows granted to a stream's request body and to
// the whole connection (a body's bytes are acknowledged only once they went on to the route,
// so a connection holds at most its window of unread request bytes); how long an idle
// connection (no stream open) lives and how long the client gets to acknowledge the settings;
// and the frames that cost work but carry no request (PING, SETTINGS, RST_STREAM, PRIORITY,
// empty DATA): a burst of this many, then this many a second, past that GOAWAY.
#ifndef WRPC_HTTP_H2_MAX_CONCURRENT_STREAMS
#define WRPC_HTTP_H2_MAX_CONCURRENT_STREAMS 100
#endif
#ifndef WRPC_HTTP_H2_MAX_HEADER_LIST_BYTES
#define WRPC_HTTP_H2_MAX_HEADER_LIST_BYTES (64u * 1024u)
#endif
#ifndef WRPC_HTTP_H2_HPACK_TABLE_BYTES
#define WRPC_HTTP_H2_HPACK_TABLE_BYTES 4096
#endif
#ifndef WRPC_HTTP_H2_STREAM_WINDOW_BYTES
#define WRPC_HTTP_H2_STREAM_WINDOW_BYTES (256u * 1024u)
#endif
#ifndef WRPC_HTTP_H2_CONNECTION_WINDOW_BYTES
#define WRPC_HTTP_H2_CONNECTION_WINDOW_BYTES (1024u * 1024u)
#endif
#ifndef WRPC_HTTP_H2_IDLE_TIMEOUT_MS
#define WRPC_HTTP_H2_IDLE_TIMEOUT_MS 30000
#endif
#ifndef WRPC_HTTP_H2_SETTINGS_TIMEOUT_MS
#define WRPC_HTTP_H2_SETTINGS_TIMEOUT_MS 10000
#endif
#ifndef WRPC_HTTP_H2_CONTROL_FRAME_BURST
#define WRPC_HTTP_H2_CONTROL_FRAME_BURST 200
#endif
#ifndef WRPC_HTTP_H2_CONTROL_FRAMES_PER_SECOND
#define WRPC_HTTP_H2_CONTROL_FRAMES_PER_SECOND 100
#endif
// CONTINUATION frames after one HEADERS frame (CVE-2024-27316 sends them without end).
#ifndef WRPC_HTTP_H2_MAX_CONTINUATIONS
#define WRPC_HTTP_H2_MAX_CONTINUATIONS 8
#endif
// OpenTelemetry export (telemetry section): spans and log records waiting, each queue; more
// are dropped (counted). Sent in batches of WRPC_HTTP_OTEL_BATCH_SIZE at least every
// WRPC_HTTP_OTEL_EXPORT_INTERVAL_MS; metrics every WRPC_HTTP_OTEL_METRICS_INTERVAL_MS (or the
// environment's OTEL_METRIC_EXPORT_INTERVAL, outside a host). One
// export waits at most WRPC_HTTP_OTEL_TIMEOUT_MS and is retried WRPC_HTTP_OTEL_RETRIES times.
#ifndef WRPC_HTTP_OTEL_QUEUE_LIMIT
#define WRPC_HTTP_OTEL_QUEUE_LIMIT 4096
#endif
#ifndef WRPC_HTTP_OTEL_BATCH_SIZE
#define WRPC_HTTP_OTEL_BATCH_SIZE 512
#endif
#ifndef WRPC_HTTP_OTEL_EXPORT_INTERVAL_MS
#define WRPC_HTTP_OTEL_EXPORT_INTERVAL_MS 1000
#endif
#ifndef WRPC_HTTP_OTEL_METRICS_INTERVAL_MS
#define WRPC_HTTP_OTEL_METRICS_INTERVAL_MS 5000
#endif
#ifndef WRPC_HTTP_OTEL_TIMEOUT_MS
#define WRPC_HTTP_OTEL_TIMEOUT_MS 2000
#endif
#ifndef WRPC_HTTP_OTEL_RETRIES
#define WRPC_HTTP_OTEL_RETRIES 2
#endif
// Longest component id accepted as a NATS subject token.
#ifndef WRPC_HTTP_MAX_TARGET_BYTES
#define WRPC_HTTP_MAX_TARGET_BYTES 256
#endif
#ifndef WRPC_HTTP_KEEPALIVE_MAX_COUNT
#define WRPC_HTTP_KEEPALIVE_MAX_COUNT 1000
#endif
#ifndef WRPC_HTTP_KEEPALIVE_TIMEOUT_SECOND
#define WRPC_HTTP_KEEPALIVE_TIMEOUT_SECOND 5
#endif
#ifndef WRPC_HTTP_LISTEN_BACKLOG
#define WRPC_HTTP_LISTEN_BACKLOG 1024
#endif
#ifndef WRPC_HTTP_READ_TIMEOUT_SECOND
#define WRPC_HTTP_READ_TIMEOUT_SECOND 5
#endif

#include <httplib.h>
#include <nlohmann/json.hpp>

#ifdef WRPC_HTTP_OPENSSL_SUPPORT
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif
#ifdef WRPC_HTTP_SODIUM_SUPPORT
#include <sodium.h>
#endif
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
#include <nghttp2/nghttp2.h>
#endif

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <list>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

// ---- cpp-httplib versions ----
//
// The header builds on cpp-httplib's public API and on two extension points it keeps
// protected for subclasses, Server::process_request and Server::svr_sock_. What changed
// between the versions it supports is adapted here, chosen at compile time from
// CPPHTTPLIB_VERSION:
//   0.18  process_request takes the peer's and the local address (EdgeServer::process)
//   0.19  Stream::duration(): milliseconds since the stream began
//   0.20  Stream::is_writable() becomes wait_writable(), and is_readable() ("readable within
//         the timeout") becomes "bytes at hand", with wait_readable() for the old meaning
//   0.34  Stream::is_peer_alive(), by default wait_writable()
// Tested with 0.11.4 (Debian 12), 0.18.7 (Debian 13), 0.41.0 and 0.53.1; any other version
// outside 0.11.4 to 0.53.x stops the build here.

namespace wrpc_http {
namespace detail {

// "0.18.7" -> 18007: major * 1000000 + minor * 1000 + patch.
constexpr long httplib_version(long major, long minor, long patch) { return major * 1000000 + minor * 1000 + patch; }
constexpr long httplib_version(const char *text) {
  long parts[3] = {0, 0, 0};
  for (int part = 0; *text && part < 3; ++text) {
    if (*text == '.')
      ++part;
    else if (*text >= '0' && *text <= '9')
      parts[part] = parts[part] * 10 + (*text - '0');
    else
      break;
  }
  return httplib_version(parts[0], parts[1], parts[2]);
}

#ifdef CPPHTTPLIB_VERSION
constexpr long kHttplibVersion = httplib_version(CPPHTTPLIB_VERSION);
#define WRPC_HTTP_HTTPLIB_FOUND "this is cpp-httplib " CPPHTTPLIB_VERSION
#else
constexpr long kHttplibVersion = 0;  // older than 0.11: no CPPHTTPLIB_VERSION yet
#define WRPC_HTTP_HTTPLIB_FOUND "this cpp-httplib is older than 0.11"
#endif
static_assert(kHttplibVersion >= httplib_version(0, 11, 4) && kHttplibVersion < httplib_version(0, 54, 0),
              "wrpc_http_provider.hpp needs cpp-httplib 0.11.4 to 0.53.x; " WRPC_HTTP_HTTPLIB_FOUND);
#undef WRPC_HTTP_HTTPLIB_FOUND

// Server::process_request(stream, remote_addr, remote_port, local_addr, local_port, ...)
constexpr bool kProcessRequestTakesAddresses = kHttplibVersion >= httplib_version(0, 18, 0);

// httplib::Stream in the shape of the cpp-httplib in use, for a stream `Edge` (CRTP) that
// says what it means once: may_write() (asked before and while a response streams; may flush
// and wait), bytes_at_hand() (readable without waiting), elapsed_ms().
enum class StreamShape { is_writable, is_writable_duration, wait_writable };
constexpr StreamShape kStreamShape = kHttplibVersion < httplib_version(0, 19, 0)   ? StreamShape::is_writable
                                     : kHttplibVersion < httplib_version(0, 20, 0) ? StreamShape::is_writable_duration
                                                                                   : StreamShape::wait_writable;

template <class Edge, StreamShape = kStreamShape> class StreamAdapter;

// httplib::Stream as a base that depends on Edge: a shape's `override`s are checked only for the
// shape in use (clang checks them against a non-dependent base at once, and the other shapes'
// functions do not exist in this cpp-httplib).
template <class Edge> class StreamBase : public httplib::Stream {};

template <class Edge> class StreamAdapter<Edge, StreamShape::is_writable> : public StreamBase<Edge> {
public:
  bool is_readable() const override { return true; }  // read() waits by itself
  bool is_writable() const override { return edge().may_write(); }

protected:
  const Edge &edge() const { return static_cast<const Edge &>(*this); }
};

template <class Edge>
class StreamAdapter<Edge, StreamShape::is_writable_duration> : public StreamAdapter<Edge, StreamShape::is_writable> {
public:
  time_t duration() const override { return this->edge().elapsed_ms(); }
};

template <class Edge> class StreamAdapter<Edge, StreamShape::wait_writable> : public StreamBase<Edge> {
public:
  bool is_readable() const override { return edge().bytes_at_hand(); }
  bool wait_readable() const override { return true; }  // read() waits by itself
  bool wait_writable() const override { return edge().may_write(); }
  // is_peer_alive() (0.34), where cpp-httplib has it, keeps its default: wait_writable().
  time_t duration() const override { return edge().elapsed_ms(); }

protected:
  const Edge &edge() const { return static_cast<const Edge &>(*this); }
};

}  // namespace detail
}  // namespace wrpc_http

// ---- utilities ----

namespace wrpc_http {

// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it starts later,
// and returns the set: one thread then takes them synchronously (sigwait/sigtimedwait), so no
// handler ever runs in signal context. Call it first thing in main().
inline sigset_t block_termination_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

namespace detail {

// Gives freed heap pages back to the system. glibc keeps them otherwise, so a passing peak
// (a telemetry backlog while the collector was away) would stay in the RSS for good.
inline void release_free_heap() {
#ifdef __GLIBC__
  ::malloc_trim(0);
#endif
}

// `host` of `host:port` or `[v6]:port` (as it is when it has no port).
inline std::string lower(std::string s) {
  for (auto &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

inline std::string without_port(std::string host) {
  auto colon = host.rfind(':');
  if (colon != std::string::npos && host.back() != ']') host.resize(colon);
  return host;
}

// One base64 codec for both alphabets: they differ only in the last two
// characters and in whether '=' padding is written.
inline std::string base64_encode_with(const std::string &bytes,
                                      const char *alphabet, bool pad) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    auto n = (static_cast<unsigned char>(bytes[i]) << 16) |
             (static_cast<unsigned char>(bytes[i + 1]) << 8) |
             static_cast<unsigned char>(bytes[i + 2]);
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += alphabet[(n >> 6) & 63];
    out += alphabet[n & 63];
  }
  auto rest = bytes.size() - i;
  if (rest > 0) {
    auto n = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) { n |= static_cast<unsigned char>(bytes[i + 1]) << 8; }
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    if (rest == 2) { out += alphabet[(n >> 6) & 63]; }
    if (pad) { out.append(rest == 1 ? 2 : 1, '='); }
  }
  return out;
}

// Accepts input with or without '=' padding: peers differ on this and the
// padding carries no information.
inline std::string base64_decode_with(const std::string &text,
                                      const char *alphabet) {
  std::array<int, 256> value_of;
  value_of.fill(-1);
  for (int i = 0; i < 64; i++) {
    value_of[static_cast<unsigned char>(alphabet[i])] = i;
  }
  auto end = text.size();
  while (end > 0 && text.size() - end < 2 && text[end - 1] == '=') { end--; }
  if (end % 4 == 1) { throw std::runtime_error("base64: truncated input"); }

  std::string out;
  out.reserve(end * 3 / 4);
  unsigned int buffer = 0;
  int bits = 0;
  for (std::size_t i = 0; i < end; i++) {
    auto v = value_of[static_cast<unsigned char>(text[i])];
    if (v < 0) { throw std::runtime_error("base64: invalid character"); }
    buffer = (buffer << 6) | static_cast<unsigned int>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xff);
    }
  }
  return out;
}

constexpr const char *base64_std_alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr const char *base64_url_alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

inline std::string base64_encode(const std::string &bytes) {
  return base64_encode_with(bytes, base64_std_alphabet, true);
}
inline std::string base64_decode(const std::string &text) {
  return base64_decode_with(text, base64_std_alphabet);
}
inline std::string base64url_encode(const std::string &bytes) {
  return base64_encode_with(bytes, base64_url_alphabet, false);
}
inline std::string base64url_decode(const std::string &text) {
  return base64_decode_with(text, base64_url_alphabet);
}

}  // namespace detail
}  // namespace wrpc_http

// ---- nkeys: NATS keys, signatures, JWTs (OpenSSL) ----
//
// NATS "nkeys" are ed25519 (or, for xkeys, curve25519) keys written as
// base32 text with a one-byte type prefix and a CRC16 trailer:
//   public key: base32( prefix | 32 raw bytes | crc16 little-endian )
//   seed:       base32( seed-prefix+type spread over 2 bytes | 32 raw bytes | crc16 )
// The prefix bytes follow nats-io/nkeys (strkey.go) plus the `V` service
// prefix of wasmCloud's Rust nkeys crate.
//
// Byte buffers are std::string (as in cpp-httplib): they travel straight into
// JSON, NATS payloads and files without conversions.
//
// Errors are std::runtime_error. Their messages never quote the input key:
// a caller may pass a seed where a public key is expected, and a seed must
// never reach a log.

#ifdef WRPC_HTTP_OPENSSL_SUPPORT

namespace wrpc_http {
namespace detail {
namespace nkeys {

// ---- text encodings -------------------------------------------------------

inline std::string base32_encode(const std::string &bytes) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  std::string out;
  out.reserve((bytes.size() * 8 + 4) / 5);
  unsigned int buffer = 0;
  int bits = 0;
  for (unsigned char c : bytes) {
    buffer = (buffer << 8) | c;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += alphabet[(buffer >> bits) & 0x1f];
    }
  }
  if (bits > 0) { out += alphabet[(buffer << (5 - bits)) & 0x1f]; }
  return out;
}

inline std::string base32_decode(const std::string &text) {
  std::string out;
  out.reserve(text.size() * 5 / 8);
  unsigned int buffer = 0;
  int bits = 0;
  for (char c : text) {
    unsigned int value;
    if (c >= 'A' && c <= 'Z') {
      value = static_cast<unsigned int>(c - 'A');
    } else if (c >= '2' && c <= '7') {
      value = static_cast<unsigned int>(c - '2') + 26;
    } else {
      throw std::runtime_error("base32: invalid character");
    }
    buffer = (buffer << 5) | value;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xff);
    }
  }
  // A well-formed unpadded encoding leaves fewer than 5 unused bits; a whole
  // extra character means the text was truncated.
  if (bits >= 5) { throw std::runtime_error("base32: truncated input"); }
  return out;
}

// CRC-16/XMODEM (poly 0x1021, init 0), the checksum nkeys appends.
inline std::uint16_t crc16(const std::string &bytes) {
  std::uint16_t crc = 0;
  for (unsigned char c : bytes) {
    crc = static_cast<std::uint16_t>(crc ^ (c << 8));
    for (int i = 0; i < 8; i++) {
      crc = static_cast<std::uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021
                                                       : (crc << 1));
    }
  }
  return crc;
}

// ---- key encoding ---------------------------------------------------------

// The value of each enumerator is its nkeys prefix byte (a multiple of 8, so
// the first base32 character of the key is the letter in the comment).
enum class key_type : unsigned char {
  account = 0,         // A
  server = 13 << 3,    // N (also used for wasmCloud host ids)
  operator_ = 14 << 3, // O
  user = 20 << 3,      // U
  service = 21 << 3,   // V (wasmCloud capability providers)
  curve = 23 << 3,     // X (curve25519 "xkeys": encryption, not signing)
};

constexpr unsigned char seed_prefix_byte = 18 << 3; // S
constexpr std::size_t raw_key_size = 32;

inline bool is_known_key_type(unsigned char prefix) {
  switch (static_cast<key_type>(prefix)) {
  case key_type::account:
  case key_type::server:
  case key_type::operator_:
  case key_type::user:
  case key_type::service:
  case key_type::curve: return true;
  }
  return false;
}

inline std::string random_bytes(std::size_t count) {
  std::string out(count, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char *>(&out[0]),
                 static_cast<int>(count)) != 1) {
    throw std::runtime_error("nkeys: the OpenSSL random generator failed");
  }
  return out;
}

// Overwrites secret bytes before the memory is released.
inline void wipe(std::string &secret) {
  if (!secret.empty()) { OPENSSL_cleanse(&secret[0], secret.size()); }
  secret.clear();
}

inline std::string append_crc_and_encode(std::string raw) {
  auto crc = crc16(raw);
  raw += static_cast<char>(crc & 0xff); // little-endian, as nkeys writes it
  raw += static_cast<char>(crc >> 8);
  auto text = base32_encode(raw);
  wipe(raw);
  return text;
}

// Decodes the base32 text and returns it without the checked CRC trailer.
inline std::string decode_and_check_crc(const std::string &text,
                                        const char *what) {
  std::string raw;
  try {
    raw = base32_decode(text);
  } catch (const std::runtime_error &) {
    throw std::runtime_error(std::string("nkeys: ") + what +
                             " is not valid base32");
  }
  if (raw.size() != raw_key_size + 3 && raw.size() != raw_key_size + 4) {
    wipe(raw);
    throw std::runtime_error(std::string("nkeys: ") + what +
                             " has the wrong length");
  }
  auto body = raw.substr(0, raw.size() - 2);
  auto expected = static_cast<std::uint16_t>(
      static_cast<unsigned char>(raw[raw.size() - 2]) |
      (static_cast<unsigned char>(raw[raw.size() - 1]) << 8));
  wipe(raw);
  if (crc16(body) != expected) {
    wipe(body);
    throw std::runtime_error(std::string("nkeys: ") + what +
                             " has a bad checksum");
  }
  return body;
}

inline std::string encode_public_key(key_type type, const std::string &raw) {
  if (raw.size() != raw_key_size) {
    throw std::runtime_error("nkeys: a public key must be 32 bytes");
  }
  return append_crc_and_encode(static_cast<char>(type) + raw);
}

// Returns the raw 32 bytes of an encoded public key of the expected type.
inline std::string decode_public_key(const std::string &public_key,
                                     key_type expected) {
  auto body = decode_and_check_crc(public_key, "public key");
  if (body.size() != 1 + raw_key_size ||
      static_cast<unsigned char>(body[0]) != static_cast<unsigned char>(expected)) {
    throw std::runtime_error("nkeys: public key is not of the expected type");
  }
  return body.substr(1);
}

// The type of an encoded public key, after checking its CRC.
inline key_type public_key_type(const std::string &public_key) {
  auto body = decode_and_check_crc(public_key, "public key");
  auto prefix = static_cast<unsigned char>(body[0]);
  if (body.size() != 1 + raw_key_size || !is_known_key_type(prefix)) {
    throw std::runtime_error("nkeys: not a public key of a known type");
  }
  return static_cast<key_type>(prefix);
}

// The seed prefix (5 bits) and the key type (a multiple of 8, so its low 3
// bits are free) are packed into two bytes so that both letters of "SA",
// "SU", "SV"... are readable in the base32 text.
inline std::string encode_seed(key_type type, const std::string &raw_seed) {
  if (raw_seed.size() != raw_key_size) {
    throw std::runtime_error("nkeys: a seed must be 32 bytes");
  }
  auto type_byte = static_cast<unsigned char>(type);
  std::string raw;
  raw += static_cast<char>(seed_prefix_byte | (type_byte >> 5));
  raw += static_cast<char>((type_byte & 31) << 3);
  raw += raw_seed;
  return append_crc_and_encode(std::move(raw));
}

// A decoded seed. The raw bytes are wiped when it goes out of scope.
struct decoded_seed {
  key_type type = key_type::user;
  std::string raw; // 32 bytes: ed25519 private key or curve25519 scalar

  decoded_seed() = default;
  decoded_seed(const decoded_seed &) = default;
  decoded_seed &operator=(const decoded_seed &) = default;
  ~decoded_seed() { wipe(raw); }
};

inline decoded_seed decode_seed(const std::string &seed) {
  auto body = decode_and_check_crc(seed, "seed");
  if (body.size() != 2 + raw_key_size) {
    wipe(body);
    throw std::runtime_error("nkeys: seed has the wrong length");
  }
  auto b0 = static_cast<unsigned char>(body[0]);
  auto b1 = static_cast<unsigned char>(body[1]);
  auto type_byte = static_cast<unsigned char>(((b0 & 7) << 5) | ((b1 & 248) >> 3));
  if ((b0 & 248) != seed_prefix_byte || !is_known_key_type(type_byte)) {
    wipe(body);
    throw std::runtime_error("nkeys: not a seed of a known type");
  }
  decoded_seed out;
  out.type = static_cast<key_type>(type_byte);
  out.raw = body.substr(2);
  wipe(body);
  return out;
}

// ---- OpenSSL glue ---------------------------------------------------------

struct evp_pkey_deleter {
  void operator()(EVP_PKEY *key) const { EVP_PKEY_free(key); }
};
struct evp_md_ctx_deleter {
  void operator()(EVP_MD_CTX *ctx) const { EVP_MD_CTX_free(ctx); }
};
using evp_pkey_ptr = std::unique_ptr<EVP_PKEY, evp_pkey_deleter>;
using evp_md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, evp_md_ctx_deleter>;

inline evp_pkey_ptr private_key_from_seed(const decoded_seed &seed) {
  auto algorithm = seed.type == key_type::curve ? EVP_PKEY_X25519 : EVP_PKEY_ED25519;
  evp_pkey_ptr key(EVP_PKEY_new_raw_private_key(
      algorithm, nullptr,
      reinterpret_cast<const unsigned char *>(seed.raw.data()), seed.raw.size()));
  if (!key) { throw std::runtime_error("nkeys: OpenSSL rejected the seed"); }
  return key;
}

inline std::string raw_public_key(const decoded_seed &seed) {
  auto key = private_key_from_seed(seed);
  std::string raw(raw_key_size, '\0');
  auto size = raw.size();
  if (EVP_PKEY_get_raw_public_key(
          key.get(), reinterpret_cast<unsigned char *>(&raw[0]), &size) != 1 ||
      size != raw_key_size) {
    throw std::runtime_error("nkeys: could not derive the public key");
  }
  return raw;
}

// ---- keys and signatures --------------------------------------------------

// ed25519 public key for A/N/O/U/V seeds; X25519 base-point multiple for SX.
inline std::string public_key_from_seed(const std::string &seed) {
  auto decoded = decode_seed(seed);
  return encode_public_key(decoded.type, raw_public_key(decoded));
}

struct key_pair {
  std::string seed; // secret: store with mode 0600, never log
  std::string public_key;
};

inline key_pair create_key_pair(key_type type) {
  auto raw = random_bytes(raw_key_size);
  key_pair pair;
  pair.seed = encode_seed(type, raw);
  wipe(raw);
  pair.public_key = public_key_from_seed(pair.seed);
  return pair;
}

inline decoded_seed decode_signing_seed(const std::string &seed) {
  auto decoded = decode_seed(seed);
  if (decoded.type == key_type::curve) {
    throw std::runtime_error("nkeys: curve (X) keys cannot sign");
  }
  return decoded;
}

// Raw 64-byte ed25519 signature of `message`.
inline std::string sign(const std::string &seed, const std::string &message) {
  auto key = private_key_from_seed(decode_signing_seed(seed));
  evp_md_ctx_ptr ctx(EVP_MD_CTX_new());
  std::string signature(64, '\0');
  auto size = signature.size();
  // ed25519 hashes internally: no digest is given to DigestSignInit.
  if (!ctx ||
      EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char *>(&signature[0]),
                     &size,
                     reinterpret_cast<const unsigned char *>(message.data()),
                     message.size()) != 1 ||
      size != signature.size()) {
    throw std::runtime_error("nkeys: ed25519 signing failed");
  }
  return signature;
}

// Checks a raw ed25519 signature against an encoded public key of any
// signing type (A, N, O, U, V).
inline bool verify(const std::string &public_key, const std::string &message,
                   const std::string &signature) {
  auto type = public_key_type(public_key);
  if (type == key_type::curve) {
    throw std::runtime_error("nkeys: curve (X) keys cannot verify signatures");
  }
  auto raw = decode_public_key(public_key, type);
  evp_pkey_ptr key(EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr,
      reinterpret_cast<const unsigned char *>(raw.data()), raw.size()));
  evp_md_ctx_ptr ctx(EVP_MD_CTX_new());
  if (!key || !ctx ||
      EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    throw std::runtime_error("nkeys: could not set up ed25519 verification");
  }
  return EVP_DigestVerify(
             ctx.get(), reinterpret_cast<const unsigned char *>(signature.data()),
             signature.size(),
             reinterpret_cast<const unsigned char *>(message.data()),
             message.size()) == 1;
}

// The `sig` field of a NATS CONNECT: the server's INFO nonce signed with the
// user seed, base64url without padding (nats.go: base64.RawURLEncoding).
inline std::string sign_nonce(const std::string &user_seed,
                              const std::string &nonce) {
  return base64url_encode(sign(user_seed, nonce));
}

// ---- JWTs -----------------------------------------------------------------

// wascap (wasmCloud claims, e.g. a provider archive's claims.jwt).
constexpr const char *wascap_jwt_header = R"({"typ":"jwt","alg":"Ed25519"})";
// nats-io/jwt v2 (user/account JWTs).
constexpr const char *nats_jwt_header = R"({"typ":"JWT","alg":"ed25519-nkey"})";

// Both formats sign the text "base64url(header).base64url(claims)" with the
// issuer's ed25519 seed. `claims_json` is serialized by the caller.
inline std::string encode_jwt(const std::string &claims_json,
                              const std::string &issuer_seed,
                              const std::string &header_json = wascap_jwt_header) {
  auto signing_input =
      base64url_encode(header_json) + "." + base64url_encode(claims_json);
  return signing_input + "." + base64url_encode(sign(issuer_seed, signing_input));
}

struct jwt_parts {
  std::string header_json;
  std::string claims_json;
  std::string signing_input; // "header.claims" as it appeared in the token
  std::string signature;     // raw bytes
};

// Splits and decodes a JWT WITHOUT checking its signature: use it to read
// the issuer, then call verify_jwt with that issuer's public key.
inline jwt_parts decode_jwt(const std::string &token) {
  auto first = token.find('.');
  auto second = first == std::string::npos ? first : token.find('.', first + 1);
  if (second == std::string::npos || token.find('.', second + 1) != std::string::npos) {
    throw std::runtime_error("jwt: expected three dot-separated parts");
  }
  jwt_parts parts;
  parts.header_json = base64url_decode(token.substr(0, first));
  parts.claims_json = base64url_decode(token.substr(first + 1, second - first - 1));
  parts.signing_input = token.substr(0, second);
  parts.signature = base64url_decode(token.substr(second + 1));
  return parts;
}

// Returns the claims JSON when `issuer_public_key` signed the token; throws
// otherwise. The signature is always checked as ed25519 whatever the header
// says, so a forged "alg" cannot downgrade the check. (Legacy nats v1 tokens,
// alg "ed25519", signed only the claims part and are not accepted.)
inline std::string verify_jwt(const std::string &token,
                              const std::string &issuer_public_key) {
  auto parts = decode_jwt(token);
  if (!verify(issuer_public_key, parts.signing_input, parts.signature)) {
    throw std::runtime_error("jwt: signature does not match the issuer key");
  }
  return parts.claims_json;
}

#ifdef WRPC_HTTP_SODIUM_SUPPORT
// ---- xkeys: curve25519 sealed boxes (nats-io/nkeys xkeys.go) --------------
// Sealed format: "xkv1" | 24-byte nonce | crypto_box (NaCl box: X25519 +
// XSalsa20-Poly1305). wasmCloud hosts seal link secrets for the provider
// with the host's xkey; the provider opens them with its own SX seed.

constexpr const char *xkey_version = "xkv1";
constexpr std::size_t xkey_version_size = 4;

inline decoded_seed decode_curve_seed(const std::string &seed) {
  auto decoded = decode_seed(seed);
  if (decoded.type != key_type::curve) {
    throw std::runtime_error("xkeys: not a curve (SX) seed");
  }
  return decoded;
}

inline void require_sodium() {
  if (sodium_init() < 0) { throw std::runtime_error("xkeys: libsodium init failed"); }
}

inline std::string xkey_seal(const std::string &message,
                             const std::string &recipient_public_xkey,
                             const std::string &sender_seed) {
  require_sodium();
  auto sender = decode_curve_seed(sender_seed);
  auto recipient = decode_public_key(recipient_public_xkey, key_type::curve);
  auto nonce = random_bytes(crypto_box_NONCEBYTES);
  std::string box(crypto_box_MACBYTES + message.size(), '\0');
  if (crypto_box_easy(reinterpret_cast<unsigned char *>(&box[0]),
                      reinterpret_cast<const unsigned char *>(message.data()),
                      message.size(),
                      reinterpret_cast<const unsigned char *>(nonce.data()),
                      reinterpret_cast<const unsigned char *>(recipient.data()),
                      reinterpret_cast<const unsigned char *>(sender.raw.data())) != 0) {
    throw std::runtime_error("xkeys: sealing failed");
  }
  return std::string(xkey_version) + nonce + box;
}

inline std::string xkey_open(const std::string &sealed,
                             const std::string &sender_public_xkey,
                             const std::string &recipient_seed) {
  require_sodium();
  constexpr auto header_size = xkey_version_size + crypto_box_NONCEBYTES;
  if (sealed.size() < header_size + crypto_box_MACBYTES) {
    throw std::runtime_error("xkeys: sealed message is too short");
  }
  if (sealed.compare(0, xkey_version_size, xkey_version) != 0) {
    throw std::runtime_error("xkeys: unknown sealed message version");
  }
  auto recipient = decode_curve_seed(recipient_seed);
  auto sender = decode_public_key(sender_public_xkey, key_type::curve);
  auto box_size = sealed.size() - header_size;
  std::string message(box_size - crypto_box_MACBYTES, '\0');
  auto bytes = reinterpret_cast<const unsigned char *>(sealed.data());
  // message.data() stays valid for an empty message: crypto_box writes 0 bytes.
  if (crypto_box_open_easy(reinterpret_cast<unsigned char *>(&message[0]),
                           bytes + header_size, box_size,
                           bytes + xkey_version_size,
                           reinterpret_cast<const unsigned char *>(sender.data()),
                           reinterpret_cast<const unsigned char *>(recipient.raw.data())) != 0) {
    throw std::runtime_error("xkeys: could not open the sealed message");
  }
  return message;
}
#endif // WRPC_HTTP_SODIUM_SUPPORT

} // namespace nkeys
} // namespace detail
} // namespace wrpc_http

#endif // WRPC_HTTP_OPENSSL_SUPPORT

// ---- NATS client ----
//
// A minimal, production-minded NATS client: text protocol, one reader thread
// (parses and dispatches), one writer thread (coalesces everything published
// since its last write into one send), one wildcard inbox subscription for
// all request/reply traffic, reconnect with jittered backoff. TLS (tls:// URLs or
// servers that require it) with WRPC_HTTP_OPENSSL_SUPPORT.
//
// Clusters: the servers a cluster announces in INFO `connect_urls` join the configured
// ones (with their scheme and credentials); a lost connection fails over to the next
// server. A server entering lame duck mode (INFO `ldm`) is left in the background: a
// second connection takes the subscriptions and new traffic, while the old one stays
// open until the calls that started on it have their answers.

namespace wrpc_http {
namespace detail {
class NatsSocket;
class NatsParser;
struct NatsParserEvents;
class NatsServerPool;
class NatsConnection;
class NatsSubscriptions;
class NatsLameDuck;
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

// What a server may send, at most: a hostile or broken one must not make the client buffer GiBs.
struct ProtocolLimits {
  size_t max_control_line = WRPC_HTTP_NATS_MAX_CONTROL_LINE;    // bytes of one line (INFO, MSG ...)
  size_t max_message_bytes = WRPC_HTTP_NATS_MAX_MESSAGE_BYTES;  // headers and payload of one message
};

struct Options {
  // One URL or a comma-separated list: nats://[user:pass@|token@]host[:port]; tls://...
  // asks for TLS (needs WRPC_HTTP_OPENSSL_SUPPORT). Servers learned from a cluster get the
  // scheme and credentials of the first URL.
  std::string url = "nats://127.0.0.1:4222";
  // Servers are tried in random order (spreading clients over a cluster); true keeps the
  // configured order, with learned servers after them.
  bool no_randomize = false;
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
  // Servers known at most: the configured ones plus those a cluster announces.
  size_t max_servers = WRPC_HTTP_NATS_MAX_SERVERS;
  // The reader may be kept waiting by calls whose body consumers are behind for this share of
  // the time, at most reader_stall_burst at once (see ReaderStallAllowance).
  unsigned reader_stall_percent = WRPC_HTTP_NATS_READER_STALL_PERCENT;
  std::chrono::milliseconds reader_stall_burst{WRPC_HTTP_NATS_READER_STALL_BURST_MS};
  ProtocolLimits protocol_limits;
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

// The waiting a connection's reader may do for the calls on it (Options::reader_stall_*): a
// burst allowance refilled with a share of the time that passes.
class ReaderStallAllowance {
public:
  ReaderStallAllowance(unsigned percent, std::chrono::milliseconds burst)
      : percent_(percent), burst_(burst), left_(burst_) {}
  // Up to `wanted` of waiting the reader may do now.
  std::chrono::microseconds take(std::chrono::microseconds wanted) {
    std::lock_guard<std::mutex> lk(mu_);
    auto now = std::chrono::steady_clock::now();
    left_ = std::min(burst_, left_ + std::chrono::duration_cast<std::chrono::microseconds>(now - refilled_) *
                                         percent_ / 100);
    refilled_ = now;
    auto granted = std::min(wanted, left_);
    left_ -= granted;
    return granted;
  }
  // What a wait granted by take() did not use.
  void give_back(std::chrono::microseconds unused) {
    if (unused.count() <= 0) return;
    std::lock_guard<std::mutex> lk(mu_);
    left_ = std::min(burst_, left_ + unused);
  }

private:
  const unsigned percent_;
  const std::chrono::microseconds burst_;
  std::mutex mu_;
  std::chrono::microseconds left_;
  std::chrono::steady_clock::time_point refilled_ = std::chrono::steady_clock::now();
};

// The client is four parts with one job each (in detail, below), driven by its reader thread:
//   NatsServerPool     the servers: configured, learned from the cluster, the one in use
//   NatsConnection     the socket in use and its writer: publishing, the writer thread
//   NatsSubscriptions  subscriptions and the inbox: SUB lines, dispatch, inbox routing
//   NatsLameDuck       the move to another server when one announces lame duck mode
// The client itself connects, reads (reader_loop), reconnects and closes.
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

  bool connected() const;
  // `host:port` of the server in use ("" before connect()).
  std::string connected_server() const;
  // `host:port` of every known server, configured and learned, in the order they are tried.
  std::vector<std::string> known_servers() const;
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

  // Shared by the handlers that may keep the reader waiting (calls' body buffers).
  ReaderStallAllowance &reader_stall_allowance() { return reader_stall_allowance_; }

  // For a handler: `task` runs on the reading thread once every message of the current read
  // has been dispatched, so that what arrived together is acted on together (a call's
  // response head and the body bytes behind it leave in one write). It must return at once.
  void after_this_read(std::function<void()> task);

private:
  friend class detail::NatsLameDuck;
  // The reading threads, after each read (and after telling calls their connection is lost).
  void run_read_end_tasks();

  // Socket (TLS when asked for) + INFO/CONNECT handshake with `url`; returns the
  // connection or throws.
  std::unique_ptr<detail::NatsSocket> open_connection(const std::string &url);
  // What every connection does with what its server sends; `answer_ping` writes the PONG.
  // The handshake, the reader and a retired connection change only what they say.
  detail::NatsParserEvents connection_events(std::function<void()> answer_ping);
  void reader_loop();
  bool reconnect();
  void lost_connection(const std::string &why);
  // Applies an INFO (max_payload, connect_urls) and returns it parsed.
  nlohmann::json handle_info(const std::string &json);
  void deliver(Message &msg, uint64_t sid);
  void log(LogLevel level, const std::string &text) const {
    if (opts_.log) opts_.log(level, text);
  }
  void log_server_error(const std::string &text) const { log(LogLevel::warn, "NATS server error: " + text); }
  // A PONG read on the connection (or on a retired one): wakes flush().
  void count_pong();

  Options opts_;
  std::unique_ptr<detail::NatsServerPool> pool_;
  std::unique_ptr<detail::NatsConnection> connection_;
  std::unique_ptr<detail::NatsSubscriptions> subscriptions_;
  std::unique_ptr<detail::NatsLameDuck> lame_duck_;

  std::atomic<bool> closing_{false};
  std::mutex close_mu_;
  std::atomic<size_t> max_payload_{1024 * 1024};
  ReaderStallAllowance reader_stall_allowance_;
  std::mutex read_end_mu_;  // a leaf
  std::vector<std::function<void()>> read_end_tasks_;
  std::thread reader_;

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

// `host:port` (`[v6]:port`): a server's identity, whatever its URL's scheme or credentials.
inline std::string server_address(const NatsUrl &url) {
  bool v6 = url.host.find(':') != std::string::npos;
  return (v6 ? "[" + url.host + "]" : url.host) + ":" + url.port;
}

// The URL of a server learned from a cluster's INFO (`host:port`): the scheme and
// credentials of a configured URL, so that TLS and auth apply to every member.
inline std::string learned_server_url(const std::string &configured, const std::string &address) {
  auto scheme_end = configured.find("://");
  std::string scheme = scheme_end == std::string::npos ? "nats" : configured.substr(0, scheme_end);
  std::string rest = scheme_end == std::string::npos ? configured : configured.substr(scheme_end + 3);
  rest = rest.substr(0, rest.find('/'));
  auto at = rest.rfind('@');
  return scheme + "://" + (at == std::string::npos ? "" : rest.substr(0, at + 1)) + address;
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

// A connection's inbox prefix, `_INBOX.<random>`: all prefixes have the same length.
constexpr size_t kInboxRandomLength = 22;
inline std::string new_inbox_prefix() { return "_INBOX." + random_token(kInboxRandomLength); }

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

  // read_some() that waits at most `timeout` for the first byte (0 when none came). A plain
  // socket blocks in recv() under a receive timeout: one system call per wake-up of the
  // reader instead of poll() and then recv().
  size_t read_within(char *buf, size_t size, std::chrono::milliseconds timeout) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (ssl_) return wait_readable(timeout) ? tls_read_some(buf, size) : 0;
#endif
    timeout = std::max(timeout, std::chrono::milliseconds(1));  // a zero SO_RCVTIMEO waits forever
    if (timeout != recv_timeout_) {
      timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      recv_timeout_ = timeout;
    }
    return read_some(buf, size);
  }

  // Returns the number of bytes read, 0 when none are there yet; throws
  // nats::Error(disconnected) with the reason once the connection has ended.
  size_t read_some(char *buf, size_t size) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (ssl_) return tls_read_some(buf, size);
#endif
    ssize_t n = ::recv(fd_, buf, size, 0);
    if (n > 0) return static_cast<size_t>(n);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
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
  std::chrono::milliseconds recv_timeout_{0};  // SO_RCVTIMEO as last set; 0: none (blocking)

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
struct NatsParserEvents {
  std::function<void(nats::Message &, uint64_t sid)> msg;
  std::function<void(const std::string &)> info;
  std::function<void()> ping, pong, ok;
  std::function<void(const std::string &)> err;
};

class NatsParser {
public:
  using Events = NatsParserEvents;

  explicit NatsParser(Events events, nats::ProtocolLimits limits = {})
      : ev_(std::move(events)), limits_(limits) {}

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
  }

  // The bytes not parsed yet (a partial operation), for another parser to continue with.
  std::string take_unparsed() {
    std::string rest = buf_.substr(pos_);
    reset();
    return rest;
  }

private:
  [[noreturn]] static void fail(const std::string &why) {
    throw nats::Error(nats::Error::Kind::protocol, "NATS protocol error: " + why);
  }

  static uint64_t parse_size(const std::string &s) {
    if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos)
      fail("bad size '" + s + "'");
    return std::stoull(s);
  }

  // Returns true when an operation was consumed and another may follow. A message is
  // consumed whole: until its payload is complete its control line stays unparsed.
  bool step() {
    auto eol = buf_.find("\r\n", pos_);
    if (eol == std::string::npos) {
      if (buf_.size() - pos_ > limits_.max_control_line) fail("control line too long");
      return false;
    }
    std::string line = buf_.substr(pos_, eol - pos_);
    size_t line_start = pos_;
    pos_ = eol + 2;
    auto space = line.find_first_of(" \t");
    std::string op = line.substr(0, space);
    for (auto &c : op) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    // Blanks may also trail the operation ("PING \r\n"): then there are no arguments.
    auto args_start = line.find_first_not_of(" \t", space);
    std::string args = args_start == std::string::npos ? "" : line.substr(args_start);
    if (op == "MSG" || op == "HMSG") {
      start_message(op == "HMSG", args);
      if (buf_.size() - pos_ < total_ + 2) {
        pos_ = line_start;
        return false;
      }
      take_payload();
      return true;
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
    for (size_t at = 0; (at = args.find_first_not_of(" \t", at)) != std::string::npos;) {
      size_t end = args.find_first_of(" \t", at);
      fields.push_back(args.substr(at, end - at));
      at = end;
    }
    size_t need = with_headers ? 4 : 3;
    if (fields.size() != need && fields.size() != need + 1) fail("bad MSG arguments");
    msg_ = nats::Message{};
    msg_.subject = fields[0];
    sid_ = parse_size(fields[1]);
    if (fields.size() == need + 1) msg_.reply = fields[2];
    total_ = parse_size(fields.back());
    // A server never sends more than its max_payload; a hostile one must not make us buffer GiBs.
    if (total_ > limits_.max_message_bytes)
      fail("message larger than " + std::to_string(limits_.max_message_bytes) + " bytes (max_message_bytes)");
    header_size_ = with_headers ? parse_size(fields[fields.size() - 2]) : 0;
    if (header_size_ > total_) fail("header size larger than message");
  }

  // With the whole payload in buf_.
  void take_payload() {
    if (buf_.compare(pos_ + total_, 2, "\r\n") != 0) fail("message not terminated by CRLF");
    if (header_size_ > 0) parse_headers(buf_.data() + pos_, header_size_);
    msg_.data.assign(buf_, pos_ + header_size_, total_ - header_size_);
    pos_ += total_ + 2;
    ev_.msg(msg_, sid_);
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
  const nats::ProtocolLimits limits_;
  std::string buf_;
  size_t pos_ = 0;
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


// ---- NATS client: opening a connection ----

// Opens the socket to `server_url`, reads INFO (always in plain text), switches to TLS
// when the URL or the server asks for it, sends CONNECT and waits for the server to
// accept it (PONG) or refuse it (-ERR). Returns the handshaken connection. `apply_info` gets
// the server's INFO (the client learns max_payload and servers from it) and returns it parsed.
inline std::unique_ptr<NatsSocket> nats_handshake(const std::string &server_url, const nats::Options &opts,
                                                  const std::function<nlohmann::json(const std::string &)> &apply_info) {
  auto url = parse_nats_url(server_url);
  auto socket = std::make_unique<NatsSocket>(tcp_connect(url.host, url.port, opts.connect_timeout));
  auto fail = [&](const std::string &why) {
    throw nats::Error(nats::Error::Kind::connect, "NATS handshake with " + url.host + ":" + url.port + " failed: " + why);
  };
  auto deadline = std::chrono::steady_clock::now() + opts.connect_timeout;
  std::string info_json, err_text;
  bool got_pong = false;
  NatsParserEvents on;
  on.msg = [](nats::Message &, uint64_t) {};  // no subscriptions yet
  on.info = [&](const std::string &j) { info_json = j; };
  on.ping = [&] { socket->write_all("PONG\r\n", 6); };
  on.pong = [&] { got_pong = true; };
  on.ok = [] {};
  on.err = [&](const std::string &e) { err_text = e; };
  NatsParser parser(std::move(on), opts.protocol_limits);
  auto read_until = [&](const std::function<bool()> &done) {
    char buf[4096];
    while (!done()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) fail("timed out");
      if (!socket->wait_readable(left)) continue;
      try {
        parser.feed(buf, socket->read_some(buf, sizeof(buf)));
      } catch (const nats::Error &e) {
        fail(err_text.empty() ? e.what() : err_text);  // a server's -ERR says more than the close after it
      }
    }
  };
  read_until([&] { return !info_json.empty() || !err_text.empty(); });
  if (!err_text.empty()) fail(err_text);
  auto info = apply_info(info_json);

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
      socket->start_tls(opts, url.host, deadline);
    } catch (const nats::Error &e) {
      fail(e.what());
    }
#else
    fail(std::string(url.tls ? "a tls:// URL" : "this server requires TLS, which") +
         " needs WRPC_HTTP_OPENSSL_SUPPORT");
#endif
  }

  nlohmann::json connect_json = {{"verbose", false},   {"pedantic", false},      {"headers", true},
                                 {"no_responders", true}, {"name", opts.name}, {"lang", "cpp"},
                                 {"version", WRPC_HTTP_VERSION}, {"protocol", 1},   {"tls_required", use_tls}};
  if (!url.user.empty()) {
    connect_json["user"] = url.user;
    connect_json["pass"] = url.password;
  }
  if (!url.token.empty()) connect_json["auth_token"] = url.token;
  if (!opts.user_seed.empty()) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    connect_json["sig"] = nkeys::sign_nonce(opts.user_seed, info.value("nonce", std::string()));
    if (!opts.user_jwt.empty()) {
      connect_json["jwt"] = opts.user_jwt;
    } else {
      connect_json["nkey"] = nkeys::public_key_from_seed(opts.user_seed);
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

// ---- NATS client, part 1: the server pool ----
//
// The configured servers and those the cluster announces (INFO connect_urls), in the order
// they are tried, and the one in use. One leaf lock.
class NatsServerPool {
public:
  struct Server {
    std::string url;      // with scheme and credentials
    std::string address;  // host:port, the server's identity in the pool
    bool learned = false; // from INFO connect_urls (dropped when the cluster stops announcing it)
  };

  // Throws nats::Error(connect) on a bad URL, none, or more than opts.max_servers.
  explicit NatsServerPool(const nats::Options &opts) : randomize_(!opts.no_randomize), max_servers_(opts.max_servers) {
    for (auto &u : split(opts.url.empty() ? "nats://127.0.0.1:4222" : opts.url, ',')) {
      if (u.empty()) continue;
      auto address = server_address(parse_nats_url(u));  // rejects bad URLs up front
      if (!find(servers_, address)) servers_.push_back({u, address, false});
    }
    if (servers_.empty()) throw nats::Error(nats::Error::Kind::connect, "no NATS server URL");
    if (servers_.size() > max_servers_)
      throw nats::Error(nats::Error::Kind::connect,
                        "more than " + std::to_string(max_servers_) + " NATS server URLs (Options::max_servers)");
    credentials_url_ = servers_.front().url;
    shuffle(servers_);
  }

  std::vector<Server> all() const {
    std::lock_guard<std::mutex> lk(mu_);
    return servers_;
  }
  std::vector<Server> others_than(const std::string &address) const {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<Server> out;
    for (auto &s : servers_)
      if (s.address != address) out.push_back(s);
    return out;
  }
  // The server after `address` (the first when `address` is not in the pool).
  Server next_after(const std::string &address) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = std::find_if(servers_.begin(), servers_.end(), [&](const Server &s) { return s.address == address; });
    return it == servers_.end() || std::next(it) == servers_.end() ? servers_.front() : *std::next(it);
  }
  std::vector<std::string> addresses() const {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::string> out;
    for (auto &s : servers_) out.push_back(s.address);
    return out;
  }
  std::string current() const {
    std::lock_guard<std::mutex> lk(mu_);
    return current_;
  }
  void set_current(const std::string &address) {
    std::lock_guard<std::mutex> lk(mu_);
    current_ = address;
  }

  // The cluster's client URLs (`host:port` strings) join the pool with the first configured
  // URL's scheme and credentials; learned servers the cluster no longer announces (gone, or in
  // lame duck mode) leave it. Configured ones stay. Returns a warning per entry ignored.
  std::vector<std::string> learn(const nlohmann::json &connect_urls) {
    if (!connect_urls.is_array()) return {"INFO connect_urls is not an array: ignored"};
    std::vector<std::string> warnings;
    std::vector<Server> announced;
    for (auto &entry : connect_urls) {
      try {
        if (!entry.is_string()) throw nats::Error(nats::Error::Kind::protocol, "not a string");
        auto text = entry.get<std::string>();
        if (text.empty() || text.size() > 256 || text.find_first_of("/@, ") != std::string::npos)
          throw nats::Error(nats::Error::Kind::protocol, "not host:port");
        auto url = learned_server_url(credentials_url_, text);
        announced.push_back({url, server_address(parse_nats_url(url)), true});
      } catch (const nats::Error &e) {
        warnings.push_back(std::string("INFO connect_urls entry ignored: ") + e.what());
      }
    }
    std::lock_guard<std::mutex> lk(mu_);
    servers_.erase(std::remove_if(servers_.begin(), servers_.end(),
                                  [&](const Server &s) {
                                    return s.learned && s.address != current_ && !find(announced, s.address);
                                  }),
                   servers_.end());
    std::vector<Server> added;
    for (auto &a : announced)
      if (!find(servers_, a.address) && !find(added, a.address) && servers_.size() + added.size() < max_servers_)
        added.push_back(a);
    shuffle(added);
    servers_.insert(servers_.end(), added.begin(), added.end());
    return warnings;
  }

private:
  static bool find(const std::vector<Server> &servers, const std::string &address) {
    return std::any_of(servers.begin(), servers.end(), [&](const Server &s) { return s.address == address; });
  }
  // Random order spreads clients over a cluster; Options::no_randomize keeps the given one.
  void shuffle(std::vector<Server> &servers) const {
    if (randomize_) std::shuffle(servers.begin(), servers.end(), std::mt19937_64{std::random_device{}()});
  }

  const bool randomize_;
  const size_t max_servers_;
  std::string credentials_url_;  // scheme and credentials given to learned servers
  mutable std::mutex mu_;
  std::vector<Server> servers_;
  std::string current_;
};

// ---- NATS client, part 2: the connection in use and its writer ----
//
// Publishers enqueue wire bytes; one who finds no write under way writes them itself (a
// hand-off to the writer thread per publish would cost two context switches for nothing).
// While a write is under way, what others publish gathers and leaves in one send, by the
// writer thread when the write ends with more behind it. The client's reader thread reads the
// same socket and is the only one that replaces it (attach, replace, lost).
class NatsConnection {
public:
  NatsConnection(size_t max_pending_bytes, std::chrono::milliseconds pending_wait)
      : max_pending_bytes_(max_pending_bytes), pending_wait_(pending_wait) {}
  ~NatsConnection() { finish(); }

  bool up() const { return up_.load(); }
  // The reader thread's socket to read; valid between attach() and lost().
  NatsSocket &socket() { return *socket_; }

  // `socket` (handshaken, subscriptions sent) becomes the connection in use; the first call
  // starts the writer thread.
  void attach(std::unique_ptr<NatsSocket> socket) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      socket_ = std::move(socket);
      up_ = true;
    }
    if (!writer_.joinable()) writer_ = std::thread([this] { writer_loop(); });
  }

  // Lame duck: `socket` takes over once the write under way ends. Returns the one it replaced.
  std::unique_ptr<NatsSocket> replace(std::unique_ptr<NatsSocket> socket) {
    std::unique_lock<std::mutex> lk(mu_);
    write_done_cv_.wait(lk, [&] { return !writer_busy_; });
    std::swap(socket_, socket);
    return socket;
  }

  // The connection broke: no more writes, and the unsent bytes are dropped (they belonged to
  // calls that now fail). Publishers get Error(disconnected) until the next attach().
  void lost() {
    {
      std::unique_lock<std::mutex> lk(mu_);
      up_ = false;
      socket_->shutdown();
      write_done_cv_.wait(lk, [&] { return !writer_busy_; });
      socket_.reset();
      out_buf_.clear();
    }
    space_cv_.notify_all();
  }

  // Client::close(): stops writing and wakes everyone; the reader sees the socket's end.
  void shut() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      shut_ = true;
      up_ = false;
      if (socket_) socket_->shutdown();
    }
    out_cv_.notify_all();
    space_cv_.notify_all();
  }

  // After shut() and once the reader thread has ended: joins the writer, lets a publisher
  // still in write_pending() fail out, frees the socket.
  void finish() {
    if (writer_.joinable()) writer_.join();
    std::unique_lock<std::mutex> lk(mu_);
    write_done_cv_.wait(lk, [&] { return !writer_busy_; });
    socket_.reset();
  }

  // Throws nats::Error: disconnected while down, timeout when max_pending_bytes stay full
  // for pending_wait (the server is not reading).
  void enqueue(std::string &&wire) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!up_) throw nats::Error(nats::Error::Kind::disconnected, "not connected to NATS");
    if (out_buf_.size() + wire.size() > max_pending_bytes_ && !out_buf_.empty()) {
      bool room = space_cv_.wait_for(lk, pending_wait_, [&] {
        return !up_ || out_buf_.size() + wire.size() <= max_pending_bytes_ || out_buf_.empty();
      });
      if (!up_) throw nats::Error(nats::Error::Kind::disconnected, "not connected to NATS");
      if (!room) throw nats::Error(nats::Error::Kind::timeout, "NATS write buffer full (server not reading)");
    }
    if (out_buf_.empty()) {
      out_buf_ = std::move(wire);
    } else {
      out_buf_ += wire;
    }
    if (!writer_busy_) write_pending(lk);
  }

private:
  // With mu_ held and no write under way: sends out_buf_, releasing the lock meanwhile.
  void write_pending(std::unique_lock<std::mutex> &lk) {
    std::string chunk;
    chunk.swap(out_buf_);
    writer_busy_ = true;
    NatsSocket *socket = socket_.get();
    lk.unlock();
    space_cv_.notify_all();
    bool ok = socket->write_all(chunk.data(), chunk.size());
    lk.lock();
    writer_busy_ = false;
    // A failed write means the connection is gone; the reader sees it too and reconnects.
    if (!ok && socket_.get() == socket) socket->shutdown();
    write_done_cv_.notify_all();
    if (!out_buf_.empty() || shut_) out_cv_.notify_one();  // the writer takes what gathered meanwhile
  }

  void writer_loop() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!shut_) {
      out_cv_.wait(lk, [&] { return shut_ || (!writer_busy_ && up_ && !out_buf_.empty()); });
      if (!shut_) write_pending(lk);
    }
  }

  const size_t max_pending_bytes_;
  const std::chrono::milliseconds pending_wait_;
  std::atomic<bool> up_{false};
  std::mutex mu_;
  std::condition_variable out_cv_;         // the writer waits for bytes gathered during a write
  std::condition_variable write_done_cv_;  // replace(), lost() and finish() wait for a write to end
  std::condition_variable space_cv_;       // publishers wait for room
  std::unique_ptr<NatsSocket> socket_;
  std::string out_buf_;
  bool writer_busy_ = false;
  bool shut_ = false;
  std::thread writer_;
};

// ---- NATS client, part 3: subscriptions and the inbox ----
//
// Every subscription by sid, the connection's one wildcard inbox subscription
// (`_INBOX.<random>.>`, sid 1) among them, and the inbox tokens that route replies to calls.
// Lock order: dispatch_mu_ -> subs_mu_ -> (the `send`/`attach` callbacks: the connection's
// lock, the socket's); inbox_mu_ is a leaf.
class NatsSubscriptions {
public:
  struct Moved {                   // what the previous connection still carries after a move
    std::string inbox_prefix;      // its inbox: replies to calls that started there
    std::vector<uint64_t> sids;    // its other subscriptions, to end there
  };

  // The inbox's entry holds its sid; its subject is always inbox_prefix_ + ".>".
  NatsSubscriptions() : inbox_prefix_(new_inbox_prefix()) { subs_[kInboxSid] = std::make_shared<Subscription>(); }

  // A new subscription. `send` gets its SUB line with the table locked, so that a reconnect
  // or a move (subscribe_all_on) in between cannot miss it.
  uint64_t add(const std::string &subject, const std::string &queue, nats::MessageHandler handler,
               const std::function<void(std::string &&)> &send) {
    std::lock_guard<std::mutex> lk(subs_mu_);
    uint64_t sid = next_sid_++;
    auto sub = std::make_shared<Subscription>();
    sub->subject = subject;
    sub->queue = queue;
    sub->handler = std::move(handler);
    subs_[sid] = sub;
    send(sub_line(sid, sub->subject, sub->queue));
    return sid;
  }

  // Ends `sid` now (max_messages 0) or after max_messages in all. Its UNSUB line, or "" when
  // there is no such subscription.
  std::string remove(uint64_t sid, unsigned max_messages) {
    std::lock_guard<std::mutex> lk(subs_mu_);
    auto it = subs_.find(sid);
    if (it == subs_.end()) return "";
    if (max_messages == 0 || it->second->received >= max_messages) {
      subs_.erase(it);
    } else {
      it->second->max_messages = max_messages;
    }
    return unsub_line(sid, max_messages);
  }

  std::string unsubscribe_all_lines() const {
    std::lock_guard<std::mutex> lk(subs_mu_);
    std::string wire;
    for (auto &s : subs_) wire += unsub_line(s.first);
    return wire;
  }

  // Sends every subscription on `socket` (connect, reconnect and lame duck moves alike), the
  // inbox under a new prefix when `new_inbox`. When the socket takes them, `attach` runs with
  // the table still locked, so that publishing has moved before another SUB can be sent.
  // Returns what the previous connection still carries, or nothing when the socket failed.
  std::optional<Moved> subscribe_all_on(NatsSocket &socket, bool new_inbox, const std::function<void()> &attach) {
    std::lock_guard<std::mutex> lk(subs_mu_);
    std::string prefix = new_inbox ? new_inbox_prefix() : inbox_prefix();
    Moved moved;
    std::string wire;
    for (auto &s : subs_) {
      bool inbox = s.first == kInboxSid;
      if (!inbox) moved.sids.push_back(s.first);
      wire += sub_line(s.first, inbox ? prefix + ".>" : s.second->subject, s.second->queue);
    }
    if (!socket.write_all(wire.data(), wire.size())) return std::nullopt;
    {
      std::lock_guard<std::mutex> inbox_lock(inbox_mu_);
      moved.inbox_prefix = inbox_prefix_;
      inbox_prefix_ = prefix;
    }
    attach();
    return moved;
  }

  // Runs the handler of `sid`: subscription handlers one at a time, inbox messages straight to
  // their call (which has its own locks). Returns what a handler threw, or "".
  std::string dispatch(nats::Message &msg, uint64_t sid) {
    if (sid == kInboxSid) {
      dispatch_inbox(msg);
      return "";
    }
    std::lock_guard<std::mutex> one_at_a_time(dispatch_mu_);
    std::shared_ptr<Subscription> sub;
    {
      std::lock_guard<std::mutex> lk(subs_mu_);
      auto it = subs_.find(sid);
      if (it == subs_.end()) return "";  // unsubscribed while in flight
      sub = it->second;
      if (sub->max_messages && ++sub->received >= sub->max_messages) subs_.erase(it);
    }
    try {
      sub->handler(msg);
    } catch (const std::exception &e) {
      return "handler for '" + sub->subject + "' threw: " + e.what();
    }
    return "";
  }

  // Counter-based tokens are unique per client and cheap; the prefix is random.
  std::string next_token() { return std::to_string(next_token_.fetch_add(1)); }

  std::string register_inbox(const std::string &token, nats::InboxHandler handler) {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    inboxes_[token] = std::make_shared<Inbox>(Inbox{std::move(handler), inbox_prefix_});
    return inbox_prefix_ + "." + token;
  }
  void release_inbox(const std::string &token) {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    inboxes_.erase(token);
  }
  std::string inbox_prefix() const {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    return inbox_prefix_;
  }
  bool inbox_in_use(const std::string &prefix) const {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    return std::any_of(inboxes_.begin(), inboxes_.end(), [&](auto &i) { return i.second->prefix == prefix; });
  }

  // Tells the calls whose replies come through `prefix` that nothing more will come.
  void notify_lost(const std::string &prefix) {
    notify(take_inboxes([&](const Inbox &i) { return i.prefix == prefix; }, false));
  }
  // Client::close(): every call still waiting is told, and forgotten.
  void release_all_inboxes() {
    notify(take_inboxes([](const Inbox &) { return true; }, true));
  }

private:
  static constexpr uint64_t kInboxSid = 1;
  struct Subscription {
    std::string subject, queue;
    nats::MessageHandler handler;
    unsigned max_messages = 0, received = 0;
  };
  struct Inbox {
    nats::InboxHandler handler;
    std::string prefix;  // the inbox subscription its replies come through
  };

public:
  static std::string sub_line(uint64_t sid, const std::string &subject, const std::string &queue) {
    return "SUB " + subject + (queue.empty() ? "" : " " + queue) + " " + std::to_string(sid) + "\r\n";
  }
  // UNSUB now, or after `max_messages` in all.
  static std::string unsub_line(uint64_t sid, unsigned max_messages = 0) {
    return "UNSUB " + std::to_string(sid) + (max_messages ? " " + std::to_string(max_messages) : "") + "\r\n";
  }

private:

  // `_INBOX.<random>.<token>[.<suffix>]` to the call that registered <token>.
  void dispatch_inbox(nats::Message &msg) {
    size_t token_start = std::strlen("_INBOX.") + kInboxRandomLength + 1;
    if (msg.subject.size() <= token_start) return;
    size_t token_end = msg.subject.find('.', token_start);
    std::string token = msg.subject.substr(token_start, token_end - token_start);
    std::string suffix = token_end == std::string::npos ? "" : msg.subject.substr(token_end);
    std::shared_ptr<Inbox> inbox;
    {
      std::lock_guard<std::mutex> lk(inbox_mu_);
      auto it = inboxes_.find(token);
      if (it == inboxes_.end()) return;  // late reply for a finished call: dropped
      inbox = it->second;
    }
    if (msg.subject.compare(0, inbox->prefix.size(), inbox->prefix) != 0) return;  // not this call's inbox
    inbox->handler.on_message(suffix, msg);
  }

  template <class Pick>
  std::vector<std::shared_ptr<Inbox>> take_inboxes(Pick pick, bool forget) {
    std::vector<std::shared_ptr<Inbox>> taken;
    std::lock_guard<std::mutex> lk(inbox_mu_);
    for (auto it = inboxes_.begin(); it != inboxes_.end();) {
      if (!pick(*it->second)) {
        ++it;
        continue;
      }
      taken.push_back(it->second);
      it = forget ? inboxes_.erase(it) : std::next(it);
    }
    return taken;
  }
  static void notify(const std::vector<std::shared_ptr<Inbox>> &inboxes) {
    for (auto &i : inboxes)
      if (i->handler.on_disconnected) i->handler.on_disconnected();
  }

  std::mutex dispatch_mu_;  // subscription handlers run one at a time
  mutable std::mutex subs_mu_;
  std::map<uint64_t, std::shared_ptr<Subscription>> subs_;
  uint64_t next_sid_ = kInboxSid + 1;
  mutable std::mutex inbox_mu_;
  std::string inbox_prefix_;  // `_INBOX.<random>`; a new one after a lame duck move
  std::unordered_map<std::string, std::shared_ptr<Inbox>> inboxes_;
  std::atomic<uint64_t> next_token_{1};
};

// ---- NATS client, part 4: lame duck moves ----
//
// A server in lame duck mode announces it (INFO `ldm`), stops accepting connections and
// later closes its clients. The move to another server happens in the background:
//   1. the mover thread opens a connection to another server (standby_);
//   2. the reader thread adopts it between two reads (adopt_if_ready): every subscription is
//      sent there, the inbox under a new prefix, and publishing switches to it at once;
//   3. the mover reads the retired connection, which soon keeps only the old inbox, until
//      every call that registered an inbox on it has finished (or the server closes it:
//      those calls then fail as on any lost connection), and closes it.
// It works on its client's parts (pool, connection, subscriptions) through the client.
class NatsLameDuck {
public:
  explicit NatsLameDuck(nats::Client &client) : client_(client) {}
  ~NatsLameDuck() { stop(); }

  // Reader thread, on INFO `ldm` from the server `from`.
  void start(const std::string &from) {
    if (running_.exchange(true)) return;           // one move at a time
    if (mover_.joinable()) mover_.join();          // the previous move, finished
    client_.log(nats::LogLevel::info, "NATS server " + from + " entered lame duck mode: moving to another server");
    mover_ = std::thread([this, from] {
      run(from);
      running_ = false;
    });
  }

  // Reader thread, between two reads: switches to the standby connection once it is ready.
  void adopt_if_ready(NatsParser &parser) {
    if (standby_ready_) adopt(parser);
  }

  // The connection in use was lost: a move under way was for it.
  void cancel() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      standby_.reset();
      standby_ready_ = false;
    }
    cv_.notify_all();
  }

  // Client::close(), with closing_ set: wakes the mover and joins it.
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);  // so that the mover sees closing_
    }
    cv_.notify_all();
    if (mover_.joinable()) mover_.join();
    standby_.reset();
  }

private:
  // How long both connections keep the subscriptions after a move.
  static constexpr std::chrono::milliseconds kInterestSettle{250};
  struct Retired {
    std::unique_ptr<NatsSocket> socket;
    std::string unparsed;  // bytes the reader had not parsed yet
    NatsSubscriptions::Moved interest;
  };

  void run(const std::string &from) {
    std::unique_ptr<NatsSocket> socket;
    std::string address;
    for (auto &server : client_.pool_->others_than(from)) {
      if (client_.closing_) return;
      try {
        socket = client_.open_connection(server.url);
        address = server.address;
        break;
      } catch (const nats::Error &e) {
        client_.log(nats::LogLevel::debug, std::string("lame duck: ") + e.what());
      }
    }
    if (!socket)
      return client_.log(nats::LogLevel::warn, "NATS server " + from +
                                                   " is in lame duck mode and no other server answers: "
                                                   "staying until it closes the connection");
    std::unique_lock<std::mutex> lk(mu_);
    if (client_.closing_) return;
    standby_ = std::move(socket);
    standby_address_ = address;
    standby_ready_ = true;
    cv_.wait(lk, [&] { return client_.closing_ || retired_ || !standby_ready_; });
    if (!retired_) return;  // closing, or the old connection was lost first (then reconnect() took over)
    Retired old = std::move(*retired_);
    retired_.reset();
    lk.unlock();
    drain(old);
  }

  void adopt(NatsParser &parser) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!standby_ready_) return;
    standby_ready_ = false;
    auto socket = std::move(standby_);
    Retired old;
    auto &connection = *client_.connection_;
    auto moved = client_.subscriptions_->subscribe_all_on(*socket, true, [&] {
      old.socket = connection.replace(std::move(socket));
    });
    if (!moved) {
      cv_.notify_all();
      lk.unlock();  // no log line with a lock held: a log hook may publish
      return client_.log(nats::LogLevel::warn, "lame duck: the new connection broke at once; staying");
    }
    old.interest = std::move(*moved);
    old.unparsed = parser.take_unparsed();
    client_.pings_out_ = 0;
    client_.pool_->set_current(standby_address_);
    std::string moved_to = standby_address_;
    retired_ = std::move(old);
    cv_.notify_all();
    lk.unlock();
    client_.log(nats::LogLevel::info, "NATS moved to " + moved_to + " (lame duck)");
  }

  // Mover thread: reads the retired connection until the calls waiting on it are done.
  void drain(Retired &old) {
    // The subscriptions end on the old connection only once the cluster has had time to learn
    // of them on the new one (servers spread interest asynchronously; until then they may
    // still route a message to the old server only). After the UNSUBs, a message to
    // ourselves: when it is back, the server has ended them and all it sent before is read.
    auto unsubscribe_at = std::chrono::steady_clock::now() + kInterestSettle;
    const std::string &prefix = old.interest.inbox_prefix;
    std::string barrier = prefix + ".drained";
    std::string wire;
    for (auto sid : old.interest.sids) wire += NatsSubscriptions::unsub_line(sid);
    wire += "PUB " + barrier + " 0\r\n\r\n";
    bool unsubscribing = false, unsubscribed = false, ended = false;
    auto on = client_.connection_events([&] { old.socket->write_all("PONG\r\n", 6); });
    auto deliver = std::move(on.msg);
    on.msg = [&](nats::Message &m, uint64_t sid) {
      if (m.subject == barrier) {
        unsubscribed = true;
      } else {
        deliver(m, sid);
      }
    };
    NatsParser parser(std::move(on), client_.opts_.protocol_limits);
    std::vector<char> buf(64 * 1024);
    try {
      parser.feed(old.unparsed.data(), old.unparsed.size());
      while (!client_.closing_ && !(unsubscribed && !client_.subscriptions_->inbox_in_use(prefix))) {
        if (!unsubscribing && std::chrono::steady_clock::now() >= unsubscribe_at) {
          unsubscribing = true;
          if (!old.socket->write_all(wire.data(), wire.size()))
            throw nats::Error(nats::Error::Kind::disconnected, "connection closed by server");
        }
        if (!old.socket->wait_readable(std::chrono::milliseconds(20))) continue;
        size_t n = old.socket->read_some(buf.data(), buf.size());
        if (n > 0) parser.feed(buf.data(), n);
        client_.run_read_end_tasks();
      }
    } catch (const nats::Error &e) {
      ended = true;
      client_.log(nats::LogLevel::debug, std::string("lame duck connection ended: ") + e.what());
    }
    if (ended) client_.subscriptions_->notify_lost(prefix);
    client_.run_read_end_tasks();
    old.socket.reset();
  }

  nats::Client &client_;
  std::thread mover_;  // one per lame duck notice
  std::atomic<bool> running_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<NatsSocket> standby_;  // the new connection until the reader adopts it
  std::string standby_address_;
  std::atomic<bool> standby_ready_{false};
  std::optional<Retired> retired_;  // handed back by the reader for the mover to drain
};

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

inline Client::Client(Options options)
    : opts_(std::move(options)),
      pool_(std::make_unique<detail::NatsServerPool>(opts_)),
      connection_(std::make_unique<detail::NatsConnection>(opts_.max_pending_bytes, opts_.pending_wait)),
      subscriptions_(std::make_unique<detail::NatsSubscriptions>()),
      lame_duck_(std::make_unique<detail::NatsLameDuck>(*this)),
      reader_stall_allowance_(opts_.reader_stall_percent, opts_.reader_stall_burst) {}

inline Client::~Client() { close(); }

inline bool Client::connected() const { return connection_->up(); }
inline std::string Client::connected_server() const { return pool_->current(); }
inline std::vector<std::string> Client::known_servers() const { return pool_->addresses(); }

inline void Client::connect() {
  if (reader_.joinable()) throw Error(Error::Kind::connect, "already connected");
  std::unique_ptr<detail::NatsSocket> socket;
  std::string errors;
  for (auto &server : pool_->all()) {  // the first INFO may add servers: they count from the next failure on
    try {
      socket = open_connection(server.url);
      pool_->set_current(server.address);
      break;
    } catch (const Error &e) {
      errors += (errors.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  if (!socket) throw Error(Error::Kind::connect, errors);
  if (!subscriptions_->subscribe_all_on(*socket, false, [&] { connection_->attach(std::move(socket)); }))
    throw Error(Error::Kind::connect, "connection lost while subscribing");
  reader_ = std::thread([this] { reader_loop(); });
}

inline detail::NatsParserEvents Client::connection_events(std::function<void()> answer_ping) {
  detail::NatsParserEvents on;
  on.msg = [this](Message &m, uint64_t sid) { deliver(m, sid); };
  on.info = [this](const std::string &json) { handle_info(json); };
  on.ping = std::move(answer_ping);
  on.pong = [this] { count_pong(); };
  on.ok = [] {};
  on.err = [this](const std::string &e) { log_server_error(e); };
  return on;
}

inline std::unique_ptr<detail::NatsSocket> Client::open_connection(const std::string &server_url) {
  return detail::nats_handshake(server_url, opts_, [this](const std::string &json) { return handle_info(json); });
}

inline nlohmann::json Client::handle_info(const std::string &json) {
  nlohmann::json info;
  try {
    info = nlohmann::json::parse(json);
    if (!info.is_object()) throw Error(Error::Kind::protocol, "bad INFO from server: not an object");
    if (info.contains("max_payload") && info["max_payload"].is_number_unsigned())
      max_payload_ = info["max_payload"].get<size_t>();
  } catch (const nlohmann::json::exception &e) {
    throw Error(Error::Kind::protocol, std::string("bad INFO from server: ") + e.what());
  }
  if (info.contains("connect_urls"))
    for (auto &warning : pool_->learn(info["connect_urls"])) log(LogLevel::warn, warning);
  return info;
}

inline void Client::close() {
  std::unique_lock<std::mutex> close_lock(close_mu_);
  if (closing_) return;
  std::string drain_failure;
  if (connection_->up()) {
    // Drain: unsubscribe everything, then a PING whose PONG proves the server has seen all
    // that was published before.
    try {
      connection_->enqueue(subscriptions_->unsubscribe_all_lines());
      flush(std::chrono::milliseconds(2000));
    } catch (const Error &e) {
      drain_failure = e.what();
    }
  }
  closing_ = true;
  connection_->shut();
  pong_cv_.notify_all();
  if (reader_.joinable()) reader_.join();
  lame_duck_->stop();
  connection_->finish();
  close_lock.unlock();
  subscriptions_->release_all_inboxes();
  if (!drain_failure.empty()) log(LogLevel::debug, "drain on close: " + drain_failure);
}

inline void Client::publish(const std::string &subject, const std::string &data, const std::string &reply,
                            const Headers *headers) {
  Batch b = batch();
  b.publish(subject, data, reply, headers);
  send(b);
}

inline void Client::send(Batch &batch) {
  if (closing_) throw Error(Error::Kind::closed, "NATS client is closed");
  if (!batch.empty()) connection_->enqueue(batch.take());
}

inline uint64_t Client::subscribe(const std::string &subject, MessageHandler handler, const std::string &queue) {
  if (!detail::valid_subject(subject, true)) throw Error(Error::Kind::protocol, "invalid subject '" + subject + "'");
  return subscriptions_->add(subject, queue, std::move(handler), [&](std::string &&sub_line) {
    try {
      connection_->enqueue(std::move(sub_line));
    } catch (const Error &e) {
      if (e.kind() != Error::Kind::disconnected) throw;  // while disconnected, reconnect() sends it
    }
  });
}

inline void Client::unsubscribe(uint64_t sid, unsigned max_messages) {
  auto unsub_line = subscriptions_->remove(sid, max_messages);
  if (unsub_line.empty()) return;
  try {
    connection_->enqueue(std::move(unsub_line));
  } catch (const Error &e) {
    if (e.kind() != Error::Kind::disconnected) throw;
  }
}

inline std::string Client::next_inbox_token() { return subscriptions_->next_token(); }

inline std::string Client::register_inbox(const std::string &token, InboxHandler handler) {
  return subscriptions_->register_inbox(token, std::move(handler));
}

inline void Client::release_inbox(const std::string &token) { subscriptions_->release_inbox(token); }

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
  connection_->enqueue("PING\r\n");
  std::unique_lock<std::mutex> lk(pong_mu_);
  if (!pong_cv_.wait_for(lk, timeout, [&] { return pongs_received_ >= target || !connection_->up(); }))
    throw Error(Error::Kind::timeout, "flush timed out");
  if (pongs_received_ < target) throw Error(Error::Kind::disconnected, "connection lost during flush");
}

inline void Client::count_pong() {
  std::lock_guard<std::mutex> lk(pong_mu_);
  ++pongs_received_;
  pong_cv_.notify_all();
}

inline void Client::deliver(Message &msg, uint64_t sid) {
  auto failure = subscriptions_->dispatch(msg, sid);
  if (!failure.empty()) log(LogLevel::error, failure);
}

inline void Client::reader_loop() {
  auto on = connection_events([this] {
    try {
      connection_->enqueue("PONG\r\n");  // through the writer: a publisher may be mid-write
    } catch (const Error &) {
    }
  });
  on.info = [this](const std::string &json) {
    if (handle_info(json).value("ldm", false) == true) lame_duck_->start(connected_server());
  };
  on.pong = [this] {
    pings_out_ = 0;  // the connection in use answers: not stale (a retired one's PONG says nothing of it)
    count_pong();
  };
  detail::NatsParser parser(std::move(on), opts_.protocol_limits);
  std::vector<char> buf(64 * 1024);
  auto last_ping = std::chrono::steady_clock::now();
  while (!closing_) {
    lame_duck_->adopt_if_ready(parser);
    std::string lost_reason;
    try {
      size_t n = connection_->socket().read_within(buf.data(), buf.size(), std::chrono::milliseconds(250));
      if (n > 0) parser.feed(buf.data(), n);
    } catch (const Error &e) {
      lost_reason = e.what();
    }
    run_read_end_tasks();
    auto now = std::chrono::steady_clock::now();
    if (lost_reason.empty() && now - last_ping >= opts_.ping_interval) {
      last_ping = now;
      if (pings_out_ >= opts_.max_pings_out) {
        lost_reason = "server did not answer pings (stale connection)";
      } else {
        ++pings_out_;
        try {
          connection_->enqueue("PING\r\n");
        } catch (const Error &) {
        }
      }
    }
    if (lost_reason.empty()) continue;
    if (closing_) break;
    lost_connection(lost_reason);
    run_read_end_tasks();
    parser.reset();
    if (!reconnect()) break;
    last_ping = std::chrono::steady_clock::now();
  }
  run_read_end_tasks();
}

inline void Client::after_this_read(std::function<void()> task) {
  std::lock_guard<std::mutex> lk(read_end_mu_);
  read_end_tasks_.push_back(std::move(task));
}

inline void Client::run_read_end_tasks() {
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> lk(read_end_mu_);
    if (read_end_tasks_.empty()) return;
    tasks.swap(read_end_tasks_);
  }
  for (auto &task : tasks) task();
}

// Marks the connection down and tells every call waiting on it, so that no caller waits for
// a reply that cannot come.
inline void Client::lost_connection(const std::string &why) {
  log(LogLevel::warn, "NATS connection to " + connected_server() + " lost: " + why);
  connection_->lost();
  pong_cv_.notify_all();
  pings_out_ = 0;
  lame_duck_->cancel();
  subscriptions_->notify_lost(subscriptions_->inbox_prefix());
  if (opts_.on_disconnected) opts_.on_disconnected();
}

// Retries with exponential backoff and jitter until connected, close() or the attempt
// limit, each attempt with the next server of the pool (the lost one last). Restores every
// subscription before publishers may write again.
inline bool Client::reconnect() {
  std::mt19937_64 rng{std::random_device{}()};
  auto wait = opts_.reconnect_wait_min;
  std::string last_tried = connected_server();
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
    auto server = pool_->next_after(last_tried);
    last_tried = server.address;
    std::unique_ptr<detail::NatsSocket> socket;
    try {
      socket = open_connection(server.url);
    } catch (const Error &e) {
      log(LogLevel::debug, std::string("reconnect attempt ") + std::to_string(attempt) + ": " + e.what());
      continue;
    }
    if (!subscriptions_->subscribe_all_on(*socket, false, [&] { connection_->attach(std::move(socket)); }))
      continue;
    pool_->set_current(server.address);
    log(LogLevel::info, "NATS reconnected to " + server.address + " after " + std::to_string(attempt) + " attempt(s)");
    if (opts_.on_reconnected) opts_.on_reconnected();
    return true;
  }
  return false;
}

}  // namespace nats
}  // namespace wrpc_http

// ---- wRPC codec ----
//
// Values of wrpc:http/incoming-handler@0.1.0.handle in the component-model value encoding
// that wRPC puts on the wire (LEB128 integers, length-prefixed strings and lists, one-byte
// option/result/bool tags, LEB128 variant discriminants, fields of records in order).
//
// Encoders append to a std::string. Decoders never throw and never read past their input:
// they report ok / need_more / error, because a value arrives split across NATS messages at
// arbitrary byte offsets and a peer may send garbage.

namespace wrpc_http {

// ---------------------------------------------------------------------------------------
// wasi:http@0.2.0 types as carried by wrpc:http@0.1.0
// ---------------------------------------------------------------------------------------

// Discriminants 0..9 of wasi:http `method`, in order.
enum class MethodKind { get, head, post, put, delete_, connect, options, trace, patch, other };

struct Method {
  MethodKind kind = MethodKind::get;
  std::string other;  // the method text when kind == other
};

// Discriminants 0..2 of wasi:http `scheme`, in order.
enum class SchemeKind { http, https, other };

struct Scheme {
  SchemeKind kind = SchemeKind::http;
  std::string other;  // the scheme text when kind == other
};

// A header or trailer section: each name once, with all of its values in order. Values are
// raw bytes (wire type list<u8>) held in std::string.
using Fields = std::vector<std::pair<std::string, std::vector<std::string>>>;

struct RequestHead {
  Method method;
  std::optional<std::string> path_with_query;
  std::optional<Scheme> scheme;
  std::optional<std::string> authority;
  Fields headers;
};

struct ResponseHead {
  uint16_t status = 200;
  Fields headers;
};

// The 39 cases of wasi:http@0.2.0 `error-code`; the value of each is its wire discriminant.
enum class ErrorCase : uint32_t {
  dns_timeout,
  dns_error,
  destination_not_found,
  destination_unavailable,
  destination_ip_prohibited,
  destination_ip_unroutable,
  connection_refused,
  connection_terminated,
  connection_timeout,
  connection_read_timeout,
  connection_write_timeout,
  connection_limit_reached,
  tls_protocol_error,
  tls_certificate_error,
  tls_alert_received,
  http_request_denied,
  http_request_length_required,
  http_request_body_size,
  http_request_method_invalid,
  http_request_uri_invalid,
  http_request_uri_too_long,
  http_request_header_section_size,
  http_request_header_size,
  http_request_trailer_section_size,
  http_request_trailer_size,
  http_response_incomplete,
  http_response_header_section_size,
  http_response_header_size,
  http_response_body_size,
  http_response_trailer_section_size,
  http_response_trailer_size,
  http_response_transfer_coding,
  http_response_content_coding,
  http_response_timeout,
  http_upgrade_failed,
  http_protocol_error,
  loop_detected,
  configuration_error,
  internal_error,
};

struct DnsErrorPayload {
  std::optional<std::string> rcode;
  std::optional<uint16_t> info_code;
};

struct TlsAlertReceivedPayload {
  std::optional<uint8_t> alert_id;
  std::optional<std::string> alert_message;
};

struct FieldSizePayload {
  std::optional<std::string> field_name;
  std::optional<uint32_t> field_size;
};

// A wasi:http `error-code` value. The payload is kept structured so that every case encodes
// back to exactly the bytes it was decoded from. Only the member that matches the case's
// payload type is meaningful:
//   DNS-error                                     -> dns_error
//   TLS-alert-received                            -> tls_alert
//   HTTP-request-header-size (option<...>), HTTP-request-trailer-size, HTTP-response-header-size,
//   HTTP-response-trailer-size                    -> field_size (for the three non-optional cases
//                                                    an empty field_size encodes as both fields none)
//   HTTP-request/response-body-size (option<u64>), the four *-section-size cases (option<u32>,
//                                                    larger values are clamped) -> size
//   HTTP-response-transfer/content-coding, internal-error (option<string>) -> text
// An index outside 0..38 behaves as internal-error everywhere, so the value stays encodable.
struct ErrorCode {
  uint32_t index = static_cast<uint32_t>(ErrorCase::internal_error);
  DnsErrorPayload dns_error;
  TlsAlertReceivedPayload tls_alert;
  std::optional<FieldSizePayload> field_size;
  std::optional<uint64_t> size;
  std::optional<std::string> text;

  ErrorCode() = default;
  explicit ErrorCode(ErrorCase error_case) : index(static_cast<uint32_t>(error_case)) {}

  static ErrorCode internal_error(std::string message) {
    ErrorCode error(ErrorCase::internal_error);
    error.text = std::move(message);
    return error;
  }

  ErrorCase kind() const;
  const char* name() const;   // the WIT case name, e.g. "internal-error", "HTTP-request-body-size"
  int http_status() const;    // the status a gateway answers with (see the case table)
  std::string message() const;  // name plus the payload parts that are present, for a text body
};

inline bool operator==(const Method& a, const Method& b) {
  return a.kind == b.kind && a.other == b.other;
}
inline bool operator==(const Scheme& a, const Scheme& b) {
  return a.kind == b.kind && a.other == b.other;
}
inline bool operator==(const RequestHead& a, const RequestHead& b) {
  return a.method == b.method && a.path_with_query == b.path_with_query && a.scheme == b.scheme &&
         a.authority == b.authority && a.headers == b.headers;
}
inline bool operator==(const ResponseHead& a, const ResponseHead& b) {
  return a.status == b.status && a.headers == b.headers;
}
inline bool operator==(const DnsErrorPayload& a, const DnsErrorPayload& b) {
  return a.rcode == b.rcode && a.info_code == b.info_code;
}
inline bool operator==(const TlsAlertReceivedPayload& a, const TlsAlertReceivedPayload& b) {
  return a.alert_id == b.alert_id && a.alert_message == b.alert_message;
}
inline bool operator==(const FieldSizePayload& a, const FieldSizePayload& b) {
  return a.field_name == b.field_name && a.field_size == b.field_size;
}
inline bool operator==(const ErrorCode& a, const ErrorCode& b) {
  return a.index == b.index && a.dns_error == b.dns_error && a.tls_alert == b.tls_alert &&
         a.field_size == b.field_size && a.size == b.size && a.text == b.text;
}

namespace detail {

struct MethodName {
  MethodKind kind;
  const char* name;
};

inline constexpr MethodName method_names[] = {
    {MethodKind::get, "GET"},         {MethodKind::head, "HEAD"},
    {MethodKind::post, "POST"},       {MethodKind::put, "PUT"},
    {MethodKind::delete_, "DELETE"},  {MethodKind::connect, "CONNECT"},
    {MethodKind::options, "OPTIONS"}, {MethodKind::trace, "TRACE"},
    {MethodKind::patch, "PATCH"},
};

// The wire type of each error-code case's payload.
enum class ErrorPayload {
  none,
  dns_error,            // DNS-error-payload record
  tls_alert,            // TLS-alert-received-payload record
  optional_field_size,  // option<field-size-payload>
  field_size,           // field-size-payload
  optional_u32,
  optional_u64,
  optional_string,
};

struct ErrorCaseInfo {
  const char* name;
  ErrorPayload payload;
  // Chosen for a gateway that reports the component's failure to its HTTP client:
  // 502 when the upstream side (DNS, connection, TLS, a bad response) failed, 504 for
  // timeouts, 503 when a connection limit is hit, 4xx when the error blames the request,
  // 500 for the provider's own configuration or an internal error.
  int http_status;
};

constexpr uint32_t error_case_count = 39;

// Indexed by discriminant.
inline constexpr ErrorCaseInfo error_cases[error_case_count] = {
    {"DNS-timeout", ErrorPayload::none, 504},
    {"DNS-error", ErrorPayload::dns_error, 502},
    {"destination-not-found", ErrorPayload::none, 502},
    {"destination-unavailable", ErrorPayload::none, 502},
    {"destination-IP-prohibited", ErrorPayload::none, 502},
    {"destination-IP-unroutable", ErrorPayload::none, 502},
    {"connection-refused", ErrorPayload::none, 502},
    {"connection-terminated", ErrorPayload::none, 502},
    {"connection-timeout", ErrorPayload::none, 504},
    {"connection-read-timeout", ErrorPayload::none, 504},
    {"connection-write-timeout", ErrorPayload::none, 504},
    {"connection-limit-reached", ErrorPayload::none, 503},
    {"TLS-protocol-error", ErrorPayload::none, 502},
    {"TLS-certificate-error", ErrorPayload::none, 502},
    {"TLS-alert-received", ErrorPayload::tls_alert, 502},
    {"HTTP-request-denied", ErrorPayload::none, 403},
    {"HTTP-request-length-required", ErrorPayload::none, 411},
    {"HTTP-request-body-size", ErrorPayload::optional_u64, 413},
    // 400, not 405: "invalid" says the method is malformed, and a 405 would owe the client
    // an Allow header that we cannot know.
    {"HTTP-request-method-invalid", ErrorPayload::none, 400},
    {"HTTP-request-URI-invalid", ErrorPayload::none, 400},
    {"HTTP-request-URI-too-long", ErrorPayload::none, 414},
    {"HTTP-request-header-section-size", ErrorPayload::optional_u32, 431},
    {"HTTP-request-header-size", ErrorPayload::optional_field_size, 431},
    // Trailers are header fields sent late, so they get the header-fields status too.
    {"HTTP-request-trailer-section-size", ErrorPayload::optional_u32, 431},
    {"HTTP-request-trailer-size", ErrorPayload::field_size, 431},
    {"HTTP-response-incomplete", ErrorPayload::none, 502},
    {"HTTP-response-header-section-size", ErrorPayload::optional_u32, 502},
    {"HTTP-response-header-size", ErrorPayload::field_size, 502},
    {"HTTP-response-body-size", ErrorPayload::optional_u64, 502},
    {"HTTP-response-trailer-section-size", ErrorPayload::optional_u32, 502},
    {"HTTP-response-trailer-size", ErrorPayload::field_size, 502},
    {"HTTP-response-transfer-coding", ErrorPayload::optional_string, 502},
    {"HTTP-response-content-coding", ErrorPayload::optional_string, 502},
    {"HTTP-response-timeout", ErrorPayload::none, 504},
    {"HTTP-upgrade-failed", ErrorPayload::none, 502},
    {"HTTP-protocol-error", ErrorPayload::none, 502},
    {"loop-detected", ErrorPayload::none, 508},
    {"configuration-error", ErrorPayload::none, 500},
    {"internal-error", ErrorPayload::optional_string, 500},
};

inline const ErrorCaseInfo& error_case_info(uint32_t index) {
  return error_cases[index < error_case_count ? index
                                              : static_cast<uint32_t>(ErrorCase::internal_error)];
}

}  // namespace detail

inline Method method_from_string(const std::string& http_method) {
  // Method names are case-sensitive (RFC 9110 9.1): "get" is an extension method, not GET.
  for (const auto& known : detail::method_names) {
    if (http_method == known.name) return Method{known.kind, std::string()};
  }
  return Method{MethodKind::other, http_method};
}

inline std::string to_string(const Method& method) {
  for (const auto& known : detail::method_names) {
    if (method.kind == known.kind) return known.name;
  }
  return method.other;
}

inline ErrorCase ErrorCode::kind() const {
  return index < detail::error_case_count ? static_cast<ErrorCase>(index)
                                          : ErrorCase::internal_error;
}

inline const char* ErrorCode::name() const { return detail::error_case_info(index).name; }

inline int ErrorCode::http_status() const { return detail::error_case_info(index).http_status; }

inline std::string ErrorCode::message() const {
  std::string parts;
  auto add = [&parts](const char* label, const std::string& value) {
    parts += parts.empty() ? ": " : ", ";
    if (label) parts += std::string(label) + "=";
    parts += value;
  };
  auto add_field_size = [&add](const FieldSizePayload& payload) {
    if (payload.field_name) add("field-name", *payload.field_name);
    if (payload.field_size) add("field-size", std::to_string(*payload.field_size));
  };
  switch (detail::error_case_info(index).payload) {
    case detail::ErrorPayload::none:
      break;
    case detail::ErrorPayload::dns_error:
      if (dns_error.rcode) add("rcode", *dns_error.rcode);
      if (dns_error.info_code) add("info-code", std::to_string(*dns_error.info_code));
      break;
    case detail::ErrorPayload::tls_alert:
      if (tls_alert.alert_id) add("alert-id", std::to_string(*tls_alert.alert_id));
      if (tls_alert.alert_message) add("alert-message", *tls_alert.alert_message);
      break;
    case detail::ErrorPayload::optional_field_size:
    case detail::ErrorPayload::field_size:
      if (field_size) add_field_size(*field_size);
      break;
    case detail::ErrorPayload::optional_u32:
    case detail::ErrorPayload::optional_u64:
      if (size) add(nullptr, std::to_string(*size));
      break;
    case detail::ErrorPayload::optional_string:
      if (text) add(nullptr, *text);
      break;
  }
  return name() + parts;
}

namespace detail {

// ---------------------------------------------------------------------------------------
// Encoding: every function appends one value to `out`.
// ---------------------------------------------------------------------------------------

inline void write_u8(std::string& out, uint8_t value) { out.push_back(static_cast<char>(value)); }

inline void write_s8(std::string& out, int8_t value) { write_u8(out, static_cast<uint8_t>(value)); }

inline void write_bool(std::string& out, bool value) { write_u8(out, value ? 1 : 0); }

// Unsigned LEB128; serves u16, u32 and u64 (and list/string lengths and discriminants).
inline void write_uleb(std::string& out, uint64_t value) {
  do {
    uint8_t byte = static_cast<uint8_t>(value & 0x7f);
    value >>= 7;
    if (value != 0) byte |= 0x80;
    write_u8(out, byte);
  } while (value != 0);
}

// Signed LEB128; serves s16, s32 and s64.
inline void write_sleb(std::string& out, int64_t value) {
  for (;;) {
    uint8_t byte = static_cast<uint8_t>(value & 0x7f);
    value >>= 7;  // arithmetic shift: keeps the sign
    // Stop once the rest is pure sign extension that bit 6 of this byte already implies.
    bool sign_bit = (byte & 0x40) != 0;
    if ((value == 0 && !sign_bit) || (value == -1 && sign_bit)) {
      write_u8(out, byte);
      return;
    }
    write_u8(out, byte | 0x80);
  }
}

template <class UnsignedInt>
inline void write_little_endian(std::string& out, UnsignedInt value) {
  for (size_t i = 0; i < sizeof(UnsignedInt); ++i) {
    write_u8(out, static_cast<uint8_t>(value >> (8 * i)));
  }
}

inline void write_f32(std::string& out, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  write_little_endian(out, bits);
}

inline void write_f64(std::string& out, double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  write_little_endian(out, bits);
}

inline bool is_unicode_scalar(char32_t c) { return c <= 0x10FFFF && (c < 0xD800 || c > 0xDFFF); }

// A `char` is one Unicode scalar value in UTF-8. A surrogate or out-of-range code point has no
// encoding, so it is sent as U+FFFD rather than as bytes every peer would reject.
inline void write_char(std::string& out, char32_t c) {
  if (!is_unicode_scalar(c)) c = 0xFFFD;
  if (c < 0x80) {
    write_u8(out, static_cast<uint8_t>(c));
  } else if (c < 0x800) {
    write_u8(out, static_cast<uint8_t>(0xC0 | (c >> 6)));
    write_u8(out, static_cast<uint8_t>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    write_u8(out, static_cast<uint8_t>(0xE0 | (c >> 12)));
    write_u8(out, static_cast<uint8_t>(0x80 | ((c >> 6) & 0x3F)));
    write_u8(out, static_cast<uint8_t>(0x80 | (c & 0x3F)));
  } else {
    write_u8(out, static_cast<uint8_t>(0xF0 | (c >> 18)));
    write_u8(out, static_cast<uint8_t>(0x80 | ((c >> 12) & 0x3F)));
    write_u8(out, static_cast<uint8_t>(0x80 | ((c >> 6) & 0x3F)));
    write_u8(out, static_cast<uint8_t>(0x80 | (c & 0x3F)));
  }
}

// list<u8>: count + raw bytes.
inline void write_bytes(std::string& out, const char* data, size_t size) {
  write_uleb(out, size);
  out.append(data, size);
}

inline void write_bytes(std::string& out, const std::string& bytes) {
  write_bytes(out, bytes.data(), bytes.size());
}

// string: byte length + UTF-8 (the same layout as list<u8>; the caller vouches for UTF-8).
inline void write_string(std::string& out, const std::string& text) { write_bytes(out, text); }

// list<T>: count, then each element written by write_element(out, element).
template <class T, class WriteElement>
inline void write_list(std::string& out, const std::vector<T>& items, WriteElement write_element) {
  write_uleb(out, items.size());
  for (const auto& item : items) write_element(out, item);
}

// option<T>: 0 for none, 1 then the value for some.
template <class T, class WriteValue>
inline void write_option(std::string& out, const std::optional<T>& value, WriteValue write_value) {
  write_bool(out, value.has_value());
  if (value) write_value(out, *value);
}

// result<T, E>: the tag (0 ok, 1 err); the caller then writes the T or E payload, if any.
inline void write_result_tag(std::string& out, bool is_err) { write_bool(out, is_err); }

// variant / enum: the case discriminant; the caller then writes the case payload, if any.
// Records and tuples need no helper: their fields are written in order with no framing.
inline void write_discriminant(std::string& out, uint32_t discriminant) {
  write_uleb(out, discriminant);
}

// A future or stream whose contents follow later on the value's index path.
inline void write_async_pending(std::string& out) { write_u8(out, 0); }

// future<T> sent ready: 1 then the value, written by write_value(out, value).
template <class T, class WriteValue>
inline void write_future_ready(std::string& out, const T& value, WriteValue write_value) {
  write_u8(out, 1);
  write_value(out, value);
}

inline void write_fields(std::string& out, const Fields& fields) {
  write_list(out, fields, [](std::string& o, const Fields::value_type& field) {
    write_string(o, field.first);
    write_list(o, field.second, [](std::string& o2, const std::string& value) {
      write_bytes(o2, value);
    });
  });
}

inline void write_method(std::string& out, const Method& method) {
  write_discriminant(out, static_cast<uint32_t>(method.kind));
  if (method.kind == MethodKind::other) write_string(out, method.other);
}

inline void write_scheme(std::string& out, const Scheme& scheme) {
  write_discriminant(out, static_cast<uint32_t>(scheme.kind));
  if (scheme.kind == SchemeKind::other) write_string(out, scheme.other);
}

inline void write_optional_string(std::string& out, const std::optional<std::string>& text) {
  write_option(out, text, write_string);
}

inline void write_field_size_payload(std::string& out, const FieldSizePayload& payload) {
  write_optional_string(out, payload.field_name);
  write_option(out, payload.field_size, [](std::string& o, uint32_t v) { write_uleb(o, v); });
}

inline void write_optional_fields(std::string& out, const std::optional<Fields>& fields) {
  write_option(out, fields, write_fields);
}

inline void write_error_code(std::string& out, const ErrorCode& error) {
  const ErrorPayload payload = error_case_info(error.index).payload;
  write_discriminant(out, static_cast<uint32_t>(error.kind()));
  switch (payload) {
    case ErrorPayload::none:
      break;
    case ErrorPayload::dns_error:
      write_optional_string(out, error.dns_error.rcode);
      write_option(out, error.dns_error.info_code,
                   [](std::string& o, uint16_t v) { write_uleb(o, v); });
      break;
    case ErrorPayload::tls_alert:
      write_option(out, error.tls_alert.alert_id, write_u8);
      write_optional_string(out, error.tls_alert.alert_message);
      break;
    case ErrorPayload::optional_field_size:
      write_option(out, error.field_size, write_field_size_payload);
      break;
    case ErrorPayload::field_size:
      write_field_size_payload(out, error.field_size.value_or(FieldSizePayload{}));
      break;
    case ErrorPayload::optional_u32:
      write_option(out, error.size, [](std::string& o, uint64_t v) {
        write_uleb(o, v > UINT32_MAX ? UINT32_MAX : v);
      });
      break;
    case ErrorPayload::optional_u64:
      write_option(out, error.size, write_uleb);
      break;
    case ErrorPayload::optional_string:
      write_optional_string(out, error.text);
      break;
  }
}

// ---- wrpc:http/incoming-handler.handle ----

// The root params: the `request` record. The body stream is always sent pending (Go and Rust
// peers disagree on the inline form). The trailers future is pending, or, when the request is
// known to carry no trailers, ready + none, which saves the caller a message on params.0.1.
inline void encode_handle_params(const RequestHead& request, std::string& out,
                                 bool trailers_ready_none = false) {
  write_async_pending(out);
  if (trailers_ready_none) {
    write_future_ready(out, std::optional<Fields>(), write_optional_fields);
  } else {
    write_async_pending(out);
  }
  write_method(out, request.method);
  write_optional_string(out, request.path_with_query);
  write_option(out, request.scheme, write_scheme);
  write_optional_string(out, request.authority);
  write_fields(out, request.headers);
}

// The option<fields> value sent on a pending trailers future's path.
inline void encode_trailers(const std::optional<Fields>& trailers, std::string& out) {
  write_optional_fields(out, trailers);
}

// result::ok(response) with body and trailers pending.
// With `ready_trailers`, the trailers future goes ready (`01` + value) instead of pending:
// a responder that knows them when it sends the head saves the trailers' channel.
inline void encode_handle_result_ok(const ResponseHead& response, std::string& out,
                                    const std::optional<Fields>* ready_trailers = nullptr) {
  write_result_tag(out, false);
  write_async_pending(out);
  if (ready_trailers) {
    write_future_ready(out, *ready_trailers, write_optional_fields);
  } else {
    write_async_pending(out);
  }
  write_uleb(out, response.status);
  write_fields(out, response.headers);
}

inline void encode_handle_result_err(const ErrorCode& error, std::string& out) {
  write_result_tag(out, true);
  write_error_code(out, error);
}

// One chunk of a pending stream<u8>: length + bytes. An empty chunk would read as the end,
// so it is not written at all.
inline void encode_stream_chunk(const char* data, size_t size, std::string& out) {
  if (size != 0) write_bytes(out, data, size);
}

// The end of a pending stream<u8>: a chunk of length 0.
inline void encode_stream_end(std::string& out) { write_uleb(out, 0); }

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

enum class DecodeStatus { ok, need_more, error };

// Unsigned LEB128 fed one byte at a time, so the same rules serve a contiguous buffer and a
// stream chunk length split across NATS messages. Rejects any bit beyond `bit_width` and any
// continuation past the last byte the width allows (3 bytes for u16, 5 for u32, 10 for u64).
class UlebAccumulator {
 public:
  enum class Step { need_more, done, overflow };

  explicit UlebAccumulator(unsigned bit_width) : bit_width_(bit_width) {}

  Step push(uint8_t byte) {
    const uint64_t bits = byte & 0x7f;
    const bool continues = (byte & 0x80) != 0;
    if (shift_ + 7 > bit_width_ && (bits >> (bit_width_ - shift_)) != 0) return Step::overflow;
    if (continues && shift_ + 7 >= bit_width_) return Step::overflow;
    value_ |= bits << shift_;
    if (!continues) return Step::done;
    shift_ += 7;
    return Step::need_more;
  }

  uint64_t value() const { return value_; }

  void reset() {
    value_ = 0;
    shift_ = 0;
  }

 private:
  unsigned bit_width_;
  unsigned shift_ = 0;
  uint64_t value_ = 0;
};

enum class Utf8Decode { complete, truncated, invalid };

// Decodes the UTF-8 sequence at the start of [data, data + size) into `scalar`, setting
// `length` to its byte count. Rejects overlong forms, surrogates and code points > U+10FFFF.
inline Utf8Decode decode_utf8(const unsigned char* data, size_t size, char32_t& scalar,
                              size_t& length) {
  if (size == 0) return Utf8Decode::truncated;
  const unsigned char lead = data[0];
  char32_t smallest;  // below this the sequence is overlong
  if (lead < 0x80) {
    scalar = lead;
    length = 1;
    return Utf8Decode::complete;
  } else if ((lead & 0xE0) == 0xC0) {
    length = 2;
    scalar = lead & 0x1F;
    smallest = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    scalar = lead & 0x0F;
    smallest = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    scalar = lead & 0x07;
    smallest = 0x10000;
  } else {
    return Utf8Decode::invalid;
  }
  for (size_t i = 1; i < length; ++i) {
    if (i >= size) return Utf8Decode::truncated;
    if ((data[i] & 0xC0) != 0x80) return Utf8Decode::invalid;
    scalar = (scalar << 6) | (data[i] & 0x3F);
  }
  if (scalar < smallest || !is_unicode_scalar(scalar)) return Utf8Decode::invalid;
  return Utf8Decode::complete;
}

inline bool is_valid_utf8(const char* text, size_t size) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text);
  for (size_t at = 0; at < size;) {
    char32_t scalar;
    size_t length;
    if (decode_utf8(bytes + at, size - at, scalar, length) != Utf8Decode::complete) return false;
    at += length;
  }
  return true;
}

// Reads component-model values from one contiguous buffer.
//
// The first failure sticks: afterwards every read returns a default value and consumes
// nothing, so a composite decoder reads its fields in sequence and checks status() once.
// need_more means the buffer ended inside a value (append bytes and decode again from the
// start); error means the bytes can never form a valid value.
//
// Every declared string or list length is checked before anything is allocated: a length
// above `max_length` is an error, and a length longer than the bytes present is need_more.
class ValueReader {
 public:
  ValueReader(const char* data, size_t size, size_t max_length = WRPC_HTTP_MAX_HEAD_BYTES)
      : data_(reinterpret_cast<const unsigned char*>(data)), size_(size), max_length_(max_length) {}

  DecodeStatus status() const { return status_; }
  bool ok() const { return status_ == DecodeStatus::ok; }
  const std::string& error_message() const { return error_; }
  size_t position() const { return position_; }
  size_t remaining() const { return size_ - position_; }

  // Marks the value invalid; for composite decoders that find a semantic error.
  void fail(std::string message) {
    if (!ok()) return;
    status_ = DecodeStatus::error;
    error_ = std::move(message);
  }

  uint8_t read_u8() {
    if (!ok()) return 0;
    if (remaining() == 0) return need_more();
    return data_[position_++];
  }

  int8_t read_s8() { return static_cast<int8_t>(read_u8()); }

  bool read_bool() { return read_flag("bool"); }

  uint16_t read_u16() { return static_cast<uint16_t>(read_uleb(16, "u16")); }
  uint32_t read_u32() { return static_cast<uint32_t>(read_uleb(32, "u32")); }
  uint64_t read_u64() { return read_uleb(64, "u64"); }

  int16_t read_s16() { return static_cast<int16_t>(read_sleb(16, "s16")); }
  int32_t read_s32() { return static_cast<int32_t>(read_sleb(32, "s32")); }
  int64_t read_s64() { return read_sleb(64, "s64"); }

  float read_f32() {
    const uint32_t bits = read_little_endian<uint32_t>();
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  double read_f64() {
    const uint64_t bits = read_little_endian<uint64_t>();
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  char32_t read_char() {
    if (!ok()) return 0;
    char32_t scalar = 0;
    size_t length = 0;
    switch (decode_utf8(data_ + position_, remaining(), scalar, length)) {
      case Utf8Decode::truncated:
        return need_more();
      case Utf8Decode::invalid:
        fail("char is not a UTF-8 encoded Unicode scalar value");
        return 0;
      case Utf8Decode::complete:
        break;
    }
    position_ += length;
    return scalar;
  }

  // list<u8> into a byte string.
  std::string read_bytes() {
    const size_t length = read_length("list<u8>");
    if (!ok()) return std::string();
    std::string bytes(reinterpret_cast<const char*>(data_ + position_), length);
    position_ += length;
    return bytes;
  }

  std::string read_string() {
    std::string text = read_bytes();
    if (ok() && !is_valid_utf8(text.data(), text.size())) fail("string is not valid UTF-8");
    return text;
  }

  // list<T>: read_element() reads one T. Every element type used here encodes to at least one
  // byte, which is what lets a count above the bytes present be answered with need_more.
  template <class ReadElement>
  auto read_list(ReadElement read_element) -> std::vector<decltype(read_element())> {
    std::vector<decltype(read_element())> items;
    const size_t count = read_length("list");
    for (size_t i = 0; i < count && ok(); ++i) items.push_back(read_element());
    return items;
  }

  // option<T>: read_value() reads the T of a `some`.
  template <class ReadValue>
  auto read_option(ReadValue read_value) -> std::optional<decltype(read_value())> {
    if (!read_flag("option")) return std::nullopt;
    auto value = read_value();
    if (!ok()) return std::nullopt;
    return value;
  }

  // result<T, E>: true for err; the caller then reads the T or E payload.
  bool read_result_is_err() { return read_flag("result"); }

  // future<T> / stream<T> status byte: true when the contents follow inline (ready), false
  // when they follow on the value's index path (pending).
  bool read_async_is_ready() { return read_flag("future/stream status"); }

  // variant / enum discriminant, which must name one of `case_count` cases.
  uint32_t read_discriminant(uint32_t case_count, const char* type_name) {
    const uint32_t discriminant = read_u32();
    if (ok() && discriminant >= case_count) {
      fail(std::string("invalid ") + type_name + " discriminant " + std::to_string(discriminant));
      return 0;
    }
    return discriminant;
  }

 private:
  uint8_t need_more() {
    if (ok()) status_ = DecodeStatus::need_more;
    return 0;
  }

  // A one-byte 0/1 tag (bool, option, result, async status); anything else is an error.
  bool read_flag(const char* what) {
    const uint8_t byte = read_u8();
    if (byte > 1) fail(std::string("invalid ") + what + " byte " + std::to_string(byte));
    return ok() && byte == 1;
  }

  uint64_t read_uleb(unsigned bit_width, const char* type_name) {
    UlebAccumulator accumulator(bit_width);
    while (ok()) {
      if (remaining() == 0) return need_more();
      switch (accumulator.push(data_[position_++])) {
        case UlebAccumulator::Step::need_more:
          break;
        case UlebAccumulator::Step::done:
          return accumulator.value();
        case UlebAccumulator::Step::overflow:
          fail(std::string("LEB128 value overflows ") + type_name);
          break;
      }
    }
    return 0;
  }

  int64_t read_sleb(unsigned bit_width, const char* type_name) {
    if (!ok()) return 0;
    uint64_t value = 0;
    unsigned shift = 0;
    for (;;) {
      if (remaining() == 0) return static_cast<int64_t>(need_more());
      const uint8_t byte = data_[position_++];
      const uint64_t bits = byte & 0x7f;
      const bool continues = (byte & 0x80) != 0;
      if (shift + 7 > bit_width) {
        // Only the low (bit_width - shift) bits carry value; the rest must repeat the sign.
        const unsigned value_bits = bit_width - shift;
        const uint64_t extension_mask = 0x7f & ~((uint64_t{1} << value_bits) - 1);
        const bool negative = ((bits >> (value_bits - 1)) & 1) != 0;
        if ((bits & extension_mask) != (negative ? extension_mask : 0)) break;
      }
      if (continues && shift + 7 >= bit_width) break;
      value |= bits << shift;
      shift += 7;
      if (!continues) {
        if (shift < 64 && (bits & 0x40) != 0) value |= ~uint64_t{0} << shift;
        return static_cast<int64_t>(value);
      }
    }
    fail(std::string("LEB128 value overflows ") + type_name);
    return 0;
  }

  template <class UnsignedInt>
  UnsignedInt read_little_endian() {
    if (!ok()) return 0;
    if (remaining() < sizeof(UnsignedInt)) return need_more();
    UnsignedInt value = 0;
    for (size_t i = 0; i < sizeof(UnsignedInt); ++i) {
      value |= static_cast<UnsignedInt>(static_cast<UnsignedInt>(data_[position_ + i]) << (8 * i));
    }
    position_ += sizeof(UnsignedInt);
    return value;
  }

  // A string or list length: an error above the limit, need_more beyond the bytes present.
  size_t read_length(const char* what) {
    const uint32_t length = read_u32();
    if (!ok()) return 0;
    if (length > max_length_) {
      fail(std::string(what) + " length " + std::to_string(length) + " exceeds the limit of " +
           std::to_string(max_length_) + " bytes");
      return 0;
    }
    if (length > remaining()) return need_more();
    return length;
  }

  const unsigned char* data_;
  size_t size_;
  size_t max_length_;
  size_t position_ = 0;
  DecodeStatus status_ = DecodeStatus::ok;
  std::string error_;
};

inline Fields read_fields(ValueReader& reader) {
  return reader.read_list([&reader] {
    Fields::value_type field;
    field.first = reader.read_string();
    field.second = reader.read_list([&reader] { return reader.read_bytes(); });
    return field;
  });
}

inline std::optional<std::string> read_optional_string(ValueReader& reader) {
  return reader.read_option([&reader] { return reader.read_string(); });
}

inline Method read_method(ValueReader& reader) {
  Method method;
  method.kind = static_cast<MethodKind>(reader.read_discriminant(10, "method"));
  if (method.kind == MethodKind::other) method.other = reader.read_string();
  return method;
}

inline Scheme read_scheme(ValueReader& reader) {
  Scheme scheme;
  scheme.kind = static_cast<SchemeKind>(reader.read_discriminant(3, "scheme"));
  if (scheme.kind == SchemeKind::other) scheme.other = reader.read_string();
  return scheme;
}

inline FieldSizePayload read_field_size_payload(ValueReader& reader) {
  FieldSizePayload payload;
  payload.field_name = read_optional_string(reader);
  payload.field_size = reader.read_option([&reader] { return reader.read_u32(); });
  return payload;
}

inline ErrorCode read_error_code(ValueReader& reader) {
  ErrorCode error;
  error.index = reader.read_discriminant(error_case_count, "error-code");
  switch (error_case_info(error.index).payload) {
    case ErrorPayload::none:
      break;
    case ErrorPayload::dns_error:
      error.dns_error.rcode = read_optional_string(reader);
      error.dns_error.info_code = reader.read_option([&reader] { return reader.read_u16(); });
      break;
    case ErrorPayload::tls_alert:
      error.tls_alert.alert_id = reader.read_option([&reader] { return reader.read_u8(); });
      error.tls_alert.alert_message = read_optional_string(reader);
      break;
    case ErrorPayload::optional_field_size:
      error.field_size = reader.read_option([&reader] { return read_field_size_payload(reader); });
      break;
    case ErrorPayload::field_size:
      error.field_size = read_field_size_payload(reader);
      break;
    case ErrorPayload::optional_u32:
      error.size = reader.read_option([&reader] { return uint64_t{reader.read_u32()}; });
      break;
    case ErrorPayload::optional_u64:
      error.size = reader.read_option([&reader] { return reader.read_u64(); });
      break;
    case ErrorPayload::optional_string:
      error.text = read_optional_string(reader);
      break;
  }
  return error;
}

// How a stream<u8> body was sent: pending (chunks follow on its index path) or ready inline.
// Ready is accepted only in the form `1` + list<u8> (Go's). Rust's inline form, a bare
// non-empty list, cannot be told apart from a status byte (a one-byte list starts with 01),
// and no real peer sends it.
struct AsyncBody {
  bool pending = true;
  std::string ready_bytes;
};

// How a future<option<fields>> of trailers was sent: pending (decode_trailers on its index
// path) or ready inline with its value.
struct AsyncTrailers {
  bool pending = true;
  std::optional<Fields> ready_value;
};

struct HandleParams {
  RequestHead request;
  AsyncBody body;
  AsyncTrailers trailers;
};

// result<response, error-code>: `error` is set for err; otherwise response, body, trailers.
struct HandleResult {
  std::optional<ErrorCode> error;
  ResponseHead response;
  AsyncBody body;
  AsyncTrailers trailers;
};

template <class T>
struct DecodeResult {
  DecodeStatus status = DecodeStatus::need_more;
  size_t consumed = 0;  // bytes of the value, when status is ok
  std::string error;    // what was wrong, when status is error
  T value{};
};

inline AsyncBody read_async_body(ValueReader& reader) {
  AsyncBody body;
  body.pending = !reader.read_async_is_ready();
  if (!body.pending) body.ready_bytes = reader.read_bytes();
  return body;
}

inline std::optional<Fields> read_optional_fields(ValueReader& reader) {
  return reader.read_option([&reader] { return read_fields(reader); });
}

inline AsyncTrailers read_async_trailers(ValueReader& reader) {
  AsyncTrailers trailers;
  trailers.pending = !reader.read_async_is_ready();
  if (!trailers.pending) trailers.ready_value = read_optional_fields(reader);
  return trailers;
}

// Runs read_value over [data, data + size). A value still incomplete once `max_bytes` are
// buffered is an error: the caller can stop buffering there and fail the call.
template <class T, class ReadValue>
inline DecodeResult<T> decode_value(const char* data, size_t size, size_t max_bytes,
                                    ReadValue read_value) {
  ValueReader reader(data, size, max_bytes);
  DecodeResult<T> result;
  result.value = read_value(reader);
  result.status = reader.status();
  if (result.status == DecodeStatus::need_more && size >= max_bytes) {
    result.status = DecodeStatus::error;
    result.error = "value exceeds the limit of " + std::to_string(max_bytes) + " bytes";
  } else if (result.status == DecodeStatus::error) {
    result.error = reader.error_message();
  }
  if (result.status == DecodeStatus::ok) {
    result.consumed = reader.position();
  } else {
    result.value = T{};
  }
  return result;
}

inline DecodeResult<HandleParams> decode_handle_params(
    const char* data, size_t size, size_t max_bytes = WRPC_HTTP_MAX_HEAD_BYTES) {
  return decode_value<HandleParams>(data, size, max_bytes, [](ValueReader& reader) {
    HandleParams params;
    params.body = read_async_body(reader);
    params.trailers = read_async_trailers(reader);
    params.request.method = read_method(reader);
    params.request.path_with_query = read_optional_string(reader);
    params.request.scheme = reader.read_option([&reader] { return read_scheme(reader); });
    params.request.authority = read_optional_string(reader);
    params.request.headers = read_fields(reader);
    return params;
  });
}

inline DecodeResult<HandleResult> decode_handle_result(
    const char* data, size_t size, size_t max_bytes = WRPC_HTTP_MAX_HEAD_BYTES) {
  return decode_value<HandleResult>(data, size, max_bytes, [](ValueReader& reader) {
    HandleResult result;
    if (reader.read_result_is_err()) {
      result.error = read_error_code(reader);
      return result;
    }
    result.body = read_async_body(reader);
    result.trailers = read_async_trailers(reader);
    result.response.status = reader.read_u16();
    result.response.headers = read_fields(reader);
    return result;
  });
}

// The option<fields> value that arrives on a pending trailers future's path.
inline DecodeResult<std::optional<Fields>> decode_trailers(
    const char* data, size_t size, size_t max_bytes = WRPC_HTTP_MAX_HEAD_BYTES) {
  return decode_value<std::optional<Fields>>(data, size, max_bytes, read_optional_fields);
}

// Decodes the chunks of a pending stream<u8> as they arrive, in pieces of any size. Payload
// bytes go to the sink as soon as they are fed, so a chunk is never buffered whole; chunk
// lengths are therefore not limited. feed() returns need_more until the end chunk (length 0),
// ok from then on, and error for a malformed length or any byte after the end chunk.
class StreamChunkDecoder {
 public:
  using Sink = std::function<void(const char* data, size_t size)>;

  DecodeStatus feed(const char* data, size_t size, const Sink& sink) {
    size_t at = 0;
    while (at < size && state_ != State::failed) {
      if (state_ == State::finished) {
        fail("bytes after the end of the stream");
      } else if (state_ == State::length) {
        push_length_byte(static_cast<uint8_t>(data[at++]));
      } else {
        // Pass on whatever part of the chunk's payload this piece holds.
        const size_t available = size - at;
        const size_t take =
            payload_left_ < available ? static_cast<size_t>(payload_left_) : available;
        sink(data + at, take);
        at += take;
        payload_left_ -= take;
        if (payload_left_ == 0) state_ = State::length;
      }
    }
    return status();
  }

  DecodeStatus status() const {
    switch (state_) {
      case State::finished:
        return DecodeStatus::ok;
      case State::failed:
        return DecodeStatus::error;
      default:
        return DecodeStatus::need_more;
    }
  }

  bool finished() const { return state_ == State::finished; }
  const std::string& error_message() const { return error_; }

 private:
  enum class State { length, payload, finished, failed };

  void push_length_byte(uint8_t byte) {
    switch (length_.push(byte)) {
      case UlebAccumulator::Step::need_more:
        break;
      case UlebAccumulator::Step::done:
        payload_left_ = length_.value();
        length_.reset();
        state_ = payload_left_ == 0 ? State::finished : State::payload;
        break;
      case UlebAccumulator::Step::overflow:
        fail("stream chunk length is not a valid LEB128 u64");
        break;
    }
  }

  void fail(std::string message) {
    state_ = State::failed;
    error_ = std::move(message);
  }

  State state_ = State::length;
  UlebAccumulator length_{64};
  uint64_t payload_left_ = 0;
  std::string error_;
};

}  // namespace detail
}  // namespace wrpc_http

// ---- wRPC transport over NATS ----
//
// One `handle` call, both sides. The client side publishes the invocation with a reply
// inbox R_c, waits for the server's handshake (an empty message whose reply subject is the
// server's inbox R_s), streams the request body to R_s.params.0.0 and reads the result from
// R_c.results, the response body from R_c.results.0.0 and the trailers from R_c.results.0.1.
// All of R_c lives under the client connection's single wildcard inbox subscription.

namespace wrpc_http {
namespace wrpc {

constexpr const char *kHttpInstance = "wrpc:http/incoming-handler@0.1.0";
constexpr const char *kHandleFunction = "handle";

// `<lattice>.<component>.wrpc.0.0.1.wrpc:http/incoming-handler@0.1.0.handle`
inline std::string handle_subject(const std::string &lattice, const std::string &component) {
  return lattice + "." + component + ".wrpc.0.0.1." + kHttpInstance + "." + kHandleFunction;
}

// Where a native component serves: `--nats URL --lattice NAME --id COMPONENT`.
struct ComponentArgs {
  std::string nats_url = "nats://127.0.0.1:4222";
  std::string lattice = "default";
  std::string id = "http-http_component";

  // Throws std::invalid_argument with the usage line.
  static ComponentArgs parse(int argc, char **argv) {
    ComponentArgs args;
    for (int i = 1; i < argc; i += 2) {
      std::string flag = argv[i];
      std::string *value = flag == "--nats" ? &args.nats_url : flag == "--lattice" ? &args.lattice
                                                           : flag == "--id"     ? &args.id
                                                                                : nullptr;
      if (!value || i + 1 >= argc)
        throw std::invalid_argument("usage: " + std::string(argv[0]) + " [--nats URL] [--lattice NAME] [--id COMPONENT]");
      *value = argv[i + 1];
    }
    return args;
  }
};

// Why a call failed, and the HTTP status a gateway answers with.
class CallError : public std::runtime_error {
public:
  enum class Kind { no_responders, timeout, disconnected, bad_reply, component_error, too_large };
  CallError(Kind kind, const std::string &what, std::optional<ErrorCode> code = std::nullopt)
      : std::runtime_error(what), kind_(kind), code_(std::move(code)) {}
  Kind kind() const { return kind_; }
  const std::optional<ErrorCode> &error_code() const { return code_; }
  int http_status() const {
    switch (kind_) {
    case Kind::no_responders:
    case Kind::disconnected: return 503;
    case Kind::timeout: return 504;
    case Kind::too_large: return 413;
    case Kind::component_error: return code_ ? code_->http_status() : 500;
    case Kind::bad_reply: return 502;
    }
    return 500;
  }

private:
  Kind kind_;
  std::optional<ErrorCode> code_;
};

}  // namespace wrpc

namespace detail {

using Clock = std::chrono::steady_clock;

// The process's pool of body bytes that calls borrow beyond their own bound
// (WRPC_HTTP_BODY_OVERFLOW_POOL). Lock-free: calls on any connection borrow and return.
class BodyOverflowPool {
public:
  explicit BodyOverflowPool(size_t bytes) : left_(bytes) {}
  bool borrow(size_t bytes) {
    size_t left = left_.load(std::memory_order_relaxed);
    while (left >= bytes)
      if (left_.compare_exchange_weak(left, left - bytes, std::memory_order_relaxed)) return true;
    return false;
  }
  void give_back(size_t bytes) { left_.fetch_add(bytes, std::memory_order_relaxed); }
  static BodyOverflowPool &process() {
    static BodyOverflowPool pool(WRPC_HTTP_BODY_OVERFLOW_POOL);
    return pool;
  }

private:
  std::atomic<size_t> left_;
};

// Bytes of a pending stream<u8> as they arrive from NATS, waiting for a consumer. Bounded:
// NATS has no flow control, so a producer that outruns the consumer fails the stream
// instead of growing memory without limit. The bound is the call's own `max_bytes`, plus
// what it could borrow from the process's BodyOverflowPool (at most `max_borrowed`).
class ChunkQueue {
public:
  ChunkQueue(size_t max_bytes, size_t max_borrowed, BodyOverflowPool &pool = BodyOverflowPool::process())
      : max_bytes_(max_bytes), max_borrowed_(max_borrowed), pool_(pool) {}
  ~ChunkQueue() { pool_.give_back(borrowed_); }
  ChunkQueue(const ChunkQueue &) = delete;
  ChunkQueue &operator=(const ChunkQueue &) = delete;

  // Whether `size` more bytes fit (always, when nothing is held: the consumer cannot make more
  // room than that), borrowing from the pool what the own bound lacks. With the owner's mutex held.
  bool has_room_for(size_t size) {
    if (chunks_.empty() || buffered_ + size <= max_bytes_ + borrowed_) return true;
    size_t lacking = buffered_ + size - max_bytes_ - borrowed_;
    if (borrowed_ + lacking > max_borrowed_ || !pool_.borrow(lacking)) return false;
    borrowed_ += lacking;
    return true;
  }

  // Called with the owner's mutex held. Returns false when the bound is exceeded.
  bool push(const char *data, size_t size) {
    if (!has_room_for(size)) return false;
    if (!chunks_.empty() && chunks_.back().size() + size <= kCoalesce) {
      chunks_.back().append(data, size);
    } else {
      chunks_.emplace_back(data, size);
    }
    buffered_ += size;
    return true;
  }
  bool empty() const { return chunks_.empty(); }
  std::string pop() {
    std::string out = std::move(chunks_.front());
    chunks_.pop_front();
    buffered_ -= out.size();
    // What the own bound covers again goes back to the pool at once.
    size_t still_needed = buffered_ > max_bytes_ ? buffered_ - max_bytes_ : 0;
    if (borrowed_ > still_needed) {
      pool_.give_back(borrowed_ - still_needed);
      borrowed_ = still_needed;
    }
    return out;
  }

private:
  static constexpr size_t kCoalesce = 64 * 1024;
  size_t max_bytes_;
  size_t max_borrowed_;
  BodyOverflowPool &pool_;
  size_t buffered_ = 0;
  size_t borrowed_ = 0;
  std::deque<std::string> chunks_;
};

// The receiving half of a channel that carries a pending stream<u8> followed by the
// channel's close (an empty NATS message). Shared by both sides of a call.
struct StreamInbox {
  StreamInbox(size_t max_bytes, size_t max_borrowed) : queue(max_bytes, max_borrowed) {}
  StreamChunkDecoder decoder;
  ChunkQueue queue;
  bool ended = false;  // the end chunk arrived
  std::string error;

  // Called with the owner's mutex held.
  void on_message(const std::string &data) {
    if (!error.empty() || ended) return;
    if (data.empty()) {  // the channel closed before the end chunk: the sender gave up
      error = "stream closed before its end";
      return;
    }
    auto status = decoder.feed(data.data(), data.size(), [&](const char *d, size_t n) {
      if (!queue.push(d, n) && error.empty()) error = "stream outran its consumer (buffer bound reached)";
    });
    if (status == DecodeStatus::error) error = "malformed stream: " + decoder.error_message();
    if (status == DecodeStatus::ok) ended = true;
  }
  void set_ready(std::string bytes) {
    if (!bytes.empty()) queue.push(bytes.data(), bytes.size());
    ended = true;
  }
};

// What both sides of a call receive asynchronously: a body stream and a trailers future,
// filled by the NATS reader thread and read by the call's own thread.
struct AsyncChannels {
  AsyncChannels(size_t max_body, size_t max_borrowed_body, size_t max_trailers,
                std::chrono::milliseconds body_stall_budget, nats::ReaderStallAllowance &reader_allowance)
      : body(max_body, max_borrowed_body), stall_left(body_stall_budget), reader_allowance(reader_allowance),
        max_trailer_bytes(max_trailers) {}
  std::mutex mu;
  std::condition_variable cv;
  bool lost = false;  // the NATS connection dropped
  StreamInbox body;
  // The NATS reader waits on `room` for the consumer to drain a full body buffer, at most
  // `stall_left` in all (CallLimits::body_stall_budget) and as its connection's allowance
  // for all calls permits.
  std::condition_variable room;
  bool reader_waits_for_room = false;
  std::chrono::microseconds stall_left;
  nats::ReaderStallAllowance &reader_allowance;
  std::string trailer_bytes;
  size_t max_trailer_bytes;
  // The trailers' value is whole (it decodes), or their channel closed. Hosts before 1.3
  // (wasmcloud-host 0.20.0) never close it: the value's end is what counts. Each message of
  // the value decodes it again from its start, so this is tried only while it is at most
  // kEarlyTrailerBytes (real trailers are far smaller); a larger value, sent in many small
  // messages, would cost the NATS reader quadratic time. A larger one waits for the close.
  bool trailers_done = false;
  static constexpr size_t kEarlyTrailerBytes = 16 * 1024;

  // What a call's own thread may wait for, one bit each; the reader thread wakes it only when
  // a bit turns on (a message that changes none, e.g. more body behind unread body or a
  // channel's close after its end, costs the waiting thread no wake-up). With mu held.
  unsigned channel_conditions() const {
    return (body.queue.empty() ? 0u : 1u) | (body.ended ? 2u : 0u) | (body.error.empty() ? 0u : 4u) |
           (trailers_done ? 8u : 0u) | (lost ? 16u : 0u);
  }
  static constexpr unsigned kFirstOwnCondition = 32u;

  // On the NATS reader thread, with mu held by `lk`: a message of the body's channel. One that
  // does not fit waits for the consumer to make room (it is awake: it has bytes to read) for
  // what is left of the call's stall budget and the connection's allowance; past that the
  // stream fails as outrun. Returns whether it waited (the consumer may have emptied the queue
  // meanwhile and gone to sleep: the caller must wake it even if no condition turned on).
  bool on_body_message(std::unique_lock<std::mutex> &lk, const std::string &data) {
    std::chrono::microseconds allowed{0};
    if (body.error.empty() && !body.ended && stall_left.count() > 0 && !body.queue.has_room_for(data.size()))
      allowed = reader_allowance.take(stall_left);
    if (allowed.count() <= 0) {
      body.on_message(data);
      return false;
    }
    auto start = Clock::now();
    reader_waits_for_room = true;
    room.wait_for(lk, allowed, [&] { return body.queue.has_room_for(data.size()); });
    reader_waits_for_room = false;
    auto waited = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    stall_left -= waited;
    reader_allowance.give_back(allowed - waited);
    body.on_message(data);
    return true;
  }

  // With mu held.
  void on_trailer_message(const std::string &data) {
    if (data.empty()) {
      trailers_done = true;
    } else if (!trailers_done && trailer_bytes.size() + data.size() <= max_trailer_bytes) {
      trailer_bytes += data;
      if (trailer_bytes.size() <= kEarlyTrailerBytes)
        trailers_done = decode_trailers(trailer_bytes.data(), trailer_bytes.size(), max_trailer_bytes).status !=
                        DecodeStatus::need_more;  // whole, or malformed: take_trailers says which
    }
  }

  // Whether read_body returns without waiting: body bytes, the body's end or a failure are
  // here. With mu held.
  bool body_readable() const { return !body.queue.empty() || body.ended || !body.error.empty() || lost; }

  // Next piece of the body; false at its end. Throws CallError when the stream breaks
  // (malformed, connection lost, nothing for `idle_timeout`).
  bool read_body(std::string &out, std::chrono::milliseconds idle_timeout) {
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_for(lk, idle_timeout, [&] { return body_readable(); }))
      throw wrpc::CallError(wrpc::CallError::Kind::timeout, "body stalled");
    return take_body(out);
  }

  // read_body's answer once body_readable(), with mu held.
  bool take_body(std::string &out) {
    if (!body.error.empty()) throw wrpc::CallError(wrpc::CallError::Kind::bad_reply, body.error);
    if (!body.queue.empty()) {
      out = body.queue.pop();
      if (reader_waits_for_room) room.notify_one();
      return true;
    }
    if (body.ended) return false;
    throw wrpc::CallError(wrpc::CallError::Kind::disconnected, "NATS connection lost mid-body");
  }

  // The pending trailers' value, once their channel closed.
  std::optional<Fields> read_trailers(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_for(lk, timeout, [&] { return trailers_known(); }))
      throw wrpc::CallError(wrpc::CallError::Kind::timeout, "trailers did not arrive");
    return take_trailers();
  }

  // With mu held.
  bool trailers_known() const { return trailers_done || lost; }
  // read_trailers' answer once trailers_known(), with mu held.
  std::optional<Fields> take_trailers() {
    if (!trailers_done) throw wrpc::CallError(wrpc::CallError::Kind::disconnected, "NATS connection lost");
    auto decoded = decode_trailers(trailer_bytes.data(), trailer_bytes.size(), max_trailer_bytes);
    if (decoded.status != DecodeStatus::ok)
      throw wrpc::CallError(wrpc::CallError::Kind::bad_reply, "malformed trailers: " + decoded.error);
    return decoded.value;
  }
};

// Splits `data` into stream chunks of at most `max_payload` bytes per NATS message.
// With `last`, the end chunk rides in the final message (a channel is a byte stream: where
// messages split it does not matter), so a short stream is one message.
inline void publish_stream_chunks(nats::Batch &batch, const std::string &subject, const char *data, size_t size,
                                  bool last = false) {
  const size_t max_chunk = batch.max_payload() > 16 ? batch.max_payload() - 11 : 1;
  std::string msg;
  do {
    size_t n = std::min(size, max_chunk);
    msg.clear();
    encode_stream_chunk(data, n, msg);
    data += n;
    size -= n;
    if (last && size == 0) encode_stream_end(msg);
    if (!msg.empty()) batch.publish(subject, msg);
  } while (size > 0);
}

// Publishes a value encoded on a channel and then the channel's close.
inline void publish_and_close(nats::Batch &batch, const std::string &subject, const std::string &value) {
  for (size_t at = 0; at < value.size(); at += batch.max_payload())
    batch.publish(subject, value.data() + at, std::min(batch.max_payload(), value.size() - at));
  batch.publish(subject, "");
}

inline wrpc::CallError nats_failure(const nats::Error &e) {
  return wrpc::CallError(e.kind() == nats::Error::Kind::timeout ? wrpc::CallError::Kind::timeout
                                                                 : wrpc::CallError::Kind::disconnected,
                         std::string("NATS: ") + e.what());
}

}  // namespace detail

namespace detail {

// Workers that start whenever none is idle, up to `max_threads`, are reused, and exit after
// `idle_exit` without work. The HTTP edge and the wRPC server run work that blocks for as
// long as a client or caller takes, so a fixed pool would let slow peers starve everyone
// else; an exited worker is joined by the next enqueue or by shutdown().
// Past `eager_threads` running, a job that finds no idle worker starts one only when no
// worker has taken a job for `stall` (they are all blocked, e.g. in slow routes): a burst of
// short jobs is worked off by the threads there are instead of starting one per job. The
// owner calls grow_if_stalled() now and then, since nothing else may enqueue meanwhile.
class ElasticTaskQueue {
public:
  explicit ElasticTaskQueue(size_t max_threads,
                            std::chrono::milliseconds idle_exit = std::chrono::milliseconds(WRPC_HTTP_WORKER_IDLE_MS),
                            size_t eager_threads = SIZE_MAX,
                            std::chrono::milliseconds stall = std::chrono::milliseconds(WRPC_HTTP_WORKER_STALL_MS))
      : max_threads_(max_threads), idle_exit_(idle_exit), eager_threads_(eager_threads), stall_(stall) {}
  ~ElasticTaskQueue() { shutdown(); }
  ElasticTaskQueue(const ElasticTaskQueue &) = delete;
  ElasticTaskQueue &operator=(const ElasticTaskQueue &) = delete;

  // After shutdown() a job is dropped: nothing would be left to join its thread.
  void enqueue(std::function<void()> fn) {
    std::list<std::thread> exited;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) return;
      jobs_.push_back(std::move(fn));
      exited.swap(exited_);
      if (!start_thread_if_needed()) cv_.notify_one();  // jobs wait for a thread to come free
    }
    for (auto &t : exited) t.join();
  }

  // Starts a thread when queued jobs wait behind workers that all stopped taking any; returns
  // whether jobs still wait (the owner then asks again soon).
  bool grow_if_stalled() {
    std::lock_guard<std::mutex> lk(mu_);
    if (jobs_.empty() || stopping_) return false;
    start_thread_if_needed();
    return true;
  }

  // Jobs queued and not yet taken by a thread.
  size_t backlog() {
    std::lock_guard<std::mutex> lk(mu_);
    return jobs_.size();
  }

  void shutdown() {
    std::list<std::thread> all;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
      all.swap(threads_);
      all.splice(all.end(), exited_);
    }
    cv_.notify_all();
    for (auto &t : all) t.join();
  }

private:
  // With mu_ held. Idle threads may already be spoken for by jobs queued just before.
  bool start_thread_if_needed() {
    if (jobs_.size() <= idle_ || threads_.size() >= max_threads_) return false;
    if (threads_.size() >= eager_threads_ && Clock::now() - last_taken_ < stall_) return false;
    threads_.emplace_back();
    auto self = std::prev(threads_.end());
    *self = std::thread([this, self] { work(self); });
    last_taken_ = Clock::now();  // the new thread takes one at once: the next waits a stall again
    return true;
  }

  void work(std::list<std::thread>::iterator self) {
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
      ++idle_;
      bool woken = cv_.wait_for(lk, idle_exit_, [&] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) {
        // Idle too long: hand this thread's handle to whoever joins next. On shutdown the
        // handle has moved to shutdown() already.
        if (!woken && !stopping_) exited_.splice(exited_.end(), threads_, self);
        return;
      }
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      last_taken_ = Clock::now();
      lk.unlock();
      job();
      lk.lock();
    }
  }

  size_t max_threads_;
  std::chrono::milliseconds idle_exit_;
  size_t eager_threads_;
  std::chrono::milliseconds stall_;
  Clock::time_point last_taken_{};  // a worker last took a job
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::list<std::thread> threads_;  // running workers
  std::list<std::thread> exited_;   // workers that left for idleness, not joined yet
  size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace detail

namespace wrpc {

struct CallLimits {
  size_t max_head_bytes = WRPC_HTTP_MAX_HEAD_BYTES;
  size_t max_buffered_body = WRPC_HTTP_MAX_BUFFERED_BODY;
  // What a call may borrow beyond max_buffered_body from the process's shared pool.
  size_t max_borrowed_body = WRPC_HTTP_BODY_OVERFLOW_PER_CALL;
  std::chrono::milliseconds body_stall_budget{WRPC_HTTP_BODY_STALL_BUDGET_MS};
  // Request body bytes gathered before they go out as one NATS message.
  size_t body_flush_bytes = WRPC_HTTP_BODY_FLUSH_BYTES;
};

// The client side of one `handle` invocation. Not thread-safe: one thread drives a call.
class OutgoingCall {
public:
  // `trailers_follow`: the request may end with trailers (a chunked HTTP body), sent by
  // finish_request; otherwise they are known to be absent and go as a ready `none` future
  // (`01 00`), saving two messages per call.
  OutgoingCall(nats::Client &nc, const std::string &subject, const RequestHead &head,
               const nats::Headers *nats_headers = nullptr, bool trailers_follow = false, CallLimits limits = {})
      : nc_(nc), limits_(limits), trailers_follow_(trailers_follow), state_(std::make_shared<State>(limits, nc.reader_stall_allowance())) {
    token_ = nc_.next_inbox_token();
    std::weak_ptr<State> weak = state_;
    // A call's progress is reported once the read that brought its news is dispatched whole.
    auto report_after_read = [weak, &nc = nc_] {
      nc.after_this_read([weak] {
        if (auto s = weak.lock()) s->report_progress();
      });
    };
    nats::InboxHandler handler;
    handler.on_message = [weak, report_after_read](const std::string &suffix, nats::Message &m) {
      if (auto s = weak.lock())
        if (s->on_message(suffix, m)) report_after_read();
    };
    handler.on_disconnected = [weak, report_after_read] {
      if (auto s = weak.lock())
        if (s->on_disconnected()) report_after_read();
    };
    reply_inbox_ = nc_.register_inbox(token_, std::move(handler));
    std::string params;
    detail::encode_handle_params(head, params, !trailers_follow);
    try {
      auto batch = nc_.batch();
      batch.publish(subject, params, reply_inbox_, nats_headers);
      nc_.send(batch);
    } catch (const nats::Error &e) {
      nc_.release_inbox(token_);
      throw detail::nats_failure(e);
    }
  }
  ~OutgoingCall() { nc_.release_inbox(token_); }
  OutgoingCall(const OutgoingCall &) = delete;
  OutgoingCall &operator=(const OutgoingCall &) = delete;

  // Waits for the server's handshake; throws CallError (no responders, timeout, lost).
  void await_handshake(detail::Clock::time_point deadline) {
    std::unique_lock<std::mutex> lk(state_->mu);
    if (!state_->cv.wait_until(lk, deadline, [&] { return state_->handshaken() || state_->lost; }))
      throw CallError(CallError::Kind::timeout, "no answer from the component in time");
    if (state_->no_responders) throw CallError(CallError::Kind::no_responders, "no component is serving this target");
    if (state_->server_inbox.empty()) throw CallError(CallError::Kind::disconnected, "NATS connection lost");
    server_inbox_ = state_->server_inbox;
  }

  // Streams request body bytes; they leave in messages of body_flush_bytes.
  void write_body(const char *data, size_t size) {
    body_buf_.append(data, size);
    if (body_buf_.size() >= limits_.body_flush_bytes) flush_body(false);
  }

  // Sends the rest of the body, its end, the trailers (when they were to follow), and
  // closes the parameter channels.
  void finish_request(const std::optional<Fields> &trailers = std::nullopt) { flush_body(true, &trailers); }

  // In place of await_handshake, write_body and finish_request when the whole body is known
  // (no trailers to follow): the thread that receives the handshake sends the body, its end
  // and the closes at once, so the caller waits only once, in await_response.
  void send_whole_request(std::string body) {
    std::unique_lock<std::mutex> lk(state_->mu);
    if (state_->handshaken()) {
      if (state_->server_inbox.empty()) return;  // no responders: await_response says so
      server_inbox_ = state_->server_inbox;
      lk.unlock();
      body_buf_ = std::move(body);
      flush_body(true);
      return;
    }
    state_->on_handshake = [&nc = nc_, body = std::move(body)](const std::string &server_inbox) {
      try {
        auto batch = whole_request_batch(nc, server_inbox, body, false, nullptr);
        nc.send(batch);
      } catch (const nats::Error &) {
        // The connection is lost: await_response learns it from the call's state.
      }
    };
  }

  // The request body broke: close its channel without the end chunk, so the component
  // sees a cut-off stream at once instead of waiting out its own timeout.
  void abort_request() {
    body_buf_.clear();
    try {
      nc_.publish(server_inbox_ + ".params.0.0", "");
    } catch (const nats::Error &) {
      // Lost connection: the component's idle timeout ends its side.
    }
  }

  // Waits for the result head; throws CallError for every failure, including the
  // component's own error-code.
  ResponseHead await_response(detail::Clock::time_point deadline) {
    std::unique_lock<std::mutex> lk(state_->mu);
    if (!state_->cv.wait_until(lk, deadline, [&] { return state_->response_known(); }))
      throw CallError(CallError::Kind::timeout, "the component did not answer in time");
    return take_response();
  }

  // A call that no thread waits for (the HTTP edge's forwarded requests) is moved on by its
  // news instead: `progress` runs on the NATS reader thread, without the call's lock, each time
  // something the poll_* functions would return turns up, and when the connection is lost. It
  // must return at once. Set it once; news that came before it was set is there to poll.
  void on_progress(std::function<void()> progress) {
    std::lock_guard<std::mutex> lk(state_->mu);
    state_->progress = std::move(progress);
  }

  // await_response without waiting: the result head once it is here, std::nullopt before.
  std::optional<ResponseHead> poll_response() {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (!state_->response_known()) return std::nullopt;
    return take_response();
  }

  // read_body without waiting: `piece` (into `out`), the body's `end`, or `wait` for news.
  enum class BodyPoll { piece, end, wait };
  BodyPoll poll_body(std::string &out) {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (!state_->body_readable()) return BodyPoll::wait;
    return state_->take_body(out) ? BodyPoll::piece : BodyPoll::end;
  }

  // read_trailers without waiting: false while they are still to come.
  bool poll_trailers(std::optional<Fields> &out) {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (state_->result && !state_->result->trailers.pending) {
      out = state_->result->trailers.ready_value;
      return true;
    }
    if (!state_->trailers_known()) return false;
    out = state_->take_trailers();
    return true;
  }

  // Next piece of the response body; false at its end. Throws CallError when the stream
  // breaks (malformed, connection lost, nothing for `idle_timeout`).
  bool read_body(std::string &out, std::chrono::milliseconds idle_timeout) {
    return state_->read_body(out, idle_timeout);
  }

  // The response trailers, once the body has ended.
  std::optional<Fields> read_trailers(std::chrono::milliseconds timeout) {
    std::optional<Fields> trailers;
    if (poll_trailers(trailers)) return trailers;
    return state_->read_trailers(timeout);
  }

private:
  // await_response's answer once the state knows it, with its mu held.
  ResponseHead take_response() {
    if (state_->no_responders) throw CallError(CallError::Kind::no_responders, "no component is serving this target");
    if (!state_->failure.empty()) throw CallError(CallError::Kind::bad_reply, state_->failure);
    if (!state_->result) throw CallError(CallError::Kind::disconnected, "NATS connection lost");
    if (state_->result->error)
      throw CallError(CallError::Kind::component_error, "component error: " + state_->result->error->message(),
                      state_->result->error);
    return std::move(state_->result->response);  // asked for once: the head leaves the lock quickly
  }

  struct State : detail::AsyncChannels {
    State(const CallLimits &l, nats::ReaderStallAllowance &a)
        : AsyncChannels(l.max_buffered_body, l.max_borrowed_body, l.max_head_bytes, l.body_stall_budget, a), limits(l) {}
    CallLimits limits;
    std::string server_inbox;
    bool no_responders = false;
    std::string head_bytes;
    std::optional<detail::HandleResult> result;
    std::string failure;
    // Runs once, on the reader thread, when the handshake names the server's inbox.
    std::function<void(const std::string &server_inbox)> on_handshake;
    std::function<void()> progress;  // OutgoingCall::on_progress
    bool progress_reported = false;  // a report waits for the end of the read

    bool handshaken() const { return !server_inbox.empty() || no_responders; }
    bool result_known() const { return result.has_value() || !failure.empty(); }
    bool response_known() const { return result_known() || lost || no_responders; }
    unsigned conditions() const {
      return channel_conditions() | (handshaken() ? kFirstOwnCondition : 0u) | (no_responders ? kFirstOwnCondition << 1 : 0u) |
             (result_known() ? kFirstOwnCondition << 2 : 0u);
    }

    // Returns whether the progress callback is to be told (once the read is dispatched).
    bool on_message(const std::string &suffix, nats::Message &m) {
      std::unique_lock<std::mutex> lk(mu);
      unsigned before = conditions();
      if (suffix.empty()) {
        if (m.no_responders()) {
          no_responders = true;
        } else if (!m.reply.empty() && server_inbox.empty()) {
          server_inbox = m.reply;
          if (on_handshake) {
            auto send = std::move(on_handshake);
            on_handshake = nullptr;
            before |= kFirstOwnCondition;  // nobody waits for this handshake
            lk.unlock();
            send(m.reply);
            lk.lock();
          }
        }
      } else if (suffix == ".results") {
        on_result_bytes(m.data);
      } else if (suffix == ".results.0.0") {
        if (on_body_message(lk, m.data)) before = 0;
      } else if (suffix == ".results.0.1") {
        on_trailer_message(m.data);
      }
      bool wake = conditions() & ~before;
      bool report = wake && take_report();
      lk.unlock();  // the woken thread then finds the lock free
      if (wake) cv.notify_all();
      return report;
    }

    // With mu held: whether progress is to be told now (set, and not told already since).
    bool take_report() {
      if (!progress || progress_reported) return false;
      progress_reported = true;
      return true;
    }

    void report_progress() {
      std::unique_lock<std::mutex> lk(mu);
      progress_reported = false;
      // Set once and never reset: the pointer stays good while this state lives.
      auto *news = progress ? &progress : nullptr;
      lk.unlock();
      if (news) (*news)();
    }

    void on_result_bytes(const std::string &data) {
      if (result_known()) return;
      if (data.empty()) {  // the results channel closed before a whole value arrived
        failure = head_bytes.empty() ? "the component failed (empty result)" : "truncated result from the component";
        return;
      }
      head_bytes += data;
      auto decoded = detail::decode_handle_result(head_bytes.data(), head_bytes.size(), limits.max_head_bytes);
      if (decoded.status == detail::DecodeStatus::error) {
        failure = "malformed result from the component: " + decoded.error;
      } else if (decoded.status == detail::DecodeStatus::ok) {
        result = std::move(decoded.value);
        if (!result->error && !result->body.pending) body.set_ready(std::move(result->body.ready_bytes));
      }
    }

    bool on_disconnected() {
      std::unique_lock<std::mutex> lk(mu);
      lost = true;
      bool report = take_report();
      lk.unlock();
      cv.notify_all();
      return report;
    }
  };

  void flush_body(bool last, const std::optional<Fields> *trailers = nullptr) {
    try {
      if (last) {
        auto batch = whole_request_batch(nc_, server_inbox_, body_buf_, trailers_follow_, trailers);
        nc_.send(batch);
      } else {
        auto batch = nc_.batch();
        detail::publish_stream_chunks(batch, server_inbox_ + ".params.0.0", body_buf_.data(), body_buf_.size());
        nc_.send(batch);
      }
      body_buf_.clear();
    } catch (const nats::Error &e) {
      throw detail::nats_failure(e);
    }
  }

  // The last body bytes, the body's end and close, the trailers when they were to follow,
  // and the close of the root parameters.
  static nats::Batch whole_request_batch(nats::Client &nc, const std::string &server_inbox, const std::string &body,
                                         bool trailers_follow, const std::optional<Fields> *trailers) {
    std::string subject = server_inbox + ".params.0.0";
    auto batch = nc.batch();
    detail::publish_stream_chunks(batch, subject, body.data(), body.size(), true);
    batch.publish(subject, "");  // close the body channel
    if (trailers_follow) {
      std::string value;
      detail::encode_trailers(trailers ? *trailers : std::nullopt, value);
      detail::publish_and_close(batch, server_inbox + ".params.0.1", value);
    }
    batch.publish(server_inbox + ".params", "");  // close the root parameters
    return batch;
  }

  nats::Client &nc_;
  CallLimits limits_;
  bool trailers_follow_;
  std::shared_ptr<State> state_;
  std::string token_, reply_inbox_, server_inbox_;
  std::string body_buf_;
};

// ---- server side ----

// What a served call receives: the request head and its streamed body.
class IncomingRequest {
public:
  RequestHead head;
  // Next piece of the request body; false at its end. Throws CallError.
  bool read_body(std::string &out, std::chrono::milliseconds idle_timeout);
  // The request trailers (after the body).
  std::optional<Fields> read_trailers(std::chrono::milliseconds timeout);

private:
  friend class Server;
  struct State;
  std::shared_ptr<State> state_;
};

// Writes one call's result. Small responses leave in one write: the head waits in the
// batch until the body fills a message or the response finishes.
class ResponseWriter {
public:
  void send_head(const ResponseHead &head);
  void write_body(const char *data, size_t size);
  void write_body(const std::string &data) { write_body(data.data(), data.size()); }
  void finish(const std::optional<Fields> &trailers = std::nullopt);
  // Answers with an error-code instead of a response; only before send_head.
  void fail(const ErrorCode &code);
  // Ends the call after a failure: an error-code before the head, else a cut-off body.
  void abort(const std::string &why);
  bool finished() const { return finished_; }

private:
  friend class Server;
  ResponseWriter(nats::Client &nc, std::string reply, size_t flush_bytes)
      : nc_(nc), reply_(std::move(reply)), flush_bytes_(flush_bytes), batch_(nc.batch()) {}
  void flush_body();
  void emit_head(const std::optional<Fields> *ready_trailers);
  nats::Client &nc_;
  std::string reply_;
  size_t flush_bytes_;
  nats::Batch batch_;
  std::string body_buf_;
  std::optional<ResponseHead> head_;  // sent, but not yet encoded into the batch
  bool head_sent_ = false, finished_ = false;
};

using Handler = std::function<void(IncomingRequest &, ResponseWriter &)>;

// Serves `wrpc:http/incoming-handler@0.1.0.handle` for one component id on a lattice.
// Each call runs on a worker thread (started on demand, up to `workers`); the NATS reader
// thread only routes bytes.
class Server {
public:
  Server(nats::Client &nc, std::string lattice, std::string component, Handler handler,
         size_t workers = WRPC_HTTP_SERVER_WORKERS, CallLimits limits = {})
      : nc_(nc), lattice_(std::move(lattice)), component_(std::move(component)), handler_(std::move(handler)),
        worker_count_(workers), limits_(limits) {}
  ~Server() { stop(); }

  void start();
  // Stops taking calls, lets running ones finish, joins the workers.
  void stop();
  std::chrono::milliseconds body_timeout{WRPC_HTTP_BODY_IDLE_TIMEOUT_MS};

private:
  void on_invocation(nats::Message &m);
  void run(std::shared_ptr<IncomingRequest::State> state, std::string reply);

  nats::Client &nc_;
  std::string lattice_, component_;
  Handler handler_;
  size_t worker_count_;
  CallLimits limits_;
  uint64_t sid_ = 0;
  std::mutex workers_mu_;
  std::unique_ptr<detail::ElasticTaskQueue> workers_;
  // Calls still waiting for their parameters; stop() ends them instead of waiting.
  std::mutex calls_mu_;
  std::unordered_map<std::string, std::weak_ptr<IncomingRequest::State>> calls_;
};

struct IncomingRequest::State : detail::AsyncChannels {
  State(const CallLimits &l, nats::ReaderStallAllowance &a)
      : AsyncChannels(l.max_buffered_body, l.max_borrowed_body, l.max_head_bytes, l.body_stall_budget, a), limits(l) {}
  CallLimits limits;
  std::string token;
  std::string param_bytes;
  std::optional<detail::HandleParams> params;
  std::string failure;

  // With mu held.
  void on_param_bytes(const std::string &data) {
    if (params || !failure.empty() || data.empty()) return;
    param_bytes += data;
    auto decoded = detail::decode_handle_params(param_bytes.data(), param_bytes.size(), limits.max_head_bytes);
    if (decoded.status == detail::DecodeStatus::error) {
      failure = "malformed parameters: " + decoded.error;
    } else if (decoded.status == detail::DecodeStatus::ok) {
      params = std::move(decoded.value);
      if (!params->body.pending) body.set_ready(std::move(params->body.ready_bytes));
      if (!params->trailers.pending) trailers_done = true;
    }
  }

  unsigned conditions() const {
    return channel_conditions() | (params ? kFirstOwnCondition : 0u) | (failure.empty() ? 0u : kFirstOwnCondition << 1);
  }

  void on_message(const std::string &suffix, nats::Message &m) {
    std::unique_lock<std::mutex> lk(mu);
    unsigned before = conditions();
    if (suffix == ".params") {
      on_param_bytes(m.data);
    } else if (suffix == ".params.0.0") {
      if (on_body_message(lk, m.data)) before = 0;
    } else if (suffix == ".params.0.1") {
      on_trailer_message(m.data);
    }
    bool wake = conditions() & ~before;
    lk.unlock();  // the woken thread then finds the lock free
    if (wake) cv.notify_all();
  }
};

inline bool IncomingRequest::read_body(std::string &out, std::chrono::milliseconds idle_timeout) {
  return state_->read_body(out, idle_timeout);
}

inline std::optional<Fields> IncomingRequest::read_trailers(std::chrono::milliseconds timeout) {
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (!state_->params->trailers.pending) return state_->params->trailers.ready_value;
  }
  return state_->read_trailers(timeout);
}

// The head waits until the first body flush or finish(): a response finished by then goes
// out whole, trailers included, in one write.
inline void ResponseWriter::send_head(const ResponseHead &head) {
  head_ = head;
  head_sent_ = true;
}

inline void ResponseWriter::emit_head(const std::optional<Fields> *ready_trailers) {
  if (!head_) return;
  std::string value;
  detail::encode_handle_result_ok(*head_, value, ready_trailers);
  detail::publish_and_close(batch_, reply_ + ".results", value);
  head_.reset();
}

inline void ResponseWriter::fail(const ErrorCode &code) {
  std::string value;
  detail::encode_handle_result_err(code, value);
  detail::publish_and_close(batch_, reply_ + ".results", value);
  head_sent_ = finished_ = true;
  nc_.send(batch_);
}

inline void ResponseWriter::abort(const std::string &why) {
  if (finished_) return;
  if (!head_sent_) return fail(ErrorCode::internal_error(why));
  emit_head(nullptr);
  body_buf_.clear();
  batch_.publish(reply_ + ".results.0.0", "");  // close without the end chunk
  finished_ = true;
  nc_.send(batch_);
}

inline void ResponseWriter::write_body(const char *data, size_t size) {
  body_buf_.append(data, size);
  if (body_buf_.size() >= flush_bytes_) flush_body();
}

inline void ResponseWriter::flush_body() {
  emit_head(nullptr);
  detail::publish_stream_chunks(batch_, reply_ + ".results.0.0", body_buf_.data(), body_buf_.size());
  body_buf_.clear();
  nc_.send(batch_);
}

inline void ResponseWriter::finish(const std::optional<Fields> &trailers) {
  if (finished_) return;
  if (!head_sent_) send_head(ResponseHead{});
  bool trailers_in_head = head_.has_value();
  emit_head(trailers_in_head ? &trailers : nullptr);
  std::string body_subject = reply_ + ".results.0.0";
  detail::publish_stream_chunks(batch_, body_subject, body_buf_.data(), body_buf_.size(), true);
  body_buf_.clear();
  batch_.publish(body_subject, "");
  if (!trailers_in_head) {
    std::string trailer_value;
    detail::encode_trailers(trailers, trailer_value);
    detail::publish_and_close(batch_, reply_ + ".results.0.1", trailer_value);
  }
  finished_ = true;
  nc_.send(batch_);
}

inline void Server::start() {
  {
    std::lock_guard<std::mutex> lk(workers_mu_);
    workers_ = std::make_unique<detail::ElasticTaskQueue>(worker_count_);
  }
  // The queue group spreads calls over every instance of the component.
  sid_ = nc_.subscribe(
      handle_subject(lattice_, component_), [this](nats::Message &m) { on_invocation(m); },
      lattice_ + "." + component_);
}

inline void Server::stop() {
  {
    std::lock_guard<std::mutex> lk(workers_mu_);
    if (!workers_) return;
  }
  if (sid_) {
    try {
      nc_.unsubscribe(sid_);
    } catch (const nats::Error &) {
    }
    sid_ = 0;
  }
  {
    std::lock_guard<std::mutex> lk(calls_mu_);
    for (auto &call : calls_) {
      if (auto state = call.second.lock()) {
        std::lock_guard<std::mutex> state_lock(state->mu);
        if (!state->params) state->failure = "server stopping";
        state->cv.notify_all();
      }
    }
  }
  std::unique_ptr<detail::ElasticTaskQueue> workers;
  {
    std::lock_guard<std::mutex> lk(workers_mu_);
    workers = std::move(workers_);
  }
  workers->shutdown();  // running calls finish first
}

// Runs on the NATS reader thread: set up the call's inbox, answer the handshake, and
// queue the call for a worker.
inline void Server::on_invocation(nats::Message &m) {
  if (m.reply.empty()) return;  // not a wRPC invocation
  auto state = std::make_shared<IncomingRequest::State>(limits_, nc_.reader_stall_allowance());
  state->token = nc_.next_inbox_token();
  std::weak_ptr<IncomingRequest::State> weak = state;
  nats::InboxHandler handler;
  handler.on_message = [weak](const std::string &suffix, nats::Message &msg) {
    if (auto s = weak.lock()) s->on_message(suffix, msg);
  };
  handler.on_disconnected = [weak] {
    if (auto s = weak.lock()) {
      std::lock_guard<std::mutex> lk(s->mu);
      s->lost = true;
      s->cv.notify_all();
    }
  };
  std::string server_inbox = nc_.register_inbox(state->token, std::move(handler));
  {
    std::lock_guard<std::mutex> lk(state->mu);
    state->on_param_bytes(m.data);
  }
  try {
    auto batch = nc_.batch();
    batch.publish(m.reply, "", server_inbox);
    nc_.send(batch);
  } catch (const nats::Error &) {
    nc_.release_inbox(state->token);
    return;
  }
  std::string reply = m.reply;
  {
    std::lock_guard<std::mutex> lk(calls_mu_);
    calls_[state->token] = state;
  }
  std::lock_guard<std::mutex> lk(workers_mu_);
  if (workers_) return workers_->enqueue([this, state, reply] { run(state, reply); });
  nc_.release_inbox(state->token);  // stopped meanwhile: the caller times out
  std::lock_guard<std::mutex> calls_lock(calls_mu_);
  calls_.erase(state->token);
}

inline void Server::run(std::shared_ptr<IncomingRequest::State> state, std::string reply) {
  struct Release {
    Server &server;
    std::string token;
    ~Release() {
      server.nc_.release_inbox(token);
      std::lock_guard<std::mutex> lk(server.calls_mu_);
      server.calls_.erase(token);
    }
  } release{*this, state->token};
  ResponseWriter writer(nc_, reply, limits_.body_flush_bytes);
  try {
    {
      std::unique_lock<std::mutex> lk(state->mu);
      if (!state->cv.wait_for(lk, body_timeout,
                              [&] { return state->params.has_value() || !state->failure.empty() || state->lost; }))
        return;  // the caller never sent its parameters
      if (!state->params) return;
    }
    IncomingRequest request;
    request.head = state->params->request;
    request.state_ = state;
    handler_(request, writer);
    writer.finish();
  } catch (const std::exception &e) {
    try {
      writer.abort(e.what());
    } catch (const std::exception &) {
      // The connection is gone too: the caller's own timeout or disconnect handling ends it.
    }
  }
}

}  // namespace wrpc
}  // namespace wrpc_http

// ---- provider runtime ----
//
// What a wasmCloud 1.x host expects of a capability provider: host data on stdin, the
// lattice's health/link/shutdown/config subjects, and logs on stderr.

namespace wrpc_http {

using StringMap = std::map<std::string, std::string>;

// Logs to stderr: plain lines, or JSON lines when the host asks for structured logging.
class Logger {
public:
  enum class Level { trace, debug, info, warn, error, critical, off };

  static Level parse_level(const std::string &name) {
    static const std::pair<const char *, Level> names[] = {
        {"trace", Level::trace}, {"debug", Level::debug}, {"info", Level::info},
        {"warn", Level::warn},   {"warning", Level::warn}, {"error", Level::error},
        {"critical", Level::critical}};
    std::string lower = name;
    for (auto &c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (auto &n : names)
      if (lower == n.first) return n.second;
    return Level::info;
  }
  static const char *level_name(Level level) {
    static const char *names[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
    return names[static_cast<int>(level)];
  }

  void configure(Level level, bool structured) {
    level_ = level;
    structured_ = structured;
  }
  // Each line that passes the level also goes to `hook` (the OTLP log export). Set it before
  // other threads log, and clear it before what it calls goes away.
  using Hook = std::function<void(Level, const std::string &, const StringMap &)>;
  void set_hook(Hook hook) { hook_ = std::move(hook); }
  bool enabled(Level level) const { return level >= level_; }

  void log(Level level, const std::string &message, const StringMap &fields = {}) const {
    if (!enabled(level)) return;
    std::string line;
    if (structured_) {
      nlohmann::json j = {{"timestamp", timestamp()}, {"level", level_name(level)}, {"message", message}};
      for (auto &f : fields) j[f.first] = f.second;
      line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
      line = timestamp() + " " + level_name(level) + " " + message;
      for (auto &f : fields) line += " " + f.first + "=" + f.second;
    }
    line += "\n";
    {
      std::lock_guard<std::mutex> lk(mu_);
      std::fwrite(line.data(), 1, line.size(), stderr);
    }
    if (hook_) hook_(level, message, fields);
  }
  void trace(const std::string &m, const StringMap &f = {}) const { log(Level::trace, m, f); }
  void debug(const std::string &m, const StringMap &f = {}) const { log(Level::debug, m, f); }
  void info(const std::string &m, const StringMap &f = {}) const { log(Level::info, m, f); }
  void warn(const std::string &m, const StringMap &f = {}) const { log(Level::warn, m, f); }
  void error(const std::string &m, const StringMap &f = {}) const { log(Level::error, m, f); }

  // Adapts this logger for the NATS client.
  nats::LogSink nats_sink() const {
    return [this](nats::LogLevel level, const std::string &text) {
      static const Level map[] = {Level::trace, Level::debug, Level::info, Level::warn, Level::error};
      log(map[static_cast<int>(level)], text);
    };
  }

private:
  static std::string timestamp() {
    auto now = std::chrono::system_clock::now();
    auto secs = std::chrono::system_clock::to_time_t(now);
    auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[64];  // roomy: the compiler cannot see that the fields are small
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
    return buf;
  }

  std::atomic<Level> level_{Level::info};
  std::atomic<bool> structured_{false};
  mutable std::mutex mu_;
  Hook hook_;
};

// A secret from the host: text or bytes. Never logged.
struct SecretValue {
  bool is_bytes = false;
  std::string value;
};
using Secrets = std::map<std::string, SecretValue>;

// An `InterfaceLinkDefinition` as the host sends it.
struct LinkDefinition {
  std::string source_id, target, name = "default", wit_namespace, wit_package;
  std::vector<std::string> interfaces;
  StringMap source_config, target_config;
  std::string source_secrets, target_secrets;  // sealed bytes, as received
  // This provider's side of the link's secrets, opened with its xkey (see Provider).
  Secrets secrets;

  // Throws std::invalid_argument naming the bad field.
  static LinkDefinition from_json(const nlohmann::json &j);
  // Links repeat (the host re-sends them): this identifies one.
  std::string key(const std::string &peer) const {
    return peer + "\n" + name + "\n" + wit_namespace + "\n" + wit_package;
  }
};

// The one line a wasmCloud host writes on the provider's stdin (base64 JSON).
struct HostData {
  std::string host_id, lattice_rpc_prefix = "default", lattice_rpc_url = "nats://127.0.0.1:4222";
  std::string lattice_rpc_user_jwt, lattice_rpc_user_seed, provider_key, instance_id;
  std::string host_xkey_public_key, provider_xkey_private_key;
  StringMap env_values, config;
  Secrets secrets;
  nlohmann::json otel_config = nlohmann::json::object();
  std::vector<std::string> cluster_issuers;
  std::vector<LinkDefinition> link_definitions;
  std::optional<uint64_t> default_rpc_timeout_ms;
  bool structured_logging = false;
  std::string log_level = "info";
  // Not the host's: false when the command line stood in for a host (Launch's flags), so
  // there is no host process whose end the provider follows.
  bool started_by_host = true;

  // Throws std::invalid_argument with a one-line reason.
  static HostData parse_json(const std::string &json);
  static HostData parse_base64(const std::string &line);
  // Reads one line from `fd` (stdin), waiting at most `timeout`, as the Go SDK does.
  static HostData read(int fd = 0, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000),
                       size_t max_line = WRPC_HTTP_MAX_HOST_DATA_BYTES);
};

namespace detail {

inline std::string json_string(const nlohmann::json &j, const char *key, const std::string &fallback = "") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) throw std::invalid_argument(std::string("host data field '") + key + "' must be a string");
  return it->get<std::string>();
}

// Config maps are string to string; numbers and booleans are taken as their text.
inline StringMap json_string_map(const nlohmann::json &j, const char *key) {
  StringMap out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_object()) throw std::invalid_argument(std::string("field '") + key + "' must be an object");
  for (auto &kv : it->items()) {
    if (kv.value().is_string()) {
      out[kv.key()] = kv.value().get<std::string>();
    } else if (kv.value().is_number() || kv.value().is_boolean()) {
      out[kv.key()] = kv.value().dump();
    } else {
      throw std::invalid_argument(std::string("field '") + key + "." + kv.key() + "' must be a string");
    }
  }
  return out;
}

// Sealed secrets arrive as a JSON array of byte values.
inline std::string json_bytes(const nlohmann::json &j, const char *key) {
  std::string out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) throw std::invalid_argument(std::string("field '") + key + "' must be an array of bytes");
  for (auto &b : *it) {
    if (!b.is_number_unsigned() || b.get<uint64_t>() > 255)
      throw std::invalid_argument(std::string("field '") + key + "' must be an array of bytes");
    out.push_back(static_cast<char>(b.get<uint64_t>()));
  }
  return out;
}

// `{"name": {"kind": "String"|"Bytes", "value": "..."|[bytes]}}`, as the host serializes
// SecretValue. Error messages name the secret, never its value.
inline Secrets parse_secrets(const nlohmann::json &j) {
  Secrets out;
  if (j.is_null()) return out;
  if (!j.is_object()) throw std::invalid_argument("secrets must be a JSON object");
  for (auto &kv : j.items()) {
    auto &v = kv.value();
    if (!v.is_object()) throw std::invalid_argument("secret '" + kv.key() + "' must be an object");
    SecretValue secret;
    auto kind = json_string(v, "kind");
    if (kind == "String") {
      secret.value = json_string(v, "value");
    } else if (kind == "Bytes") {
      secret.is_bytes = true;
      secret.value = json_bytes(v, "value");
    } else {
      throw std::invalid_argument("secret '" + kv.key() + "' has unknown kind '" + kind + "'");
    }
    out[kv.key()] = std::move(secret);
  }
  return out;
}

}  // namespace detail

inline LinkDefinition LinkDefinition::from_json(const nlohmann::json &j) {
  if (!j.is_object()) throw std::invalid_argument("link definition must be a JSON object");
  LinkDefinition link;
  link.source_id = detail::json_string(j, "source_id");
  link.target = detail::json_string(j, "target");
  link.name = detail::json_string(j, "name", "default");
  link.wit_namespace = detail::json_string(j, "wit_namespace");
  link.wit_package = detail::json_string(j, "wit_package");
  if (j.contains("interfaces") && !j["interfaces"].is_null()) {
    if (!j["interfaces"].is_array()) throw std::invalid_argument("link field 'interfaces' must be an array");
    for (auto &i : j["interfaces"]) {
      if (!i.is_string()) throw std::invalid_argument("link field 'interfaces' must hold strings");
      link.interfaces.push_back(i.get<std::string>());
    }
  }
  link.source_config = detail::json_string_map(j, "source_config");
  link.target_config = detail::json_string_map(j, "target_config");
  link.source_secrets = detail::json_bytes(j, "source_secrets");
  link.target_secrets = detail::json_bytes(j, "target_secrets");
  if (link.source_id.empty() || link.target.empty())
    throw std::invalid_argument("link definition needs 'source_id' and 'target'");
  return link;
}

inline HostData HostData::parse_json(const std::string &text) {
  // Real host data is a few levels deep. Copying a JSON value recurses once per level, so
  // hostile nesting would overflow the stack: refuse it while parsing.
  constexpr int max_depth = 32;
  auto limit_depth = [](int depth, nlohmann::json::parse_event_t, nlohmann::json &) {
    if (depth > max_depth)
      throw std::invalid_argument("host data nests deeper than " + std::to_string(max_depth) + " levels");
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, limit_depth);
  } catch (const nlohmann::json::exception &e) {
    throw std::invalid_argument(std::string("host data is not JSON: ") + e.what());
  }
  if (!j.is_object()) throw std::invalid_argument("host data must be a JSON object");
  HostData h;
  try {
    h.host_id = detail::json_string(j, "host_id");
    h.lattice_rpc_prefix = detail::json_string(j, "lattice_rpc_prefix", "default");
    h.lattice_rpc_url = detail::json_string(j, "lattice_rpc_url");
    if (h.lattice_rpc_url.empty()) h.lattice_rpc_url = "nats://127.0.0.1:4222";
    h.lattice_rpc_user_jwt = detail::json_string(j, "lattice_rpc_user_jwt");
    h.lattice_rpc_user_seed = detail::json_string(j, "lattice_rpc_user_seed");
    h.provider_key = detail::json_string(j, "provider_key");
    h.instance_id = detail::json_string(j, "instance_id");
    h.host_xkey_public_key = detail::json_string(j, "host_xkey_public_key");
    h.provider_xkey_private_key = detail::json_string(j, "provider_xkey_private_key");
    h.env_values = detail::json_string_map(j, "env_values");
    h.config = detail::json_string_map(j, "config");
    if (j.contains("secrets")) h.secrets = detail::parse_secrets(j["secrets"]);
    if (j.contains("otel_config") && j["otel_config"].is_object()) h.otel_config = j["otel_config"];
    if (j.contains("cluster_issuers") && j["cluster_issuers"].is_array())
      for (auto &i : j["cluster_issuers"])
        if (i.is_string()) h.cluster_issuers.push_back(i.get<std::string>());
    if (j.contains("link_definitions") && !j["link_definitions"].is_null()) {
      if (!j["link_definitions"].is_array()) throw std::invalid_argument("'link_definitions' must be an array");
      for (auto &l : j["link_definitions"]) h.link_definitions.push_back(LinkDefinition::from_json(l));
    }
    if (j.contains("default_rpc_timeout_ms") && j["default_rpc_timeout_ms"].is_number_unsigned())
      h.default_rpc_timeout_ms = j["default_rpc_timeout_ms"].get<uint64_t>();
    if (j.contains("structured_logging") && j["structured_logging"].is_boolean())
      h.structured_logging = j["structured_logging"].get<bool>();
    h.log_level = detail::json_string(j, "log_level", "info");
  } catch (const nlohmann::json::exception &e) {
    throw std::invalid_argument(std::string("bad host data: ") + e.what());
  }
  if (h.provider_key.empty()) throw std::invalid_argument("host data has no 'provider_key'");
  return h;
}

inline HostData HostData::parse_base64(const std::string &line) {
  std::string trimmed = line;
  while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.back()))) trimmed.pop_back();
  if (trimmed.empty()) throw std::invalid_argument("host data is empty");
  std::string json;
  try {
    json = detail::base64_decode(trimmed);
  } catch (const std::exception &e) {
    throw std::invalid_argument(std::string("host data is not base64: ") + e.what());
  }
  return parse_json(json);
}

inline HostData HostData::read(int fd, std::chrono::milliseconds timeout, size_t max_line) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string line;
  char c;
  // Byte by byte up to the newline: whatever follows on stdin is not ours to consume.
  while (line.size() < max_line) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw std::invalid_argument("no host data on stdin within the timeout");
    pollfd pfd{fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
    line.push_back(c);
  }
  if (line.size() >= max_line) throw std::invalid_argument("host data line too long");
  return parse_base64(line);
}

// How the provider binary was started: by a host (host data on stdin), or by hand for local
// development with `--nats URL --lattice NAME --address HOST:PORT --target COMPONENT` or the
// environment variables WRPC_HTTP_NATS_URL, WRPC_HTTP_LATTICE, WRPC_HTTP_ADDRESS,
// WRPC_HTTP_TARGET (a host clears the environment, so these never leak into a deployment).
struct Launch {
  HostData host_data;
  std::string target;

  // Throws std::invalid_argument with a one-line reason (bad flag, bad host data).
  static Launch from(int argc, char **argv, const std::string &default_target) {
    static const std::pair<const char *, const char *> options[] = {{"--nats", "WRPC_HTTP_NATS_URL"},
                                                                    {"--lattice", "WRPC_HTTP_LATTICE"},
                                                                    {"--address", "WRPC_HTTP_ADDRESS"},
                                                                    {"--target", "WRPC_HTTP_TARGET"}};
    StringMap given;
    for (auto &o : options)
      if (const char *env = std::getenv(o.second)) given[o.first] = env;
    for (int i = 1; i < argc; i += 2) {
      std::string flag = argv[i];
      bool known = std::any_of(std::begin(options), std::end(options), [&](auto &o) { return flag == o.first; });
      if (!known || i + 1 >= argc)
        throw std::invalid_argument("usage: " + std::string(argv[0]) +
                                    " [--nats URL] [--lattice NAME] [--address HOST:PORT] [--target COMPONENT]");
      given[flag] = argv[i + 1];
    }
    Launch launch;
    launch.target = given.count("--target") ? given["--target"] : default_target;
    if (given.empty()) {
      launch.host_data = HostData::read();
      return launch;
    }
    auto &h = launch.host_data;
    h.started_by_host = false;
    h.host_id = "local";
    h.provider_key = "http-server";
    h.instance_id = "local";
    if (given.count("--nats")) h.lattice_rpc_url = given["--nats"];
    if (given.count("--lattice")) h.lattice_rpc_prefix = given["--lattice"];
    if (given.count("--address")) h.config["address"] = given["--address"];
    return launch;
  }
};

}  // namespace wrpc_http

// ---- HTTP edge ----
//
// HTTP/1.1 framing and the connection lifecycle belong to the provider, not to cpp-httplib: a
// strict request-head parser and chunked decoder (RFC 9112) with explicit limits and a named
// refusal for each violation; one loop thread per listener that accepts and parks idle and
// slow connections in epoll; bounded workers that take a connection only while a complete
// head is there. cpp-httplib still routes each request and writes its response: it reads the
// request through a stream that hands it a canonical head and exactly that request's decoded
// body, never a byte of the next one.

namespace wrpc_http {
namespace detail {
namespace http1 {

// Every reason the edge refuses a request, with the status it answers.
enum class Refusal {
  none,
  bad_request_line,
  bad_method,
  bad_target,
  target_too_long,
  bad_version,
  unsupported_version,
  bare_line_feed,
  obs_fold,
  space_before_colon,
  bad_field_name,
  bad_field_value,
  head_too_large,
  too_many_fields,
  missing_host,
  duplicate_host,
  bad_host,
  bad_content_length,
  duplicate_content_length,
  content_length_with_transfer_encoding,
  bad_transfer_encoding,
  unsupported_transfer_encoding,
  unsupported_method,
  unsupported_expectation,
  bad_chunk_size,
  chunk_size_too_long,
  bad_chunk_extension,
  missing_chunk_crlf,
  trailers_too_large,
  body_too_large,
  body_incomplete,
  head_timeout,
};

struct RefusalInfo {
  int status;
  const char *text;
};

inline RefusalInfo describe(Refusal refusal) {
  switch (refusal) {
  case Refusal::none: return {200, "accepted"};
  case Refusal::bad_request_line: return {400, "malformed request line"};
  case Refusal::bad_method: return {400, "malformed method"};
  case Refusal::bad_target: return {400, "malformed request target"};
  case Refusal::target_too_long: return {414, "request target too long"};
  case Refusal::bad_version: return {400, "malformed HTTP version"};
  case Refusal::unsupported_version: return {505, "HTTP version not supported"};
  case Refusal::bare_line_feed: return {400, "line ends in a bare LF"};
  case Refusal::obs_fold: return {400, "obsolete line folding"};
  case Refusal::space_before_colon: return {400, "whitespace between field name and colon"};
  case Refusal::bad_field_name: return {400, "malformed field name"};
  case Refusal::bad_field_value: return {400, "control character in a field value"};
  case Refusal::head_too_large: return {431, "request head too large"};
  case Refusal::too_many_fields: return {431, "too many header fields"};
  case Refusal::missing_host: return {400, "HTTP/1.1 request without Host"};
  case Refusal::duplicate_host: return {400, "more than one Host"};
  case Refusal::bad_host: return {400, "malformed Host"};
  case Refusal::bad_content_length: return {400, "invalid Content-Length"};
  case Refusal::duplicate_content_length: return {400, "more than one Content-Length"};
  case Refusal::content_length_with_transfer_encoding:
    return {400, "Content-Length together with Transfer-Encoding"};
  case Refusal::bad_transfer_encoding: return {400, "malformed Transfer-Encoding"};
  case Refusal::unsupported_transfer_encoding: return {501, "transfer coding not implemented"};
  case Refusal::unsupported_method: return {501, "method not implemented"};
  case Refusal::unsupported_expectation: return {417, "expectation not supported"};
  case Refusal::bad_chunk_size: return {400, "malformed chunk size"};
  case Refusal::chunk_size_too_long: return {400, "chunk size has too many digits"};
  case Refusal::bad_chunk_extension: return {400, "malformed or oversized chunk extension"};
  case Refusal::missing_chunk_crlf: return {400, "chunk data not followed by CRLF"};
  case Refusal::trailers_too_large: return {431, "request trailers too large"};
  case Refusal::body_too_large: return {413, "request body larger than max_content_len"};
  case Refusal::body_incomplete: return {400, "request body incomplete"};
  case Refusal::head_timeout: return {408, "request head not received in time"};
  }
  return {400, "bad request"};
}

struct Limits {
  size_t max_head_bytes = WRPC_HTTP_MAX_REQUEST_HEAD_BYTES;  // request line + fields (and trailers)
  size_t max_fields = WRPC_HTTP_MAX_REQUEST_FIELDS;          // header (and trailer) lines
  size_t max_target_bytes = WRPC_HTTP_MAX_REQUEST_TARGET_BYTES;
  size_t max_chunk_extension_bytes = WRPC_HTTP_MAX_CHUNK_EXTENSION_BYTES;
};

using FieldList = std::vector<std::pair<std::string, std::string>>;  // names as sent, in order

enum class Framing { none, length, chunked };

// One request head, as sent: the method and every field byte-exact (no decoding of any kind).
struct Head {
  std::string method;
  std::string target;           // as sent
  std::string path_with_query;  // origin-form: the target; absolute-form: its path and query
  std::string authority;        // absolute-form: from the target (RFC 9112 3.2.2); else Host
  std::string scheme;           // absolute-form only: "http" or "https"
  int minor_version = 1;
  FieldList fields;
  Framing framing = Framing::none;
  uint64_t content_length = 0;
  bool keep_alive = true;
  bool expect_continue = false;
};

struct HeadParse {
  enum class State { incomplete, complete, refused } state = State::incomplete;
  Refusal refusal = Refusal::none;
  size_t consumed = 0;  // complete: the head's bytes, leading empty lines included
};

// RFC 9110 5.6.2 tchar.
inline bool is_tchar(unsigned char c) {
  return std::isalnum(c) || (c != 0 && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}

inline bool is_token(const std::string &s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

// field-vchar, SP and HTAB (obs-text allowed); every other control byte, DEL included, is refused.
inline bool is_field_value_byte(unsigned char c) { return c == '\t' || (c >= ' ' && c != 0x7f); }

inline bool ascii_iequals(const std::string &a, const char *b) {
  size_t n = std::strlen(b);
  if (a.size() != n) return false;
  for (size_t i = 0; i < n; ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

inline std::string trim_ows(const std::string &s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}

// A comma-separated list of tokens (Connection, Transfer-Encoding), lower-cased; nullopt when
// an element is not a token.
inline std::optional<std::vector<std::string>> token_list(const std::string &value) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= value.size()) {
    size_t comma = value.find(',', start);
    if (comma == std::string::npos) comma = value.size();
    std::string item = trim_ows(value.substr(start, comma - start));
    if (!item.empty()) {
      if (!is_token(item)) return std::nullopt;
      for (auto &c : item) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      out.push_back(item);
    }
    start = comma + 1;
  }
  return out;
}

// `name: value` without its CRLF (RFC 9112 5): no whitespace before the colon, a token name,
// optional whitespace around the value, no control bytes but HTAB.
inline Refusal parse_field_line(const char *begin, const char *end, std::pair<std::string, std::string> &field) {
  if (begin == end) return Refusal::bad_field_name;
  if (*begin == ' ' || *begin == '\t') return Refusal::obs_fold;
  const char *colon = static_cast<const char *>(std::memchr(begin, ':', static_cast<size_t>(end - begin)));
  if (!colon || colon == begin) return Refusal::bad_field_name;
  if (colon[-1] == ' ' || colon[-1] == '\t') return Refusal::space_before_colon;
  for (const char *p = begin; p < colon; ++p)
    if (!is_tchar(static_cast<unsigned char>(*p))) return Refusal::bad_field_name;
  for (const char *p = colon + 1; p < end; ++p)
    if (!is_field_value_byte(static_cast<unsigned char>(*p))) return Refusal::bad_field_value;
  field.first.assign(begin, colon);
  field.second = trim_ows(std::string(colon + 1, end));
  return Refusal::none;
}

// uri-host [ ":" port ]: reg-name, IPv4 or IP-literal characters only, so a Host can never
// carry a path, user info or whitespace into routing.
inline bool valid_authority(const std::string &authority) {
  if (authority.empty()) return false;
  for (unsigned char c : authority)
    if (!(std::isalnum(c) || std::strchr("-._~!$&'()*+,;=:[]%", c))) return false;
  return true;
}

// Finds the end of the line that starts at `from`: the index of its LF, or npos. A LF
// without CR before it sets `bare_lf`.
inline size_t find_line_end(const char *data, size_t size, size_t from, bool &bare_lf) {
  const void *lf = std::memchr(data + from, '\n', size - from);
  if (!lf) return std::string::npos;
  size_t at = static_cast<size_t>(static_cast<const char *>(lf) - data);
  bare_lf = at == from || data[at - 1] != '\r';
  return at;
}

inline Refusal parse_request_line(const std::string &line, const Limits &limits, Head &head) {
  size_t sp1 = line.find(' ');
  if (sp1 == std::string::npos) return Refusal::bad_request_line;
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string::npos || line.find(' ', sp2 + 1) != std::string::npos) return Refusal::bad_request_line;
  head.method = line.substr(0, sp1);
  head.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string version = line.substr(sp2 + 1);
  if (!is_token(head.method) || head.method.size() > 64) return Refusal::bad_method;
  if (head.target.empty()) return Refusal::bad_target;
  if (head.target.size() > limits.max_target_bytes) return Refusal::target_too_long;
  for (unsigned char c : head.target)
    if (c <= ' ' || c == 0x7f) return Refusal::bad_target;
  if (!is_valid_utf8(head.target.data(), head.target.size())) return Refusal::bad_target;
  if (version == "HTTP/1.1") {
    head.minor_version = 1;
  } else if (version == "HTTP/1.0") {
    head.minor_version = 0;
  } else if (version.size() == 8 && version.compare(0, 5, "HTTP/") == 0 && std::isdigit(static_cast<unsigned char>(version[5])) &&
             version[6] == '.' && std::isdigit(static_cast<unsigned char>(version[7]))) {
    return Refusal::unsupported_version;
  } else {
    return Refusal::bad_version;
  }
  if (head.method == "CONNECT") return Refusal::unsupported_method;  // no tunnels through a component
  const std::string &t = head.target;
  if (t[0] == '/') {
    head.path_with_query = t;
  } else if (t == "*") {
    if (head.method != "OPTIONS") return Refusal::bad_target;
    head.path_with_query = t;
  } else {
    size_t scheme_end = t.find("://");
    if (scheme_end == std::string::npos) return Refusal::bad_target;
    std::string scheme = t.substr(0, scheme_end);
    for (auto &c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme != "http" && scheme != "https") return Refusal::bad_target;
    size_t authority_start = scheme_end + 3;
    size_t authority_end = t.find_first_of("/?#", authority_start);
    if (authority_end == std::string::npos) authority_end = t.size();
    head.scheme = scheme;
    head.authority = t.substr(authority_start, authority_end - authority_start);
    if (!valid_authority(head.authority) || head.authority.find('@') != std::string::npos) return Refusal::bad_target;
    head.path_with_query = t.substr(authority_end);
    if (head.path_with_query.empty() || head.path_with_query[0] != '/') head.path_with_query.insert(0, "/");
  }
  if (head.path_with_query.find('#') != std::string::npos) return Refusal::bad_target;
  return Refusal::none;
}

// What the fields say about framing, connection and expectations (RFC 9112 6, 9.3; RFC 9110 10.1.1).
inline Refusal interpret_fields(Head &head) {
  size_t hosts = 0, lengths = 0, codings = 0;
  std::string host, length, coding;
  bool close = false, keep_alive_token = false;
  for (auto &f : head.fields) {
    const std::string &name = f.first;
    if (ascii_iequals(name, "host")) {
      ++hosts;
      host = f.second;
    } else if (ascii_iequals(name, "content-length")) {
      ++lengths;
      length = f.second;
    } else if (ascii_iequals(name, "transfer-encoding")) {
      ++codings;
      coding = f.second;
    } else if (ascii_iequals(name, "connection")) {
      auto tokens = token_list(f.second);
      if (!tokens) return Refusal::bad_field_value;
      for (auto &t : *tokens) {
        close = close || t == "close";
        keep_alive_token = keep_alive_token || t == "keep-alive";
      }
    } else if (ascii_iequals(name, "expect")) {
      if (!ascii_iequals(f.second, "100-continue")) return Refusal::unsupported_expectation;
      head.expect_continue = true;
    }
  }
  if (hosts > 1) return Refusal::duplicate_host;
  if (hosts == 0 && head.minor_version == 1) return Refusal::missing_host;
  if (hosts == 1 && !host.empty() && !valid_authority(host)) return Refusal::bad_host;
  if (head.scheme.empty()) head.authority = host;
  if (lengths && codings) return Refusal::content_length_with_transfer_encoding;
  if (lengths > 1) return Refusal::duplicate_content_length;
  if (lengths == 1) {
    if (length.empty() || length.size() > 18 || length.find_first_not_of("0123456789") != std::string::npos)
      return Refusal::bad_content_length;
    head.content_length = std::stoull(length);
    head.framing = Framing::length;
  }
  if (codings > 1 || (codings == 1 && head.minor_version == 0)) return Refusal::bad_transfer_encoding;
  if (codings == 1) {
    auto list = token_list(coding);
    if (!list || list->empty()) return Refusal::bad_transfer_encoding;
    if (list->size() != 1 || (*list)[0] != "chunked") return Refusal::unsupported_transfer_encoding;
    head.framing = Framing::chunked;
  }
  head.keep_alive = head.minor_version == 1 ? !close : (keep_alive_token && !close);
  return Refusal::none;
}

// Parses the request head at the start of `data`. Up to a few empty lines before the request
// line are skipped (RFC 9112 2.2). Never reads past the head's final CRLF.
inline HeadParse parse_request_head(const char *data, size_t size, const Limits &limits, Head &head) {
  HeadParse result;
  auto refuse = [&](Refusal r) {
    result.state = HeadParse::State::refused;
    result.refusal = r;
    return result;
  };
  size_t pos = 0;
  while (pos + 1 < size && data[pos] == '\r' && data[pos + 1] == '\n' && pos < 8) pos += 2;
  size_t head_start = pos;
  head = Head{};
  size_t fields = 0;
  bool request_line = true;
  while (true) {
    bool bare_lf = false;
    size_t lf = find_line_end(data, size, pos, bare_lf);
    if (lf == std::string::npos) {
      if (size - head_start > limits.max_head_bytes) return refuse(Refusal::head_too_large);
      return result;  // incomplete
    }
    if (lf + 1 - head_start > limits.max_head_bytes) return refuse(Refusal::head_too_large);
    if (bare_lf) return refuse(Refusal::bare_line_feed);
    const char *begin = data + pos;
    const char *end = data + lf - 1;  // without the CR
    pos = lf + 1;
    if (request_line) {
      for (const char *p = begin; p < end; ++p)
        if (*p == '\r' || *p == '\0') return refuse(Refusal::bad_request_line);
      auto r = parse_request_line(std::string(begin, end), limits, head);
      if (r != Refusal::none) return refuse(r);
      request_line = false;
      continue;
    }
    if (begin == end) break;  // the empty line: end of the head
    if (++fields > limits.max_fields) return refuse(Refusal::too_many_fields);
    std::pair<std::string, std::string> field;
    auto r = parse_field_line(begin, end, field);
    if (r != Refusal::none) return refuse(r);
    head.fields.push_back(std::move(field));
  }
  auto r = interpret_fields(head);
  if (r != Refusal::none) return refuse(r);
  result.state = HeadParse::State::complete;
  result.consumed = pos;
  return result;
}

// The chunked transfer coding (RFC 9112 7.1), decoded incrementally: hex sizes of at most 16
// digits, extensions skipped within a bound, CRLF after every chunk's data, trailer fields
// parsed like header fields. It stops at the end of the coding, never reading past it.
class ChunkedDecoder {
public:
  explicit ChunkedDecoder(const Limits &limits) : limits_(limits) {}

  // Appends the body bytes in data[0..size) to `body`; returns how many bytes it consumed.
  size_t decode(const char *data, size_t size, std::string &body) {
    size_t i = 0;
    while (i < size && step_ != Step::done && step_ != Step::failed) {
      unsigned char c = static_cast<unsigned char>(data[i]);
      switch (step_) {
      case Step::size:
        if (std::isxdigit(c)) {
          if (++digits_ > 16) return fail(Refusal::chunk_size_too_long, i);
          chunk_left_ = chunk_left_ * 16 + hex_value(c);
        } else if (digits_ == 0) {
          return fail(Refusal::bad_chunk_size, i);
        } else if (c == ';') {
          step_ = Step::extension;
        } else if (c == ' ' || c == '\t') {
          step_ = Step::space_before_extension;
        } else if (c == '\r') {
          step_ = Step::size_lf;
        } else {
          return fail(Refusal::bad_chunk_size, i);
        }
        ++i;
        break;
      case Step::space_before_extension:  // BWS is allowed only before `;`
        if (c == ';') step_ = Step::extension;
        else if (c != ' ' && c != '\t') return fail(Refusal::bad_chunk_size, i);
        ++i;
        break;
      case Step::extension:
        if (c == '\r') {
          step_ = Step::size_lf;
        } else if (!is_field_value_byte(c) || ++extension_bytes_ > limits_.max_chunk_extension_bytes) {
          return fail(Refusal::bad_chunk_extension, i);
        }
        ++i;
        break;
      case Step::size_lf:
        if (c != '\n') return fail(Refusal::bad_chunk_size, i);
        ++i;
        step_ = chunk_left_ == 0 ? Step::trailer_line : Step::data;
        break;
      case Step::data: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(chunk_left_, size - i));
        body.append(data + i, n);
        chunk_left_ -= n;
        i += n;
        if (chunk_left_ == 0) step_ = Step::data_cr;
        break;
      }
      case Step::data_cr:
        if (c != '\r') return fail(Refusal::missing_chunk_crlf, i);
        ++i;
        step_ = Step::data_lf;
        break;
      case Step::data_lf:
        if (c != '\n') return fail(Refusal::missing_chunk_crlf, i);
        ++i;
        step_ = Step::size;
        digits_ = 0;
        extension_bytes_ = 0;
        break;
      case Step::trailer_line: {
        const void *lf = std::memchr(data + i, '\n', size - i);
        size_t take = lf ? static_cast<size_t>(static_cast<const char *>(lf) - (data + i)) + 1 : size - i;
        trailer_bytes_ += take;
        if (trailer_bytes_ > limits_.max_head_bytes) return fail(Refusal::trailers_too_large, i);
        line_.append(data + i, take);
        i += take;
        if (lf) {
          auto r = finish_trailer_line();
          if (r != Refusal::none) return fail(r, i);
        }
        break;
      }
      case Step::done:
      case Step::failed: break;
      }
    }
    return i;
  }

  bool done() const { return step_ == Step::done; }
  Refusal refusal() const { return refusal_; }
  const FieldList &trailers() const { return trailers_; }

private:
  enum class Step { size, space_before_extension, extension, size_lf, data, data_cr, data_lf, trailer_line, done, failed };

  static unsigned hex_value(unsigned char c) {
    return std::isdigit(c) ? c - '0' : static_cast<unsigned>(std::tolower(c) - 'a' + 10);
  }

  size_t fail(Refusal r, size_t at) {
    refusal_ = r;
    step_ = Step::failed;
    return at;
  }

  Refusal finish_trailer_line() {
    if (line_.size() < 2 || line_[line_.size() - 2] != '\r') return Refusal::bare_line_feed;
    line_.resize(line_.size() - 2);
    if (line_.empty()) {
      step_ = Step::done;
      return Refusal::none;
    }
    if (trailers_.size() + 1 > limits_.max_fields) return Refusal::trailers_too_large;
    std::pair<std::string, std::string> field;
    auto r = parse_field_line(line_.data(), line_.data() + line_.size(), field);
    if (r != Refusal::none) return r;
    trailers_.push_back(std::move(field));
    line_.clear();
    return Refusal::none;
  }

  Limits limits_;
  Step step_ = Step::size;
  Refusal refusal_ = Refusal::none;
  unsigned digits_ = 0;
  size_t extension_bytes_ = 0;
  uint64_t chunk_left_ = 0;
  std::string line_;
  size_t trailer_bytes_ = 0;
  FieldList trailers_;
};

}  // namespace http1
}  // namespace detail
}  // namespace wrpc_http

namespace wrpc_http {
class EdgeServer;
namespace detail {

// Every parked connection holds a descriptor: raise the soft limit to the hard one, once.
inline void raise_open_file_limit() {
  static std::once_flag once;
  std::call_once(once, [] {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
      limit.rlim_cur = limit.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &limit);
    }
  });
}

// Milliseconds left until `deadline`, rounded up: a wait of 0.4 ms polls for 1 ms, not 0.
inline int ms_left_until(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, INT_MAX));
}

#ifdef WRPC_HTTP_OPENSSL_SUPPORT
// The HTTPS listener's certificate and key.
class TlsServerContext {
public:
  // `offer_h2`: ALPN picks h2 when the client offers it (HTTP/2 front), else http/1.1;
  // `only_h2`: never http/1.1.
  TlsServerContext(const std::string &cert_file, const std::string &key_file, bool offer_h2, bool only_h2)
      : ctx_(SSL_CTX_new(TLS_server_method())), offer_h2_(offer_h2), only_h2_(offer_h2 && only_h2) {
    if (!ctx_) throw std::runtime_error("cannot create a TLS context");
    SSL_CTX_set_alpn_select_cb(ctx_, select_protocol, this);
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_use_certificate_chain_file(ctx_, cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx_, key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx_) != 1) {
      SSL_CTX_free(ctx_);
      throw std::runtime_error("cannot load the TLS certificate or key (" + cert_file + ", " + key_file + ")");
    }
  }
  ~TlsServerContext() { SSL_CTX_free(ctx_); }
  TlsServerContext(const TlsServerContext &) = delete;
  TlsServerContext &operator=(const TlsServerContext &) = delete;

  SSL *session(int fd) const {
    SSL *ssl = SSL_new(ctx_);
    if (ssl) SSL_set_fd(ssl, fd);
    return ssl;
  }

private:
  // The client's list is length-prefixed names; the server's preference wins.
  static int select_protocol(SSL *, const unsigned char **out, unsigned char *out_len, const unsigned char *in,
                             unsigned int in_len, void *arg) {
    auto *self = static_cast<TlsServerContext *>(arg);
    for (const char *wanted : {"h2", "http/1.1"}) {
      if (!self->offer_h2_ && std::strcmp(wanted, "h2") == 0) continue;
      if (self->only_h2_ && std::strcmp(wanted, "http/1.1") == 0) continue;
      size_t wanted_len = std::strlen(wanted);
      for (unsigned int i = 0; i < in_len; i += 1u + in[i]) {
        if (i + 1u + in[i] > in_len) break;
        if (in[i] == wanted_len && std::memcmp(in + i + 1, wanted, wanted_len) == 0) {
          *out = in + i + 1;
          *out_len = in[i];
          return SSL_TLSEXT_ERR_OK;
        }
      }
    }
    return SSL_TLSEXT_ERR_NOACK;  // no ALPN answer: the client speaks HTTP/1.1
  }

  SSL_CTX *ctx_;
  bool offer_h2_, only_h2_;
};
#else
class TlsServerContext {
public:
  TlsServerContext(const std::string &, const std::string &, bool, bool) {
    throw std::runtime_error("HTTPS needs WRPC_HTTP_OPENSSL_SUPPORT");
  }
};
#endif

// One accepted connection: its non-blocking socket (and TLS session) and the bytes read but
// not yet parsed. Only one thread touches it at a time: the worker serving it, or the edge
// loop while it is parked.
class EdgeConnection {
public:
  enum class Fill { data, nothing, closed };
  struct Addresses {
    std::string remote_ip, local_ip;
    int remote_port = 0, local_port = 0;
  };

  // `write_timeout`: how long a write may make no progress before the connection counts as broken.
  EdgeConnection(int fd, const TlsServerContext *tls, std::chrono::milliseconds write_timeout)
      : fd_(fd), write_timeout_(write_timeout) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (tls) {
      ssl_ = tls->session(fd);
      if (!ssl_) throw std::runtime_error("cannot create a TLS session");
    }
#else
    (void)tls;
#endif
  }
  // One end of a socket pair that carries an HTTP/2 stream's request (HTTP/2 front): the
  // addresses and TLS of the client's connection are the request's.
  EdgeConnection(int fd, Addresses client, bool client_over_tls, std::chrono::milliseconds write_timeout)
      : fd_(fd), write_timeout_(write_timeout), client_over_tls_(client_over_tls), carries_stream_(true),
        addresses_known_(true), addresses_(std::move(client)) {}
  ~EdgeConnection() { close(); }
  EdgeConnection(const EdgeConnection &) = delete;
  EdgeConnection &operator=(const EdgeConnection &) = delete;

  int fd() const { return fd_; }
  bool over_tls() const {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    return ssl_ != nullptr || client_over_tls_;
#else
    return client_over_tls_;
#endif
  }

  // ALPN picked h2 in the TLS handshake (known once the first bytes were read).
  bool negotiated_h2() const {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (!ssl_ || !handshaken_) return false;
    const unsigned char *protocol = nullptr;
    unsigned int size = 0;
    SSL_get0_alpn_selected(ssl_, &protocol, &size);
    return size == 2 && std::memcmp(protocol, "h2", 2) == 0;
#else
    return false;
#endif
  }

  // An HTTP/2 stream's request on a socket pair (always HTTP/1.1).
  bool carries_stream() const { return carries_stream_; }

  const char *pending() const { return in_.data() + used_; }
  size_t pending_size() const { return in_.size() - used_; }
  void consume(size_t n) { used_ += n; }

  // Reads what has arrived, waiting at most `wait` for it when nothing has. Held response
  // bytes go out first: the peer may be waiting for them. `poll_first` when bytes are not
  // expected yet (the next request right after an answer): one poll instead of a failed read.
  Fill fill(std::chrono::milliseconds wait, bool poll_first = false) {
    if (used_ == in_.size()) {
      in_.clear();
      used_ = 0;
    } else if (used_ > 64 * 1024 && used_ * 2 > in_.size()) {
      in_.erase(0, used_);
      used_ = 0;
    }
    if (!flush()) return Fill::closed;
    auto deadline = Clock::now() + wait;
    char buf[16 * 1024];
    short want = POLLIN;
    while (true) {
      if (!poll_first) {
        ssize_t n = read_some(buf, sizeof(buf), want);
        if (n > 0) {
          in_.append(buf, static_cast<size_t>(n));
          return Fill::data;
        }
        if (n == 0) return Fill::closed;
      }
      poll_first = false;
      int left = ms_left_until(deadline);
      if (left == 0) return Fill::nothing;
      pollfd p{fd_, want, 0};
      int r = ::poll(&p, 1, left);
      if (r < 0 && errno != EINTR) return Fill::closed;
      if (r == 0) return Fill::nothing;
    }
  }

  // Response bytes kept back to leave with the next ones (a response head with its body):
  // one write instead of two. write_all, flush and fill send them first.
  void hold(const char *data, size_t size) { held_.append(data, size); }
  bool flush() {
    if (held_.empty()) return true;
    bool sent = send_all(held_.data(), held_.size(), write_timeout_);
    held_.clear();
    return sent;
  }

  bool write_all(const char *data, size_t size) { return write_all(data, size, write_timeout_); }
  // What the socket takes now, without waiting: the bytes written (0 when none fit), or -1
  // when the connection broke. For a writer that waits in the edge loop instead.
  ssize_t send_now(const char *data, size_t size) {
    short want = 0;
    ssize_t n = write_some(data, size, want);
    return n > 0 ? n : n == 0 ? -1 : 0;
  }
  // With a timeout of its own (the edge loop, which must not wait on one client for long).
  bool write_all(const char *data, size_t size, std::chrono::milliseconds timeout) {
    if (held_.empty()) return send_all(data, size, timeout);
    if (held_.size() + size <= kMaxCoalescedBytes) {
      held_.append(data, size);
      return flush();
    }
    return flush() && send_all(data, size, timeout);
  }

  // The peer's and this end's addresses, asked of the kernel once per connection.
  const Addresses &addresses() {
    if (!addresses_known_) {
      address_of(::getpeername, addresses_.remote_ip, addresses_.remote_port);
      address_of(::getsockname, addresses_.local_ip, addresses_.local_port);
      addresses_known_ = true;
    }
    return addresses_;
  }

  // Ends the blocking I/O of whichever worker serves this connection (drain timeout).
  void shut_down() { ::shutdown(fd_, SHUT_RDWR); }

  void close() {
    if (fd_ < 0) return;
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (ssl_) {
      if (handshaken_) SSL_shutdown(ssl_);
      ERR_clear_error();  // a peer already gone leaves an error that is no one's business
      SSL_free(ssl_);
      ssl_ = nullptr;
    }
#endif
    ::close(fd_);
    fd_ = -1;
  }

  Clock::time_point head_started{};  // the first byte of the head being received; {} for none
  size_t served = 0;

private:
  bool send_all(const char *data, size_t size, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (size > 0) {
      short want = 0;
      ssize_t n = write_some(data, size, want);
      if (n > 0) {
        data += n;
        size -= static_cast<size_t>(n);
        continue;
      }
      if (n == 0) return false;
      pollfd p{fd_, want, 0};
      int r = ::poll(&p, 1, ms_left_until(deadline));
      if (r == 0 || (r < 0 && errno != EINTR)) return false;
    }
    return true;
  }

  // > 0: bytes; 0: end of stream or broken; -1: nothing now, poll for `want`.
  ssize_t read_some(char *buf, size_t size, short &want) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (ssl_) {
      // SSL_get_error reads the thread's error queue, which another connection served on
      // this thread may have left entries in (a failed SSL_shutdown): start from a clean one.
      ERR_clear_error();
      if (!handshaken_) {
        int r = SSL_accept(ssl_);
        if (r != 1) return tls_retry(r, want);
        handshaken_ = true;
      }
      int r = SSL_read(ssl_, buf, static_cast<int>(size));
      return r > 0 ? r : tls_retry(r, want);
    }
#endif
    while (true) {
      ssize_t n = ::recv(fd_, buf, size, 0);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return 0;
      want = POLLIN;
      return -1;
    }
  }

  ssize_t write_some(const char *data, size_t size, short &want) {
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
    if (ssl_) {
      ERR_clear_error();
      int r = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(size, INT_MAX)));
      return r > 0 ? r : tls_retry(r, want);
    }
#endif
    while (true) {
      ssize_t n = ::send(fd_, data, size, MSG_NOSIGNAL);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return 0;
      want = POLLOUT;
      return -1;
    }
  }

#ifdef WRPC_HTTP_OPENSSL_SUPPORT
  ssize_t tls_retry(int result, short &want) {
    int error = SSL_get_error(ssl_, result);
    ERR_clear_error();
    if (error == SSL_ERROR_WANT_READ) want = POLLIN;
    else if (error == SSL_ERROR_WANT_WRITE) want = POLLOUT;
    else return 0;
    return -1;
  }
  SSL *ssl_ = nullptr;
  bool handshaken_ = false;
#endif
  void address_of(int (*get)(int, sockaddr *, socklen_t *), std::string &ip, int &port) const {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    ip.clear();
    port = 0;
    if (get(fd_, reinterpret_cast<sockaddr *>(&addr), &len) != 0) return;
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (::getnameinfo(reinterpret_cast<sockaddr *>(&addr), len, host, sizeof(host), serv, sizeof(serv),
                      NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
      ip = host;
      port = std::atoi(serv);
    }
  }

  static constexpr size_t kMaxCoalescedBytes = 64 * 1024;
  int fd_;
  std::chrono::milliseconds write_timeout_;
  bool client_over_tls_ = false;
  bool carries_stream_ = false;
  std::string in_;
  size_t used_ = 0;
  std::string held_;
  bool addresses_known_ = false;
  Addresses addresses_;
};

// The body of the request being served, decoded from the connection by its framing and
// bounded by max_content_len; reading stops at its end, so the next request stays unread.
class EdgeBody {
public:
  EdgeBody(EdgeConnection &conn, const http1::Head &head, const http1::Limits &limits, size_t max_content_len,
           std::chrono::milliseconds read_timeout, size_t piece_bytes)
      : conn_(conn), framing_(head.framing), length_left_(head.content_length), decoder_(limits),
        max_content_len_(max_content_len), read_timeout_(read_timeout), piece_bytes_(piece_bytes) {}

  // The next piece of the body that has arrived (waiting for one); false at its end or
  // when the body is refused (refusal()).
  bool read_piece(std::string &piece) {
    piece.clear();
    if (refusal_ != http1::Refusal::none) return false;
    if (framing_ == http1::Framing::length) {
      if (length_left_ == 0) return false;
      if (conn_.pending_size() == 0 && !fill()) return false;
      size_t n = static_cast<size_t>(std::min<uint64_t>(length_left_, conn_.pending_size()));
      piece.assign(conn_.pending(), n);
      conn_.consume(n);
      length_left_ -= n;
      return true;
    }
    if (framing_ == http1::Framing::none) return false;
    while (!decoder_.done()) {
      if (conn_.pending_size() == 0) {
        if (!piece.empty()) break;
        if (!fill()) return false;
      }
      size_t before = piece.size();
      conn_.consume(decoder_.decode(conn_.pending(), conn_.pending_size(), piece));
      decoded_ += piece.size() - before;
      if (decoder_.refusal() != http1::Refusal::none) return refuse(decoder_.refusal());
      if (decoded_ > max_content_len_) return refuse(http1::Refusal::body_too_large);
      if (piece.size() >= piece_bytes_) break;
    }
    return !piece.empty();
  }

  // The whole body, when it is no chunked body, has arrived already and is one piece at most
  // (EdgeOptions::body_piece_bytes); otherwise false and nothing is read.
  bool take_if_arrived(std::string &whole) {
    whole.clear();
    if (refusal_ != http1::Refusal::none || framing_ == http1::Framing::chunked) return false;
    if (framing_ == http1::Framing::none || length_left_ == 0) return true;
    if (length_left_ > piece_bytes_ || conn_.pending_size() < length_left_) return false;
    return read_piece(whole);
  }

  // httplib::Stream::read for the body: > 0 bytes, 0 at its end, -1 when refused.
  ssize_t read(char *out, size_t size) {
    if (spare_used_ == spare_.size()) {
      spare_used_ = 0;
      if (!read_piece(spare_)) return refusal_ == http1::Refusal::none ? 0 : -1;
    }
    size_t n = std::min(size, spare_.size() - spare_used_);
    std::memcpy(out, spare_.data() + spare_used_, n);
    spare_used_ += n;
    return static_cast<ssize_t>(n);
  }

  // The whole body was read and accepted (a refused body never is, even when its last
  // bytes were decoded with the ones that broke the limit).
  bool complete() const {
    if (refusal_ != http1::Refusal::none) return false;
    switch (framing_) {
    case http1::Framing::length: return length_left_ == 0;
    case http1::Framing::chunked: return decoder_.done();
    case http1::Framing::none: return true;
    }
    return true;
  }

  // Reads and drops what nobody read (refusal() says whether the body was whole).
  void discard_rest() {
    std::string piece;
    while (read_piece(piece)) {
    }
  }

  http1::Refusal refusal() const { return refusal_; }
  const http1::FieldList &trailers() const { return decoder_.trailers(); }

private:
  bool fill() {
    if (conn_.fill(read_timeout_) == EdgeConnection::Fill::data) return true;
    return refuse(http1::Refusal::body_incomplete);
  }
  bool refuse(http1::Refusal r) {
    refusal_ = r;
    return false;
  }

  EdgeConnection &conn_;
  http1::Framing framing_;
  uint64_t length_left_;
  http1::ChunkedDecoder decoder_;
  size_t max_content_len_;
  std::chrono::milliseconds read_timeout_;
  size_t piece_bytes_;
  size_t decoded_ = 0;
  http1::Refusal refusal_ = http1::Refusal::none;
  std::string spare_;
  size_t spare_used_ = 0;
};

struct RequestTrace;  // telemetry's record of one request (telemetry section)
class DetachedResponse;
class Http2Connection;  // HTTP/2 front (with WRPC_HTTP_NGHTTP2_SUPPORT)

// The request a worker is serving: the raw head and the body the Forwarder reads, and what
// the steps around it (telemetry, the error handler) keep of it.
struct EdgeRequest {
  const http1::Head &head;
  EdgeBody &body;
  EdgeConnection &conn;
  bool over_tls;
  EdgeServer &server;
  bool closes_connection;                     // the response says `Connection: close`
  const httplib::Request *routed = nullptr;  // cpp-httplib's object for it, once process_request made it
  std::shared_ptr<RequestTrace> trace{};      // from Telemetry::begin_request, when telemetry is on
  bool answered_by_component = false;         // the status came from a component
  bool close_after = false;                   // the provider answered with an error: close
  // A route handed the response to a writer without a thread (EdgeServer::detach): the worker
  // no longer touches the connection, and what cpp-httplib writes for the route is dropped.
  std::shared_ptr<DetachedResponse> detached{};
};

// The request this worker thread is serving (serve_request sets and clears it). Read directly
// only where no request is at hand: a log line's trace correlation (Telemetry::log).
inline EdgeRequest *&serving_on_this_thread() {
  thread_local EdgeRequest *current = nullptr;
  return current;
}

// A detached response's steps (post-routing, response-done, log lines) run on whichever thread
// moves it: for their span, that thread serves its request, then what it served before again.
class ServingHere {
public:
  explicit ServingHere(EdgeRequest &request) : before_(serving_on_this_thread()) {
    serving_on_this_thread() = &request;
  }
  ~ServingHere() { serving_on_this_thread() = before_; }
  ServingHere(const ServingHere &) = delete;
  ServingHere &operator=(const ServingHere &) = delete;

private:
  EdgeRequest *before_;
};

// After a response written whole: the connection carries the next request unless either side
// ends it or the request's body was not all read.
inline bool keeps_connection(const EdgeRequest &request, bool whole, bool keep_alive_on) {
  return whole && request.head.keep_alive && keep_alive_on && !request.close_after && request.body.complete();
}

// cpp-httplib hands hooks and routes `(req, res)` and nothing of ours, in every version: this
// is the one place where the edge's request crosses that boundary. It is the request this
// worker serves, and only for its own httplib::Request (nullptr for any other, such as a
// route called by hand). From here on it travels as a parameter.
inline EdgeRequest *edge_request(const httplib::Request &req) {
  auto *current = serving_on_this_thread();
  return current && current->routed == &req ? current : nullptr;
}

// The method as the client sent it (cpp-httplib's routes see methods it does not know as POST).
inline std::string sent_method(const httplib::Request &req) {
  auto *edge = edge_request(req);
  return edge ? edge->head.method : req.method;
}


// RFC 9110 section 15's reason phrases; none for a status it does not name (the phrase is
// optional, RFC 9112 4).
inline const char *reason_phrase(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 203: return "Non-Authoritative Information";
  case 204: return "No Content";
  case 205: return "Reset Content";
  case 206: return "Partial Content";
  case 300: return "Multiple Choices";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 305: return "Use Proxy";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 407: return "Proxy Authentication Required";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 421: return "Misdirected Request";
  case 422: return "Unprocessable Content";
  case 426: return "Upgrade Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "";
  }
}

// The edge's own answer to a request it refuses; the connection closes after it.
inline std::string refusal_response(http1::Refusal refusal) {
  auto info = http1::describe(refusal);
  std::string body = std::string(info.text) + "\n";
  return "HTTP/1.1 " + std::to_string(info.status) + " " + reason_phrase(info.status) +
         "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

// What cpp-httplib reads and writes: a canonical head it parses without surprises, then
// the request's decoded body and an end; writes go to the connection. StreamAdapter gives it
// the httplib::Stream interface of the cpp-httplib in use.
class EdgeStream : public StreamAdapter<EdgeStream> {
public:
  EdgeStream(EdgeConnection &conn, std::string head, EdgeRequest &request)
      : conn_(conn), head_(std::move(head)), request_(request), body_(request.body), started_(Clock::now()) {}

  // Asked before a content provider runs (cpp-httplib >= 0.12) or by the provider itself, which
  // may then wait (DataSink::is_writable): the held head goes out. A full send buffer is no
  // reason to stop; write waits.
  bool may_write() const {
    if (request_.detached) return true;
    if (!conn_.flush()) return false;
    pollfd p{conn_.fd(), POLLOUT, 0};
    return ::poll(&p, 1, 0) >= 0 && !(p.revents & (POLLERR | POLLHUP | POLLNVAL));
  }
  // Only the head: cpp-httplib >= 0.20 reads "stray" bytes of a request that shows no length
  // when they are at hand, and the body is the edge's to hand out (routes that take it are
  // given its Content-Length, the Forwarder streams it).
  bool bytes_at_hand() const { return head_used_ < head_.size(); }
  time_t elapsed_ms() const {
    return static_cast<time_t>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_).count());
  }

  ssize_t read(char *ptr, size_t size) override {
    if (request_.detached) return 0;
    if (head_used_ < head_.size()) {
      size_t n = std::min(size, head_.size() - head_used_);
      std::memcpy(ptr, head_.data() + head_used_, n);
      head_used_ += n;
      return static_cast<ssize_t>(n);
    }
    return body_.read(ptr, size);
  }
  ssize_t write(const char *ptr, size_t size) override {
    if (request_.detached) return static_cast<ssize_t>(size);  // not the response: it is written elsewhere
    // A route that answers without reading the body (GET on the provider's own routes) still
    // has it read first, within max_content_len: a body over it is refused, not answered.
    // After the provider's own error answer the connection closes: nothing to read then.
    if (!replaced_ && !request_.close_after && body_.refusal() == http1::Refusal::none && !body_.complete()) {
      body_.discard_rest();
      if (body_.refusal() != http1::Refusal::none) {
        auto refusal = refusal_response(body_.refusal());
        conn_.write_all(refusal.data(), refusal.size());
        replaced_ = true;
      }
    }
    if (replaced_) return -1;  // cpp-httplib's response is dropped; the connection closes
    if (!wrote_head_) {
      // cpp-httplib writes the status line and fields in one call, then the body.
      wrote_head_ = true;
      if (size <= kMaxHeldHeadBytes) {
        conn_.hold(ptr, size);
        return static_cast<ssize_t>(size);
      }
    }
    return conn_.write_all(ptr, size) ? static_cast<ssize_t>(size) : -1;
  }
  void get_remote_ip_and_port(std::string &ip, int &port) const override {
    ip = conn_.addresses().remote_ip;
    port = conn_.addresses().remote_port;
  }
  void get_local_ip_and_port(std::string &ip, int &port) const override {
    ip = conn_.addresses().local_ip;
    port = conn_.addresses().local_port;
  }
  // The edge owns the socket: cpp-httplib must not select() on it (its descriptor may be
  // above FD_SETSIZE with thousands of parked connections).
  socket_t socket() const override { return INVALID_SOCKET; }

private:
  EdgeConnection &conn_;
  std::string head_;
  size_t head_used_ = 0;
  EdgeRequest &request_;
  EdgeBody &body_;
  bool replaced_ = false;  // the edge's refusal went out instead of the route's answer
  bool wrote_head_ = false;
  Clock::time_point started_;
  static constexpr size_t kMaxHeldHeadBytes = 16 * 1024;
};

// The methods cpp-httplib routes; any other token reaches the routes as POST (the Forwarder
// forwards the real one).
inline bool httplib_routes_method(const std::string &method) {
  static const char *routed[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
  for (auto m : routed)
    if (method == m) return true;
  return false;
}

// What writes a detached response (the Forwarder's wRPC call, HTTP bridge section).
class ResponseProducer {
public:
  virtual ~ResponseProducer() = default;
  // Writes through `out` what is ready (start, write, then end or cut). It never waits: what
  // is not there yet (the component's head, the next body piece) it leaves for a later call.
  // Called one at a time, from whichever thread kicks the response (DetachedResponse::kick),
  // so it must not block, log or call out beyond `out`.
  virtual void advance(DetachedResponse &out, Clock::time_point now) = 0;
  // Once the response is over (`whole`: every byte of it left): its log lines. On the edge loop
  // when logs() says it writes any; otherwise right where the response ended.
  virtual void finished(bool whole) = 0;
  virtual bool logs() const = 0;
};

// A response that no thread waits for: its route detached it from the worker
// (EdgeServer::detach) and a ResponseProducer writes it as its parts arrive. It owns the
// connection until the response is over; then the connection goes on (EdgeServer::finish: a
// worker takes its next request, or it closes).
//
// It moves on by kicks: from the producer's news (the NATS reader), from the edge loop (room
// in the socket again, and every tick for the deadlines), and once from the worker that
// detached it. One kick runs at a time; a kick while one runs makes that one go round again.
class DetachedResponse : public std::enable_shared_from_this<DetachedResponse> {
public:
  DetachedResponse(EdgeServer &server, std::shared_ptr<EdgeConnection> conn, EdgeRequest &request,
                   std::unique_ptr<ResponseProducer> producer);

  // For the producer, in advance():
  EdgeRequest &request() { return request_; }
  // More may be written now: nothing is half sent and less than a socket's worth waits.
  bool has_room() const { return out_used_ == 0 && out_.size() < kRoomBytes; }
  // The status and fields, framing fields included: the post-routing step sees them, then
  // they go out, with `res.body` when there is one (never for HEAD).
  void start(httplib::Response &res);
  void write(const char *data, size_t size) { out_.append(data, size); }
  void end() { ending_ = true; }  // complete once what was written has left
  void cut() { cut_ = true; }     // broken: the connection closes, the client sees it cut off

  void kick();
  // Waits for a running kick; no kick runs after it (the edge is stopping).
  void abandon();

private:
  friend class wrpc_http::EdgeServer;
  void step(Clock::time_point now);
  bool send_waiting(Clock::time_point now);

  static constexpr size_t kRoomBytes = 64 * 1024;
  EdgeServer &server_;
  std::shared_ptr<EdgeConnection> conn_;
  const int fd_;
  http1::Head head_;
  EdgeBody body_;
  httplib::Request routed_;
  EdgeRequest request_;
  std::unique_ptr<ResponseProducer> producer_;
  std::string out_;  // written, not yet sent
  size_t out_used_ = 0;
  Clock::time_point blocked_since_{};  // bytes wait for room in the socket since then
  bool ending_ = false, cut_ = false;

  std::mutex mu_;  // whose turn it is to kick
  std::condition_variable turn_over_;
  bool running_ = false, again_ = false, over_ = false, abandoned_ = false;
};

// The HTTP/2 front (its implementation follows the edge's):
//
// HTTP/2 (WRPC_HTTP_NGHTTP2_SUPPORT, with nghttp2): h2c when a cleartext connection opens with
// the client preface (prior knowledge, as hyper-util sniffs it), h2 when TLS's ALPN picked it.
// nghttp2 does the framing, HPACK and flow control; this section turns each stream into one
// HTTP/1.1 request of the edge's own, written into a socket pair whose other end the edge
// serves like any accepted connection: the same parser and limits, routes, policies, telemetry
// and Forwarder, and a forwarded call holds no thread while it waits (a detached response).
// The response comes back through the pair and leaves as the stream's HEADERS, DATA and
// trailers. A stream's response is read from its pair only while the client's window takes it,
// and a request body's bytes are acknowledged (WINDOW_UPDATE) only once they went into the
// pair: a slow client holds back its own stream, a slow route its own upload, nobody else.
//
// An HTTP/2 connection lives on its listener's edge loop: nghttp2 is driven there, by the
// readiness of the client's socket and of its streams' pairs, with non-blocking I/O only
// (the session is touched by no other thread, so it needs no lock).
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT

constexpr char kHttp2Preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kHttp2PrefaceBytes = sizeof(kHttp2Preface) - 1;

// Where a connection's first bytes stand against the HTTP/2 preface.
enum class PrefaceMatch { no, partial, full };
inline PrefaceMatch match_http2_preface(const char *data, size_t size) {
  size_t n = std::min(size, kHttp2PrefaceBytes);
  if (std::memcmp(data, kHttp2Preface, n) != 0) return PrefaceMatch::no;
  return n == kHttp2PrefaceBytes ? PrefaceMatch::full : PrefaceMatch::partial;
}

// The head of a response the edge wrote for a stream's request: status, fields, and how its
// body is framed. The edge wrote it, but it is parsed as strictly as a peer's.
struct StreamResponseHead {
  enum class Body { none, length, chunked, until_close };
  int status = 0;
  http1::FieldList fields;
  Body body = Body::none;
  uint64_t length = 0;
};

// Parses the head at the front of `bytes`: the bytes it took, 0 while it is incomplete;
// std::runtime_error when it is malformed or over `max_bytes`.
inline size_t parse_stream_response_head(const std::string &bytes, size_t max_bytes, bool request_was_head,
                                         StreamResponseHead &head) {
  auto end = bytes.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (bytes.size() > max_bytes) throw std::runtime_error("response head too large");
    return 0;
  }
  if (bytes.compare(0, 9, "HTTP/1.1 ") != 0 || end < 12 || !std::isdigit(static_cast<unsigned char>(bytes[9])) ||
      !std::isdigit(static_cast<unsigned char>(bytes[10])) || !std::isdigit(static_cast<unsigned char>(bytes[11])) ||
      (bytes[12] != ' ' && bytes[12] != '\r'))
    throw std::runtime_error("malformed status line");
  head = StreamResponseHead{};
  head.status = std::atoi(bytes.substr(9, 3).c_str());
  bool chunked = false;
  std::optional<uint64_t> length;
  size_t line = bytes.find("\r\n") + 2;
  while (line < end + 2) {
    size_t eol = bytes.find("\r\n", line);
    size_t colon = bytes.find(':', line);
    if (colon == std::string::npos || colon >= eol || colon == line) throw std::runtime_error("malformed field");
    std::string name = bytes.substr(line, colon - line);
    std::string value = http1::trim_ows(bytes.substr(colon + 1, eol - colon - 1));
    if (!http1::is_token(name)) throw std::runtime_error("malformed field name");
    for (unsigned char c : value)
      if (!http1::is_field_value_byte(c)) throw std::runtime_error("malformed field value");
    if (http1::ascii_iequals(name, "transfer-encoding")) chunked = lower(value).find("chunked") != std::string::npos;
    if (http1::ascii_iequals(name, "content-length")) {
      if (value.empty() || value.size() > 18 || value.find_first_not_of("0123456789") != std::string::npos)
        throw std::runtime_error("malformed Content-Length");
      length = std::stoull(value);
    }
    head.fields.emplace_back(std::move(name), std::move(value));
    line = eol + 2;
  }
  if (request_was_head || head.status < 200 || head.status == 204 || head.status == 304) {
    head.body = StreamResponseHead::Body::none;
  } else if (chunked) {
    head.body = StreamResponseHead::Body::chunked;
  } else if (length) {
    head.body = *length ? StreamResponseHead::Body::length : StreamResponseHead::Body::none;
    head.length = *length;
  } else {
    head.body = StreamResponseHead::Body::until_close;
  }
  return end + 4;
}

// Fields that describe an HTTP/1.1 connection, never sent on an HTTP/2 one (RFC 9113 8.2.2).
inline bool is_connection_specific(const std::string &lower_name) {
  static const char *names[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"};
  for (auto n : names)
    if (lower_name == n) return true;
  return false;
}

// nghttp2's view of `fields`, appended to `out`: names and values stay owned by `fields`
// (nghttp2 copies them when a frame is submitted).
inline void append_name_values(std::vector<nghttp2_nv> &out, const http1::FieldList &fields) {
  for (auto &f : fields)
    out.push_back({reinterpret_cast<uint8_t *>(const_cast<char *>(f.first.data())),
                   reinterpret_cast<uint8_t *>(const_cast<char *>(f.second.data())), f.first.size(), f.second.size(),
                   NGHTTP2_NV_FLAG_NONE});
}

// One client connection that speaks HTTP/2. Only the edge loop touches it.
class Http2Connection {
public:
  Http2Connection(EdgeServer &edge, std::shared_ptr<EdgeConnection> conn);
  ~Http2Connection();
  Http2Connection(const Http2Connection &) = delete;
  Http2Connection &operator=(const Http2Connection &) = delete;

  // Any readiness of its descriptors: reads, hands on and writes what it can.
  void pump(bool client_ready = true);
  // The edge loop's tick: the settings, idle, write and zero-window deadlines.
  void tick(Clock::time_point now);
  // The listener is closing: GOAWAY; the streams open go on to their end.
  void go_away();
  void close();
  bool over() const { return over_; }
  int fd() const { return conn_->fd(); }
  const std::shared_ptr<EdgeConnection> &connection() const { return conn_; }

private:
  struct Segment {  // request bytes on their way into a stream's pair
    std::string bytes;
    size_t payload;  // DATA bytes among them, acknowledged to the client once written
  };
  struct Stream {
    int32_t id = 0;
    std::string method, path, authority, scheme;
    http1::FieldList fields, trailers;
    size_t header_bytes = 0;
    bool receiving_trailers = false, too_large = false;
    int fd = -1;               // this end of the pair; -1 once closed
    bool chunked_request = false;  // the request has a body (no END_STREAM on its HEADERS)
    bool request_ended = false, request_dead = false;
    std::deque<Segment> to_edge;
    size_t to_edge_used = 0;   // of the front segment
    std::string from_edge;     // response bytes not parsed yet
    bool head_sent = false;
    StreamResponseHead head;
    uint64_t length_left = 0;
    std::unique_ptr<http1::ChunkedDecoder> chunked;
    std::string body;          // decoded response body the client's window has not taken yet
    size_t body_used = 0;
    bool body_done = false, deferred = false;
    http1::FieldList response_trailers;
    uint32_t watched = 0;      // epoll events registered for fd
  };

  static constexpr size_t kBodyBufferBytes = 256 * 1024;  // per stream, read ahead of the client's window
  static constexpr size_t kOutBufferBytes = 256 * 1024;   // frames waiting for the client's socket
  static constexpr size_t kRecentlyClosedStreams = 256;

  // nghttp2's callbacks; user_data is the Http2Connection.
  static int on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *self);
  static int on_begin_headers(nghttp2_session *, const nghttp2_frame *frame, void *self);
  static int on_header(nghttp2_session *, const nghttp2_frame *frame, const uint8_t *name, size_t name_len,
                       const uint8_t *value, size_t value_len, uint8_t, void *self);
  static int on_frame_recv(nghttp2_session *, const nghttp2_frame *frame, void *self);
  static int on_data_chunk(nghttp2_session *, uint8_t, int32_t stream_id, const uint8_t *data, size_t len, void *self);
  static int on_stream_close(nghttp2_session *, int32_t stream_id, uint32_t, void *self);
  static int on_frame_send(nghttp2_session *, const nghttp2_frame *frame, void *self);
  static ssize_t read_body(nghttp2_session *, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *flags,
                           nghttp2_data_source *, void *self);

  Stream *find(int32_t id) {
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second.get();
  }
  void spend_control_budget();
  void start_request(Stream &s, bool request_ends);
  void end_request(Stream &s);
  void answer_locally(Stream &s, int status, const std::string &text);
  void submit_head(Stream &s, int status, const http1::FieldList &fields, bool with_body);
  void move_stream(Stream &s);
  bool write_to_edge(Stream &s);
  bool read_from_edge(Stream &s);
  void take_response_bytes(Stream &s);
  void edge_closed(Stream &s);
  void resume_body(Stream &s);
  void close_pair(Stream &s);
  void watch_pair(Stream &s);
  bool read_client();
  bool write_client();
  void terminate(uint32_t error_code);

  EdgeServer &edge_;
  std::shared_ptr<EdgeConnection> conn_;
  nghttp2_session *session_ = nullptr;
  std::map<int32_t, std::unique_ptr<Stream>> streams_;
  std::string out_;
  size_t out_used_ = 0;
  uint32_t client_watched_ = 0;
  Clock::time_point started_, last_frame_, out_blocked_since_{}, stalled_since_{};
  bool settings_acked_ = false, over_ = false, going_away_ = false, terminated_ = false;
  double budget_;
  Clock::time_point budget_at_;
  int32_t highest_stream_ = 0;              // the client's highest stream id so far
  std::deque<int32_t> recently_closed_;      // the last streams closed, newest last
};

#endif  // WRPC_HTTP_NGHTTP2_SUPPORT

}  // namespace detail

// HTTP/2 limits of one listener (used when built with WRPC_HTTP_NGHTTP2_SUPPORT).
struct Http2Options {
  bool enabled = true;
  bool only = false;  // config `http2: only`: no HTTP/1.1 on the listener (h2c by prior knowledge, h2 by ALPN)
  uint32_t max_concurrent_streams = WRPC_HTTP_H2_MAX_CONCURRENT_STREAMS;
  size_t max_header_list_bytes = WRPC_HTTP_H2_MAX_HEADER_LIST_BYTES;  // larger: answered 431
  uint32_t hpack_table_bytes = WRPC_HTTP_H2_HPACK_TABLE_BYTES;
  uint32_t stream_window_bytes = WRPC_HTTP_H2_STREAM_WINDOW_BYTES;
  uint32_t connection_window_bytes = WRPC_HTTP_H2_CONNECTION_WINDOW_BYTES;
  std::chrono::milliseconds idle_timeout{WRPC_HTTP_H2_IDLE_TIMEOUT_MS};
  std::chrono::milliseconds settings_timeout{WRPC_HTTP_H2_SETTINGS_TIMEOUT_MS};
  unsigned control_frame_burst = WRPC_HTTP_H2_CONTROL_FRAME_BURST;
  unsigned control_frames_per_second = WRPC_HTTP_H2_CONTROL_FRAMES_PER_SECOND;
  size_t max_continuations = WRPC_HTTP_H2_MAX_CONTINUATIONS;
};

// Limits and timeouts of one HTTP listener's edge.
struct EdgeOptions {
  detail::http1::Limits limits;
  size_t max_content_len = WRPC_HTTP_DEFAULT_MAX_CONTENT_LEN;
  std::chrono::milliseconds head_timeout{WRPC_HTTP_HEAD_TIMEOUT_MS};
  std::chrono::milliseconds keep_alive_timeout{WRPC_HTTP_KEEPALIVE_TIMEOUT_SECOND * 1000};
  std::chrono::milliseconds read_timeout{WRPC_HTTP_READ_TIMEOUT_SECOND * 1000};
  std::chrono::milliseconds write_timeout{WRPC_HTTP_WRITE_TIMEOUT_SECOND * 1000};
  size_t max_workers = WRPC_HTTP_MAX_WORKERS;
  std::chrono::milliseconds worker_idle_exit{WRPC_HTTP_WORKER_IDLE_MS};  // an idle worker exits after it
  // Workers started at once; past them one starts only after worker_stall without a worker
  // taking a connection (0: twice the cores, at least 4).
  size_t eager_workers = WRPC_HTTP_EAGER_WORKERS;
  std::chrono::milliseconds worker_stall{WRPC_HTTP_WORKER_STALL_MS};
  size_t keep_alive_max_count = WRPC_HTTP_KEEPALIVE_MAX_COUNT;
  // After an answer, how long a worker waits for the connection's next request.
  std::chrono::milliseconds keep_alive_linger{WRPC_HTTP_KEEPALIVE_LINGER_MS};
  // Decoded request body handed to a route in pieces of at most about this many bytes.
  size_t body_piece_bytes = WRPC_HTTP_BODY_FLUSH_BYTES;
  // When the listener closes: how long running requests get to finish (the caller's stop()).
  std::chrono::milliseconds drain_timeout{WRPC_HTTP_DRAIN_TIMEOUT_MS};
  int listen_backlog = WRPC_HTTP_LISTEN_BACKLOG;
  bool keep_alive = true;  // false: every response closes its connection (Connection: close)
  std::string tls_cert_file, tls_priv_key_file;  // both set: HTTPS
  Http2Options http2;
};

// An httplib::Server whose connections the edge owns: routes and handlers are registered as
// on any httplib::Server. It reserves the error and post-routing handlers for itself.
class EdgeServer : public httplib::Server {
public:
  EdgeServer(EdgeOptions options, const Logger &logger);
  ~EdgeServer() override;
  EdgeServer(const EdgeServer &) = delete;
  EdgeServer &operator=(const EdgeServer &) = delete;

  // A listening socket on "host:port" for serve(); throws when the address is taken.
  static int open_listener(const std::string &address, int backlog);
  // Accepts on the listening socket `listen_fd` and serves until stop(); runs in the
  // caller's thread (the edge loop). Once stopping it refuses new connections (shutdown of
  // `listen_fd`); the caller closes `listen_fd` after serve() returned.
  void serve(int listen_fd);
  const EdgeOptions &options() const { return options_; }
  // Stops accepting, closes idle connections, gives requests in progress `drain` to finish
  // and cuts the rest; serve() returns. Joins every worker.
  void stop(std::chrono::milliseconds drain);

  // Steps around every request (policies, telemetry), in place of cpp-httplib's pre- and
  // post-routing handlers, which the edge keeps for itself: `before` may answer the request
  // (returns true), `after` sees every response before it is written.
  using BeforeRouting = std::function<bool(const httplib::Request &, httplib::Response &)>;
  using AfterRouting = std::function<void(const httplib::Request &, httplib::Response &)>;
  void around_requests(BeforeRouting before, AfterRouting after) {
    before_ = std::move(before);
    after_ = std::move(after);
  }
  // Called when the response to a request is over, after `after` and after the last byte (a
  // streamed body's too) left or failed to: `whole` says whether all of it was written. On the
  // worker's thread, or the edge loop's for a detached response (edge_request() finds the
  // request on either). Once per request cpp-httplib processed, answered or not; it must not
  // throw. Set it, like around_requests, before serve().
  using ResponseDone = std::function<void(detail::EdgeRequest &request, bool whole)>;
  void on_response_done(ResponseDone done) { done_ = std::move(done); }

  // From a route, on the worker serving `request`: `producer` writes the response from now on,
  // without this worker, which moves on to other connections once the route returns (what
  // the route leaves in its httplib::Response is dropped). The post-routing step and the
  // response-done step run when the producer starts and ends the response.
  std::shared_ptr<detail::DetachedResponse> detach(detail::EdgeRequest &request,
                                                   std::unique_ptr<detail::ResponseProducer> producer);

private:
  friend class detail::DetachedResponse;
  friend class detail::Http2Connection;
  enum class Served { keep_alive, close, detached };
  struct Parked {
    std::shared_ptr<detail::EdgeConnection> conn;
    detail::Clock::time_point deadline;
  };

  void accept_all(int listen_fd);
  void park(std::shared_ptr<detail::EdgeConnection> conn, bool fresh);
  void dispatch(int fd);
  void expire_parked();
  void serve_connection(const std::shared_ptr<detail::EdgeConnection> &conn, bool just_answered = false);
  Served serve_request(detail::EdgeConnection &conn, const detail::http1::Head &head);
  void after_routing(const httplib::Request &req, httplib::Response &res);
  void wait_writable(int fd);
  void finish(const std::shared_ptr<detail::DetachedResponse> &response);
  void finish_later(std::shared_ptr<detail::DetachedResponse> response);
  void finish_detached();
  void kick_detached();
  void continue_connection(const std::shared_ptr<detail::EdgeConnection> &conn, bool reusable);
  void refuse(detail::EdgeConnection &conn, detail::http1::Refusal refusal);
  void close_connection(const std::shared_ptr<detail::EdgeConnection> &conn);
  void leave_active(const std::shared_ptr<detail::EdgeConnection> &conn);
  bool process(httplib::Stream &stream, bool close_connection, const std::function<void(httplib::Request &)> &setup);
  void wake();
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
  // HTTP/2: a worker hands a connection that opened with the preface to the edge loop, which
  // runs its session (HTTP/2 front section); each stream's request comes back as a connection
  // of its own (serve_stream).
  void hand_to_http2(const std::shared_ptr<detail::EdgeConnection> &conn);
  void start_http2_connections();
  bool serve_http2_event(int fd);
  void tick_http2(bool stopping);
  void end_if_over(std::shared_ptr<detail::Http2Connection> h2);
  void close_http2_connections();
  void watch(int fd, uint32_t events, detail::Http2Connection *owner);
  void unwatch(int fd);
  void forget(int fd);  // a descriptor about to close: no longer watched
  bool serve_stream(std::shared_ptr<detail::EdgeConnection> conn);
#endif

  EdgeOptions options_;
  const Logger &logger_;
  BeforeRouting before_;
  AfterRouting after_;
  ResponseDone done_;
  std::unique_ptr<detail::TlsServerContext> tls_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  detail::ElasticTaskQueue workers_;

  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  std::unordered_map<int, Parked> parked_;
  std::unordered_map<detail::EdgeConnection *, std::shared_ptr<detail::EdgeConnection>> active_;
  // Responses being written without a worker, by descriptor (their connections stay in
  // active_), and those that are over, for the edge loop to hand their connections on.
  std::unordered_map<int, std::shared_ptr<detail::DetachedResponse>> detached_;
  std::vector<std::shared_ptr<detail::DetachedResponse>> finished_detached_;
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
  std::vector<std::shared_ptr<detail::EdgeConnection>> http2_arrivals_;  // under mu_, for the edge loop
  // The edge loop's own (no lock): HTTP/2 connections by socket, and every descriptor it
  // watches for them (sockets and streams' pairs) with its owner.
  std::unordered_map<int, std::shared_ptr<detail::Http2Connection>> http2_connections_;
  std::unordered_map<int, detail::Http2Connection *> http2_watched_;
#endif
  bool stopping_ = false;
  bool finished_ = false;
};

namespace detail {
inline size_t eager_workers(size_t configured) {
  return configured ? configured : std::max<size_t>(4, 2 * std::thread::hardware_concurrency());
}

inline bool serves_http2(const EdgeOptions &options) {
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
  return options.http2.enabled;
#else
  (void)options;
  return false;
#endif
}
}  // namespace detail

inline EdgeServer::EdgeServer(EdgeOptions options, const Logger &logger)
    : options_(std::move(options)), logger_(logger),
      workers_(options_.max_workers, options_.worker_idle_exit, detail::eager_workers(options_.eager_workers),
               options_.worker_stall) {
  detail::raise_open_file_limit();
  if (!options_.tls_cert_file.empty())
    tls_ = std::make_unique<detail::TlsServerContext>(options_.tls_cert_file, options_.tls_priv_key_file,
                                                      detail::serves_http2(options_), options_.http2.only);
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) throw std::runtime_error(std::string("edge loop: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  set_payload_max_length(options_.max_content_len);
  // Only for the Keep-Alive header cpp-httplib writes; the edge enforces both.
  set_keep_alive_max_count(options_.keep_alive_max_count);
  set_keep_alive_timeout(static_cast<time_t>(options_.keep_alive_timeout.count() / 1000));
  // The provider's own errors close the connection: the rest of the request may be unread.
  set_error_handler(HandlerWithResponse([](const httplib::Request &req, httplib::Response &res) {
    auto *edge = detail::edge_request(req);
    if (!edge) return HandlerResponse::Unhandled;
    if (edge->body.refusal() != detail::http1::Refusal::none) {
      auto info = detail::http1::describe(edge->body.refusal());
      res.status = info.status;
      res.set_content(std::string(info.text) + "\n", "text/plain; charset=utf-8");
    }
    if (!edge->answered_by_component) {
      edge->close_after = true;
      // cpp-httplib writes `Connection: close` (and no Keep-Alive) when the request asked
      // for it; the Request is the server's own non-const object.
      auto &own = const_cast<httplib::Request &>(req);
      own.headers.erase("Connection");
      own.headers.emplace("Connection", "close");
    }
    return HandlerResponse::Unhandled;
  }));
  set_pre_routing_handler([this](const httplib::Request &req, httplib::Response &res) {
    return before_ && before_(req, res) ? HandlerResponse::Handled : HandlerResponse::Unhandled;
  });
  set_post_routing_handler([this](const httplib::Request &req, httplib::Response &res) {
    auto *edge = detail::edge_request(req);
    if (edge && edge->detached) return;  // its own post-routing step runs when it starts
    after_routing(req, res);
  });
}

inline void EdgeServer::after_routing(const httplib::Request &req, httplib::Response &res) {
  if (after_) after_(req, res);
  // 1xx, 204 and 304 carry no body and so no framing (RFC 9110 8.6, 9112 6.1).
  if (res.status < 200 || res.status == 204 || res.status == 304) {
    res.headers.erase("Content-Length");
    res.headers.erase("Transfer-Encoding");
  }
}

inline EdgeServer::~EdgeServer() {
  stop(std::chrono::milliseconds(0));
  ::close(epoll_fd_);
  ::close(wake_fd_);
}

inline void EdgeServer::wake() {
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

inline void EdgeServer::serve(int listen_fd) {
  // cpp-httplib streams a response only while its server socket is set.
  svr_sock_ = listen_fd;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd, &ev);
  bool accepting = true;
  std::array<epoll_event, 256> events;
  auto next_scan = detail::Clock::now();
  while (true) {
    // A tick of 100 ms bounds how late a parked connection's or a detached response's
    // deadline is noticed; while connections wait for a worker, every 10 ms the workers are
    // checked for being all blocked.
    int tick = workers_.grow_if_stalled() ? 10 : 100;
    int n = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), tick);
    for (int i = 0; i < n; ++i) {
      int fd = events[static_cast<size_t>(i)].data.fd;
      if (fd == wake_fd_) {
        uint64_t count;
        ssize_t ignored = ::read(wake_fd_, &count, sizeof(count));
        (void)ignored;
      } else if (fd == listen_fd) {
        if (accepting) accept_all(listen_fd);
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
      } else if (serve_http2_event(fd)) {
#endif
      } else {
        dispatch(fd);
      }
    }
    std::unique_lock<std::mutex> lk(mu_);
    if (stopping_ && accepting) {
      accepting = false;
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd, nullptr);
      // The port refuses new connections at once, while running requests drain; the socket
      // itself stays the caller's to close.
      ::shutdown(listen_fd, SHUT_RD);
      for (auto &p : parked_) p.second.conn->close();
      parked_.clear();
    }
    bool finished = finished_;
    [[maybe_unused]] bool stopping = stopping_;  // HTTP/2 sessions' GOAWAY (WRPC_HTTP_NGHTTP2_SUPPORT)
    lk.unlock();
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
    if (finished) close_http2_connections();
    else start_http2_connections();
#endif
    if (finished) return;
    finish_detached();
    // Deadlines are checked on the tick, not on every wake-up of a busy loop.
    if (detail::Clock::now() >= next_scan) {
      expire_parked();
      kick_detached();
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
      tick_http2(stopping);
#endif
      next_scan = detail::Clock::now() + std::chrono::milliseconds(100);
    }
  }
}

inline void EdgeServer::accept_all(int listen_fd) {
  while (true) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors: the backlog keeps the rest until parked connections time out.
        logger_.warn("out of file descriptors; not accepting for 100 ms");
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      return;
    }
    int yes = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    std::shared_ptr<detail::EdgeConnection> conn;
    try {
      conn = std::make_shared<detail::EdgeConnection>(fd, tls_.get(), options_.write_timeout);
    } catch (const std::exception &e) {
      ::close(fd);
      logger_.error(e.what());
      continue;
    }
    park(std::move(conn), true);
  }
}

// Waits in the edge loop, without a thread, until the connection is readable or its
// deadline passes: a fresh or mid-head connection has head_timeout from its first byte, an
// idle keep-alive connection keep_alive_timeout.
inline void EdgeServer::park(std::shared_ptr<detail::EdgeConnection> conn, bool fresh) {
  auto now = detail::Clock::now();
  if (fresh) conn->head_started = now;
  auto deadline = conn->head_started != detail::Clock::time_point{} ? conn->head_started + options_.head_timeout
                                                                     : now + options_.keep_alive_timeout;
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) {
    conn->close();
    return;
  }
  int fd = conn->fd();
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  ev.data.fd = fd;
  parked_[fd] = Parked{std::move(conn), deadline};
  ::epoll_ctl(epoll_fd_, fresh ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
}

// A parked connection became readable (or was closed by its peer): a worker takes it. A
// detached response's connection has room to write again: the response moves on.
inline void EdgeServer::dispatch(int fd) {
  std::shared_ptr<detail::EdgeConnection> conn;
  std::shared_ptr<detail::DetachedResponse> response;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = parked_.find(fd);
    if (it != parked_.end()) {
      conn = std::move(it->second.conn);
      parked_.erase(it);
      active_[conn.get()] = conn;
    } else {
      auto d = detached_.find(fd);
      if (d != detached_.end()) response = d->second;
    }
  }
  if (conn) workers_.enqueue([this, conn] { serve_connection(conn); });
  if (response) response->kick();
}

inline std::shared_ptr<detail::DetachedResponse> EdgeServer::detach(detail::EdgeRequest &request,
                                                                    std::unique_ptr<detail::ResponseProducer> producer) {
  std::shared_ptr<detail::EdgeConnection> conn;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = active_.find(&request.conn);
    if (it == active_.end()) throw std::logic_error("detach: the request is not being served by this edge");
    conn = it->second;
  }
  auto response = std::make_shared<detail::DetachedResponse>(*this, conn, request, std::move(producer));
  request.detached = response;
  std::lock_guard<std::mutex> lk(mu_);
  detached_[conn->fd()] = response;
  return response;
}

// A detached response has bytes waiting for room in the socket: the edge loop kicks it when
// there is room (a one-shot registration; a later park replaces it).
inline void EdgeServer::wait_writable(int fd) {
  epoll_event ev{};
  ev.events = EPOLLOUT | EPOLLONESHOT;
  ev.data.fd = fd;
  // An HTTP/2 stream's pair was never parked, so never registered.
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT) ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
}

// From whichever thread ended a detached response: the edge loop finishes it.
inline void EdgeServer::finish_later(std::shared_ptr<detail::DetachedResponse> response) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    finished_detached_.push_back(std::move(response));
  }
  wake();
}

// The edge loop finishes the responses handed to it.
inline void EdgeServer::finish_detached() {
  std::vector<std::shared_ptr<detail::DetachedResponse>> over;
  {
    std::lock_guard<std::mutex> lk(mu_);
    over.swap(finished_detached_);
  }
  for (auto &response : over) finish(response);
}

// A detached response is over: the producer's log lines, the response-done step, then the
// connection goes on. One that stop() took already is stop()'s.
inline void EdgeServer::finish(const std::shared_ptr<detail::DetachedResponse> &response) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = detached_.find(response->fd_);
    if (it == detached_.end() || it->second != response) return;
    detached_.erase(it);
  }
  bool whole = !response->cut_;
  {
    detail::ServingHere serving(response->request_);
    // The producer's log lines carry the request's trace: they come before its spans end.
    response->producer_->finished(whole);
    if (done_) done_(response->request_, whole);
  }
  continue_connection(response->conn_, detail::keeps_connection(response->request_, whole, options_.keep_alive));
}

// On the tick: every detached response checks its deadlines.
inline void EdgeServer::kick_detached() {
  std::vector<std::shared_ptr<detail::DetachedResponse>> all;
  {
    std::lock_guard<std::mutex> lk(mu_);
    all.reserve(detached_.size());
    for (auto &d : detached_) all.push_back(d.second);
  }
  for (auto &response : all) response->kick();
}

// After a detached response: a worker takes the connection's next request as after any answer
// (it is there, or the worker waits a moment for it before parking the connection), or the
// connection closes.
inline void EdgeServer::continue_connection(const std::shared_ptr<detail::EdgeConnection> &conn, bool reusable) {
  if (!reusable || ++conn->served >= options_.keep_alive_max_count) return close_connection(conn);
  workers_.enqueue([this, conn] { serve_connection(conn, true); });
}

inline void EdgeServer::expire_parked() {
  std::vector<std::shared_ptr<detail::EdgeConnection>> expired;
  {
    auto now = detail::Clock::now();
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = parked_.begin(); it != parked_.end();) {
      if (it->second.deadline > now) {
        ++it;
        continue;
      }
      expired.push_back(std::move(it->second.conn));
      it = parked_.erase(it);
    }
  }
  for (auto &conn : expired) {
    // Bytes of a head arrived but not all of it: say so. An idle connection just closes.
    if (conn->pending_size() > 0 || conn->served == 0) {
      auto response = detail::refusal_response(detail::http1::Refusal::head_timeout);
      conn->write_all(response.data(), response.size(), std::chrono::milliseconds(10));
    }
    conn->close();
  }
}

// A worker's connection leaves the served ones (stop() no longer shuts it down).
inline void EdgeServer::leave_active(const std::shared_ptr<detail::EdgeConnection> &conn) {
  std::lock_guard<std::mutex> lk(mu_);
  active_.erase(conn.get());
  if (active_.empty()) idle_cv_.notify_all();
}

inline void EdgeServer::close_connection(const std::shared_ptr<detail::EdgeConnection> &conn) {
  // Closed only once out of active_: stop() shuts down the descriptors in it, and a closed
  // one's number may already belong to a new connection.
  leave_active(conn);
  conn->close();
}

inline void EdgeServer::refuse(detail::EdgeConnection &conn, detail::http1::Refusal refusal) {
  auto response = detail::refusal_response(refusal);
  conn.write_all(response.data(), response.size());
  logger_.debug("request refused", {{"reason", detail::http1::describe(refusal).text}});
}

// Serves the requests the connection has sent, as long as they keep coming; parks it when
// it has to wait for the next head.
inline void EdgeServer::serve_connection(const std::shared_ptr<detail::EdgeConnection> &conn, bool just_answered) {
  while (true) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) break;
    }
#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
    // HTTP/2's preface opens the connection (h2c by prior knowledge, or h2 after ALPN): the
    // edge loop serves it from here on. While the bytes so far could still be the preface, no
    // HTTP/1.1 head is parsed from them.
    // A connection committed to HTTP/2 (a listener with `http2: only`, or ALPN's h2) goes
    // there whatever it sent: nghttp2 refuses a bad preface with GOAWAY (RFC 9113 3.4).
    bool opening = conn->served == 0 && conn->pending_size() > 0 && detail::serves_http2(options_) &&
                   !conn->carries_stream();
    auto preface = opening ? detail::match_http2_preface(conn->pending(), conn->pending_size()) : detail::PrefaceMatch::no;
    bool committed = opening && (options_.http2.only || conn->negotiated_h2());
    if (preface == detail::PrefaceMatch::full || committed) return hand_to_http2(conn);
    if (conn->pending_size() > 0 && preface == detail::PrefaceMatch::no) {
#else
    if (conn->pending_size() > 0) {
#endif
      detail::http1::Head head;
      auto parsed = detail::http1::parse_request_head(conn->pending(), conn->pending_size(), options_.limits, head);
      if (parsed.state == detail::http1::HeadParse::State::refused) {
        refuse(*conn, parsed.refusal);
        break;
      }
      if (parsed.state == detail::http1::HeadParse::State::complete) {
        conn->consume(parsed.consumed);
        conn->head_started = {};
        auto served = serve_request(*conn, head);
        if (served == Served::detached) return;  // the response's writer owns the connection now
        if (served == Served::close || ++conn->served >= options_.keep_alive_max_count) break;
        just_answered = true;
        continue;
      }
      auto now = detail::Clock::now();
      if (conn->head_started == detail::Clock::time_point{}) conn->head_started = now;
      if (now - conn->head_started >= options_.head_timeout) {
        refuse(*conn, detail::http1::Refusal::head_timeout);
        break;
      }
    }
    // Right after an answer the client's next request is usually on its way: wait a moment
    // for it before handing the connection back to the loop, unless others wait for a worker.
    auto got = just_answered && workers_.backlog() == 0
                   ? conn->fill(options_.keep_alive_linger, true)
                   : conn->fill(std::chrono::milliseconds(0));
    just_answered = false;
    if (got == detail::EdgeConnection::Fill::data) continue;
    if (got == detail::EdgeConnection::Fill::closed) break;
    leave_active(conn);
    return park(conn, false);
  }
  close_connection(conn);
}

inline EdgeServer::Served EdgeServer::serve_request(detail::EdgeConnection &conn, const detail::http1::Head &head) {
  using detail::http1::Framing;
  if (head.framing == Framing::length && head.content_length > options_.max_content_len) {
    refuse(conn, detail::http1::Refusal::body_too_large);
    return Served::close;
  }
  bool has_body = head.framing == Framing::chunked || (head.framing == Framing::length && head.content_length > 0);
  if (head.expect_continue && has_body) {
    static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (!conn.write_all(continue_line, sizeof(continue_line) - 1)) return Served::close;
  }
  detail::EdgeBody body(conn, head, options_.limits, options_.max_content_len, options_.read_timeout,
                        options_.body_piece_bytes);
  // The last request a connection may carry is answered with `Connection: close`, so the
  // client does not send another one into the closing connection.
  bool last_allowed = !options_.keep_alive || conn.served + 1 >= options_.keep_alive_max_count;
  detail::EdgeRequest request{head, body, conn, conn.over_tls(), *this, !head.keep_alive || last_allowed};
  std::string method = detail::httplib_routes_method(head.method) ? head.method : "POST";
  // cpp-httplib sees origin-form only; the absolute form's authority becomes Host below.
  std::string target = head.path_with_query;
  detail::EdgeStream stream(conn, method + " " + target + " HTTP/1.1\r\n\r\n", request);
  detail::serving_on_this_thread() = &request;
  // cpp-httplib >= 0.12 reads a GET, HEAD or OPTIONS body itself before the route runs; the
  // edge leaves every body to the route (the Forwarder streams it), so to cpp-httplib those
  // requests show no length.
  bool routes_take_body = method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE";
  bool written = process(stream, request.closes_connection, [&](httplib::Request &req) {
    request.routed = &req;
    // The fields as sent, never percent-decoded; the edge has decoded the body already, so
    // cpp-httplib must not act on its framing or expectation.
    for (auto &f : head.fields) {
      if (detail::http1::ascii_iequals(f.first, "transfer-encoding") || detail::http1::ascii_iequals(f.first, "expect") ||
          detail::http1::ascii_iequals(f.first, "host") ||
          (!routes_take_body && detail::http1::ascii_iequals(f.first, "content-length")))
        continue;
      req.headers.emplace(f.first, f.second);
    }
    if (!head.authority.empty()) req.headers.emplace("Host", head.authority);
  });
  if (request.detached) {
    detail::serving_on_this_thread() = nullptr;
    // From here on the connection is the response's: this worker only starts it moving
    // (its news may have come before anyone listened for it).
    request.detached->kick();
    return Served::detached;
  }
  bool sent = conn.flush();
  if (done_) done_(request, written && sent);
  detail::serving_on_this_thread() = nullptr;
  return detail::keeps_connection(request, written && sent, options_.keep_alive) ? Served::keep_alive : Served::close;
}

inline bool EdgeServer::process(httplib::Stream &stream, bool close_connection,
                                const std::function<void(httplib::Request &)> &setup) {
  bool connection_closed = false;
  // Generic, so that only the call that fits the cpp-httplib in use is compiled.
  auto call = [&](auto &server) {
    if constexpr (detail::kProcessRequestTakesAddresses) {
      std::string remote_ip, local_ip;
      int remote_port = 0, local_port = 0;
      stream.get_remote_ip_and_port(remote_ip, remote_port);
      stream.get_local_ip_and_port(local_ip, local_port);
      return server.process_request(stream, remote_ip, remote_port, local_ip, local_port, close_connection,
                                    connection_closed, setup);
    } else {
      return server.process_request(stream, close_connection, connection_closed, setup);
    }
  };
  return call(*this);
}

inline void EdgeServer::stop(std::chrono::milliseconds drain) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (finished_) return;
    stopping_ = true;
  }
  wake();
  std::unique_lock<std::mutex> lk(mu_);
  idle_cv_.wait_for(lk, drain, [&] { return active_.empty(); });
  for (auto &a : active_) a.second->shut_down();
  svr_sock_ = INVALID_SOCKET;  // responses still streaming stop
  finished_ = true;
  lk.unlock();
  wake();
  workers_.shutdown();
  // No worker detaches any more: the responses still detached end here, cut off.
  std::unordered_map<int, std::shared_ptr<detail::DetachedResponse>> left;
  lk.lock();
  left.swap(detached_);
  finished_detached_.clear();
  lk.unlock();
  for (auto &d : left) {
    d.second->abandon();
    {
      detail::ServingHere serving(d.second->request_);
      if (done_) done_(d.second->request_, false);
    }
    close_connection(d.second->conn_);
  }
}

namespace detail {

inline DetachedResponse::DetachedResponse(EdgeServer &server, std::shared_ptr<EdgeConnection> conn,
                                          EdgeRequest &request, std::unique_ptr<ResponseProducer> producer)
    : server_(server), conn_(std::move(conn)), fd_(conn_->fd()), head_(request.head), body_(request.body),
      routed_(*request.routed), request_{head_, body_, *conn_, request.over_tls, server, request.closes_connection},
      producer_(std::move(producer)) {
  request_.routed = &routed_;
  request_.trace = std::move(request.trace);  // its spans end with this response
}

inline void DetachedResponse::start(httplib::Response &res) {
  {
    // The post-routing step reads the request through edge_request().
    ServingHere serving(request_);
    server_.after_routing(routed_, res);
  }
  // What cpp-httplib writes for the edge's own answers, written the same way here.
  if (request_.closes_connection || request_.close_after) {
    res.set_header("Connection", "close");
  } else {
    res.set_header("Keep-Alive", "timeout=" + std::to_string(server_.options().keep_alive_timeout.count() / 1000) +
                                     ", max=" + std::to_string(server_.options().keep_alive_max_count));
  }
  if (!res.body.empty() && !res.has_header("Content-Type")) res.set_header("Content-Type", "text/plain");
  // The provider's own answers carry their body in res.body: its length frames it.
  if (!res.body.empty() && !res.has_header("Content-Length"))
    res.set_header("Content-Length", std::to_string(res.body.size()));
  out_ += "HTTP/1.1 " + std::to_string(res.status) + " " + reason_phrase(res.status) + "\r\n";
  for (auto &field : res.headers) out_ += field.first + ": " + field.second + "\r\n";
  out_ += "\r\n";
  if (head_.method != "HEAD") out_ += res.body;
}

inline void DetachedResponse::kick() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (abandoned_ || over_) return;
    if (running_) {
      again_ = true;
      return;
    }
    running_ = true;
  }
  bool over = false, blocked = false;
  while (true) {
    step(Clock::now());
    std::lock_guard<std::mutex> lk(mu_);
    over = cut_ || (ending_ && out_.empty());
    if (!again_ || over || abandoned_) {
      over_ = over;
      blocked = !over && out_used_ < out_.size();
      running_ = false;
      turn_over_.notify_all();
      break;
    }
    again_ = false;
  }
  // The end's steps log only through the producer: without log lines they run right here
  // (no hand-off), with them on the edge loop (no log line on the NATS reader).
  if (over && producer_->logs()) server_.finish_later(shared_from_this());
  else if (over) server_.finish(shared_from_this());
  else if (blocked) server_.wait_writable(fd_);
}

// Lets the producer write while it has news and there is room, then sends it all in one
// write; goes round again when the producer stopped for room, not for news.
inline void DetachedResponse::step(Clock::time_point now) {
  bool room_was_short = true;
  while (room_was_short) {
    room_was_short = false;
    while (!cut_ && !ending_ && has_room()) {
      size_t before = out_.size();
      producer_->advance(*this, now);
      if (out_.size() == before) break;  // it waits for news
      room_was_short = !has_room();
    }
    if (!send_waiting(now)) cut_ = true;
    if (cut_ || !out_.empty()) return;  // broken, or the socket is full: EPOLLOUT brings room
  }
}

// False when the connection broke or the client took nothing for the write timeout.
inline bool DetachedResponse::send_waiting(Clock::time_point now) {
  while (out_used_ < out_.size()) {
    ssize_t n = conn_->send_now(out_.data() + out_used_, out_.size() - out_used_);
    if (n < 0) return false;
    if (n == 0) {
      if (blocked_since_ == Clock::time_point{}) blocked_since_ = now;
      return now - blocked_since_ < server_.options().write_timeout;
    }
    out_used_ += static_cast<size_t>(n);
    blocked_since_ = {};
  }
  out_.clear();
  out_used_ = 0;
  return true;
}

inline void DetachedResponse::abandon() {
  std::unique_lock<std::mutex> lk(mu_);
  abandoned_ = true;
  turn_over_.wait(lk, [&] { return !running_; });
}

}  // namespace detail

#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
namespace detail {

inline Http2Connection::Http2Connection(EdgeServer &edge, std::shared_ptr<EdgeConnection> conn)
    : edge_(edge), conn_(std::move(conn)), started_(Clock::now()), last_frame_(started_),
      budget_(edge.options().http2.control_frame_burst), budget_at_(started_) {
  const Http2Options &o = edge_.options().http2;
  nghttp2_session_callbacks *callbacks = nullptr;
  nghttp2_option *option = nullptr;
  if (nghttp2_session_callbacks_new(&callbacks) != 0 || nghttp2_option_new(&option) != 0)
    throw std::runtime_error("HTTP/2: out of memory");
  nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, on_begin_frame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
  // Request bodies are acknowledged by hand, once they went on (flow control per consumer).
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_max_continuations(option, o.max_continuations);
  nghttp2_option_set_max_deflate_dynamic_table_size(option, o.hpack_table_bytes);
  int made = nghttp2_session_server_new2(&session_, callbacks, this, option);
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  if (made != 0) throw std::runtime_error("HTTP/2: cannot create a session");
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o.stream_window_bytes},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(o.max_header_list_bytes)},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, o.hpack_table_bytes},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, sizeof(settings) / sizeof(settings[0]));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(o.connection_window_bytes));
}

inline Http2Connection::~Http2Connection() {
  close();
  nghttp2_session_del(session_);
}

// Leaves the edge loop: the streams' pairs close (their requests see the end), the socket is
// watched no more; the EdgeServer closes the socket after this.
inline void Http2Connection::close() {
  over_ = true;
  for (auto &s : streams_) close_pair(*s.second);
  if (client_watched_) edge_.unwatch(conn_->fd());
  client_watched_ = 0;
}

// Frames that carry no request cost work all the same: a token bucket bounds them (once it
// is spent, on_frame_recv ends the connection).
inline void Http2Connection::spend_control_budget() {
  const Http2Options &o = edge_.options().http2;
  auto now = Clock::now();
  budget_ = std::min<double>(o.control_frame_burst,
                             budget_ + std::chrono::duration<double>(now - budget_at_).count() * o.control_frames_per_second);
  budget_at_ = now;
  if (budget_ >= 1) budget_ -= 1;
}

// A HEADERS frame on a stream id below the client's highest that was never opened: the id was
// skipped, so the stream is closed (RFC 9113 5.1.1), a connection error. nghttp2 ignores such
// frames, as it cannot tell them from trailers racing a reset; recently closed streams are
// given that benefit here too.
inline int Http2Connection::on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  if (hd->type == NGHTTP2_HEADERS && (hd->stream_id & 1) && hd->stream_id < c.highest_stream_ &&
      !nghttp2_session_find_stream(session, hd->stream_id) &&
      std::find(c.recently_closed_.begin(), c.recently_closed_.end(), hd->stream_id) == c.recently_closed_.end())
    c.terminate(NGHTTP2_PROTOCOL_ERROR);
  return 0;
}

inline int Http2Connection::on_begin_headers(nghttp2_session *, const nghttp2_frame *frame, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    c.highest_stream_ = std::max(c.highest_stream_, frame->hd.stream_id);
    auto s = std::make_unique<Stream>();
    s->id = frame->hd.stream_id;
    c.streams_[s->id] = std::move(s);
  } else if (auto *s = c.find(frame->hd.stream_id)) {
    s->receiving_trailers = true;
    s->header_bytes = 0;
  }
  return 0;
}

inline int Http2Connection::on_header(nghttp2_session *, const nghttp2_frame *frame, const uint8_t *name,
                                      size_t name_len, const uint8_t *value, size_t value_len, uint8_t, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  Stream *s = c.find(frame->hd.stream_id);
  if (!s || s->too_large) return 0;
  // RFC 9113 6.5.2: the size of a field is its name and value plus 32.
  s->header_bytes += name_len + value_len + 32;
  if (s->header_bytes > c.edge_.options().http2.max_header_list_bytes) {
    s->too_large = true;
    return 0;
  }
  std::string n(reinterpret_cast<const char *>(name), name_len), v(reinterpret_cast<const char *>(value), value_len);
  // nghttp2 checked the grammar already; the pair carries HTTP/1.1, where these bytes would end a line.
  if (n.find_first_of("\r\n", 0) != std::string::npos || v.find_first_of(std::string("\r\n\0", 3)) != std::string::npos)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (s->receiving_trailers) {
    s->trailers.emplace_back(std::move(n), std::move(v));
  } else if (n == ":method") {
    s->method = std::move(v);
  } else if (n == ":path") {
    s->path = std::move(v);
  } else if (n == ":authority") {
    s->authority = std::move(v);
  } else if (n == ":scheme") {
    s->scheme = std::move(v);
  } else if (n == "cookie") {
    // RFC 9113 8.2.3: split cookies are one field again for HTTP/1.1.
    auto same = std::find_if(s->fields.begin(), s->fields.end(), [](const auto &f) { return f.first == "cookie"; });
    if (same != s->fields.end()) same->second += "; " + v;
    else s->fields.emplace_back(std::move(n), std::move(v));
  } else if (n != "host" && n != "content-length" && n != "te") {
    s->fields.emplace_back(std::move(n), std::move(v));
  } else if (n == "host" && s->authority.empty()) {
    s->authority = std::move(v);
  }
  return 0;
}

inline int Http2Connection::on_frame_recv(nghttp2_session *, const nghttp2_frame *frame, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  c.last_frame_ = Clock::now();
  bool ends_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    if (Stream *s = c.find(frame->hd.stream_id)) {
      if (!s->receiving_trailers) {
        if (s->too_large) c.answer_locally(*s, 431, "request header fields too large");
        else c.start_request(*s, ends_stream);
      }
      if (ends_stream) c.end_request(*s);
    }
    break;
  case NGHTTP2_DATA:
    if (!ends_stream) {
      if (frame->hd.length == 0) c.spend_control_budget();
    } else if (Stream *s = c.find(frame->hd.stream_id)) {
      c.end_request(*s);
    }
    break;
  case NGHTTP2_SETTINGS:
    if (frame->hd.flags & NGHTTP2_FLAG_ACK) c.settings_acked_ = true;
    else c.spend_control_budget();
    break;
  case NGHTTP2_PING:
    if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) c.spend_control_budget();
    break;
  case NGHTTP2_RST_STREAM:
  case NGHTTP2_PRIORITY:
    c.spend_control_budget();
    break;
  default: break;
  }
  if (c.budget_ < 1) c.terminate(NGHTTP2_ENHANCE_YOUR_CALM);
  return 0;
}

inline int Http2Connection::on_data_chunk(nghttp2_session *session, uint8_t, int32_t stream_id, const uint8_t *data,
                                          size_t len, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  Stream *s = c.find(stream_id);
  if (!s || s->fd < 0 || s->request_dead) {
    // Nobody reads it (the stream was answered without its body, or is gone): let it go.
    nghttp2_session_consume(session, stream_id, len);
    return 0;
  }
  char size[20];
  int n = std::snprintf(size, sizeof(size), "%zx\r\n", len);
  Segment segment{std::string(size, static_cast<size_t>(n)), len};
  segment.bytes.append(reinterpret_cast<const char *>(data), len);
  segment.bytes += "\r\n";
  s->to_edge.push_back(std::move(segment));
  return 0;
}

inline int Http2Connection::on_stream_close(nghttp2_session *, int32_t stream_id, uint32_t, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  c.recently_closed_.push_back(stream_id);
  if (c.recently_closed_.size() > kRecentlyClosedStreams) c.recently_closed_.pop_front();
  auto it = c.streams_.find(stream_id);
  if (it == c.streams_.end()) return 0;
  c.close_pair(*it->second);  // a request still under way sees its connection end
  c.streams_.erase(it);
  return 0;
}

inline int Http2Connection::on_frame_send(nghttp2_session *, const nghttp2_frame *frame, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  if (frame->hd.type == NGHTTP2_DATA) c.stalled_since_ = {};  // the client's window moves
  return 0;
}

inline ssize_t Http2Connection::read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                                          uint32_t *flags, nghttp2_data_source *, void *self) {
  auto &c = *static_cast<Http2Connection *>(self);
  Stream *s = c.find(stream_id);
  if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  size_t ready = s->body.size() - s->body_used;
  if (ready == 0) {
    if (!s->body_done) {
      s->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!s->response_trailers.empty()) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      std::vector<nghttp2_nv> nva;
      append_name_values(nva, s->response_trailers);
      nghttp2_submit_trailer(session, stream_id, nva.data(), nva.size());
    }
    return 0;
  }
  size_t n = std::min(ready, length);
  std::memcpy(buf, s->body.data() + s->body_used, n);
  s->body_used += n;
  if (s->body_used == s->body.size()) {
    s->body.clear();
    s->body_used = 0;
  }
  return static_cast<ssize_t>(n);
}

// The stream's request becomes an HTTP/1.1 request on a socket pair the edge serves.
inline void Http2Connection::start_request(Stream &s, bool request_ends) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_REFUSED_STREAM);
    return;
  }
  std::string target = s.method == "CONNECT" ? s.authority : s.path;
  std::string head = s.method + " " + target + " HTTP/1.1\r\nHost: " + s.authority + "\r\n";
  for (auto &f : s.fields) head += f.first + ": " + f.second + "\r\n";
  // One request per pair; a body follows chunked, so the client's trailers can end it.
  head += "Connection: close\r\n";
  s.chunked_request = !request_ends;
  head += s.chunked_request ? "Transfer-Encoding: chunked\r\n\r\n" : "\r\n";
  s.to_edge.push_back(Segment{std::move(head), 0});
  s.fd = pair[0];
  auto inner = std::make_shared<EdgeConnection>(pair[1], conn_->addresses(), conn_->over_tls(),
                                                edge_.options().write_timeout);
  write_to_edge(s);
  if (!edge_.serve_stream(std::move(inner))) {
    close_pair(s);
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_REFUSED_STREAM);
  }
}

// The client's request is complete: the last chunk, with its trailers.
inline void Http2Connection::end_request(Stream &s) {
  if (s.request_ended) return;
  s.request_ended = true;
  if (s.fd < 0 || !s.chunked_request) return;
  std::string last = "0\r\n";
  for (auto &f : s.trailers) last += f.first + ": " + f.second + "\r\n";
  last += "\r\n";
  s.to_edge.push_back(Segment{std::move(last), 0});
}

// A stream the edge is not asked about (its header list was too large): answered here.
inline void Http2Connection::answer_locally(Stream &s, int status, const std::string &text) {
  s.body = text + "\n";
  s.body_done = true;
  submit_head(s, status, {{"content-type", "text/plain; charset=utf-8"}}, true);
}

inline void Http2Connection::submit_head(Stream &s, int status, const http1::FieldList &fields, bool with_body) {
  http1::FieldList head{{":status", std::to_string(status)}};
  head.reserve(fields.size() + 1);
  for (auto &f : fields) {
    std::string name = lower(f.first);
    if (!is_connection_specific(name)) head.emplace_back(std::move(name), f.second);
  }
  std::vector<nghttp2_nv> nva;
  append_name_values(nva, head);
  nghttp2_data_provider body{};
  body.read_callback = read_body;
  nghttp2_submit_response(session_, s.id, nva.data(), nva.size(), with_body ? &body : nullptr);
  s.head_sent = true;
}

// Request bytes into the pair, as far as it takes them; false when the edge's end is gone.
inline bool Http2Connection::write_to_edge(Stream &s) {
  while (s.fd >= 0 && !s.to_edge.empty()) {
    Segment &front = s.to_edge.front();
    ssize_t n = ::send(s.fd, front.bytes.data() + s.to_edge_used, front.bytes.size() - s.to_edge_used, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // The edge stopped reading (it answered without the rest of the body): what comes is dropped.
      for (auto &left : s.to_edge) nghttp2_session_consume(session_, s.id, left.payload);
      s.to_edge.clear();
      s.to_edge_used = 0;
      s.request_dead = true;
      return false;
    }
    s.to_edge_used += static_cast<size_t>(n);
    if (s.to_edge_used == front.bytes.size()) {
      if (front.payload) nghttp2_session_consume(session_, s.id, front.payload);
      s.to_edge.pop_front();
      s.to_edge_used = 0;
    }
  }
  return true;
}

// Response bytes from the pair while the stream's buffer has room; whether any came.
inline bool Http2Connection::read_from_edge(Stream &s) {
  bool got = false;
  while (s.fd >= 0 && !s.body_done && s.body.size() - s.body_used < kBodyBufferBytes) {
    size_t had = s.from_edge.size();
    s.from_edge.resize(had + kBodyBufferBytes);
    ssize_t n = ::recv(s.fd, &s.from_edge[had], kBodyBufferBytes, 0);
    s.from_edge.resize(had + static_cast<size_t>(std::max<ssize_t>(n, 0)));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return got;
    if (n <= 0) {
      edge_closed(s);
      return true;
    }
    got = true;
    take_response_bytes(s);
  }
  return got;
}

// Parses what came from the pair: the head once, then the body by its framing.
inline void Http2Connection::take_response_bytes(Stream &s) {
  try {
    while (!s.head_sent) {
      StreamResponseHead head;
      size_t used = parse_stream_response_head(s.from_edge, edge_.options().limits.max_head_bytes, s.method == "HEAD", head);
      if (used == 0) return;
      s.from_edge.erase(0, used);
      if (head.status < 200) continue;  // an interim answer: the final one follows
      s.head = std::move(head);
      s.length_left = s.head.length;
      if (s.head.body == StreamResponseHead::Body::chunked) s.chunked = std::make_unique<http1::ChunkedDecoder>(edge_.options().limits);
      s.body_done = s.head.body == StreamResponseHead::Body::none;
      submit_head(s, s.head.status, s.head.fields, !s.body_done);
    }
    size_t before = s.body.size();
    switch (s.head.body) {
    case StreamResponseHead::Body::none: s.from_edge.clear(); break;
    case StreamResponseHead::Body::until_close: s.body += s.from_edge; s.from_edge.clear(); break;
    case StreamResponseHead::Body::length: {
      size_t n = static_cast<size_t>(std::min<uint64_t>(s.length_left, s.from_edge.size()));
      s.body.append(s.from_edge, 0, n);
      s.from_edge.clear();
      s.length_left -= n;
      s.body_done = s.length_left == 0;
      break;
    }
    case StreamResponseHead::Body::chunked:
      s.from_edge.erase(0, s.chunked->decode(s.from_edge.data(), s.from_edge.size(), s.body));
      if (s.chunked->refusal() != http1::Refusal::none) throw std::runtime_error("malformed chunked body");
      if (s.chunked->done()) {
        s.body_done = true;
        for (auto &f : s.chunked->trailers()) {
          std::string name = lower(f.first);
          if (!is_connection_specific(name)) s.response_trailers.emplace_back(std::move(name), f.second);
        }
      }
      break;
    }
    if (s.body.size() > before || s.body_done) resume_body(s);
    if (s.body_done) close_pair(s);
  } catch (const std::exception &) {
    close_pair(s);
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_INTERNAL_ERROR);
  }
}

// The edge closed its end: the end of a body framed by the close, or a response cut off.
inline void Http2Connection::edge_closed(Stream &s) {
  close_pair(s);
  if (s.head_sent && s.head.body == StreamResponseHead::Body::until_close) {
    s.body_done = true;
    resume_body(s);
  } else if (!s.body_done) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_INTERNAL_ERROR);
  }
}

// More of the response body (or its end) is here: nghttp2 asks read_body again if it waits.
inline void Http2Connection::resume_body(Stream &s) {
  if (!s.deferred) return;
  s.deferred = false;
  nghttp2_session_resume_data(session_, s.id);
}

inline void Http2Connection::close_pair(Stream &s) {
  if (s.fd < 0) return;
  if (s.watched) edge_.forget(s.fd);  // closing it leaves the epoll set by itself
  s.watched = 0;
  ::close(s.fd);
  s.fd = -1;
}

// A pair is watched for what the stream waits for: room for request bytes, response bytes
// while its buffer has room.
inline void Http2Connection::watch_pair(Stream &s) {
  if (s.fd < 0) return;
  uint32_t want = 0;
  if (!s.to_edge.empty()) want |= EPOLLOUT;
  if (!s.body_done && s.body.size() - s.body_used < kBodyBufferBytes) want |= EPOLLIN;
  if (want != s.watched) {
    edge_.watch(s.fd, want, this);
    s.watched = want;
  }
}

// False when the client's connection ended or broke.
inline bool Http2Connection::read_client() {
  while (true) {
    auto got = conn_->fill(std::chrono::milliseconds(0));
    if (got == EdgeConnection::Fill::closed) return false;
    if (conn_->pending_size() > 0) {
      ssize_t used = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t *>(conn_->pending()),
                                              conn_->pending_size());
      if (used < 0) {
        // What nghttp2 gives up on without a GOAWAY of its own: a flood (too many frames to
        // acknowledge, or CONTINUATION frames without end) or no preface. One goes out now.
        bool flood = used == NGHTTP2_ERR_FLOODED || used == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS;
        terminate(flood ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
        return false;
      }
      conn_->consume(static_cast<size_t>(used));
    }
    if (got == EdgeConnection::Fill::nothing) return true;
  }
}

// Frames out while the client's socket takes them; false when it broke or stalled too long.
inline bool Http2Connection::write_client() {
  while (true) {
    while (out_.size() - out_used_ < kOutBufferBytes) {
      const uint8_t *data = nullptr;
      ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) return false;
      if (n == 0) break;
      out_.append(reinterpret_cast<const char *>(data), static_cast<size_t>(n));
    }
    if (out_used_ == out_.size()) {
      out_.clear();
      out_used_ = 0;
      out_blocked_since_ = {};
      return true;
    }
    ssize_t n = conn_->send_now(out_.data() + out_used_, out_.size() - out_used_);
    if (n < 0) return false;
    if (n == 0) {
      if (out_blocked_since_ == Clock::time_point{}) out_blocked_since_ = Clock::now();
      return true;
    }
    out_used_ += static_cast<size_t>(n);
    out_blocked_since_ = {};
    if (out_used_ == out_.size()) {
      out_.clear();
      out_used_ = 0;
    }
  }
}

// `client_ready`: the client's socket had an event (else only a stream's pair had one).
inline void Http2Connection::pump(bool client_ready) {
  if (over_) return;
  if (client_ready && !read_client()) {
    write_client();  // a GOAWAY nghttp2 queued for a protocol error, if the socket takes it
    over_ = true;
    return;
  }
  // Responses move on while their pairs have bytes and the client's socket takes the frames.
  for (int round = 0; round < 8; ++round) {
    bool got = false;
    for (auto &entry : streams_) {
      Stream &s = *entry.second;
      write_to_edge(s);
      got |= read_from_edge(s);
    }
    if (!write_client()) {
      over_ = true;
      return;
    }
    if (!got || out_used_ < out_.size()) break;
  }
  // Streams closed while their frames went out are gone; the rest wait for what they need.
  for (auto &entry : streams_) watch_pair(*entry.second);
  uint32_t want = EPOLLIN | EPOLLRDHUP | (out_used_ < out_.size() ? uint32_t{EPOLLOUT} : 0u);
  if (want != client_watched_) {
    edge_.watch(conn_->fd(), want, this);
    client_watched_ = want;
  }
  if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_) && out_.empty()) over_ = true;
}

inline void Http2Connection::tick(Clock::time_point now) {
  const Http2Options &o = edge_.options().http2;
  if (over_) return;
  if (!settings_acked_ && now - started_ >= o.settings_timeout) return terminate(NGHTTP2_SETTINGS_TIMEOUT);
  if (streams_.empty() && now - last_frame_ >= o.idle_timeout) return terminate(NGHTTP2_NO_ERROR);
  if (out_blocked_since_ != Clock::time_point{} && now - out_blocked_since_ >= edge_.options().write_timeout) {
    over_ = true;  // the client takes nothing: not even a GOAWAY would reach it
    return;
  }
  // Response bytes wait while the client keeps its window shut: after the write timeout the
  // connection goes (a zero-window stall holds buffers and streams for nothing).
  bool waiting = false;
  for (auto &entry : streams_) {
    Stream &s = *entry.second;
    if (s.body.size() > s.body_used &&
        (nghttp2_session_get_stream_remote_window_size(session_, s.id) <= 0 ||
         nghttp2_session_get_remote_window_size(session_) <= 0))
      waiting = true;
  }
  if (!waiting) stalled_since_ = {};
  else if (stalled_since_ == Clock::time_point{}) stalled_since_ = now;
  else if (now - stalled_since_ >= edge_.options().write_timeout) return terminate(NGHTTP2_FLOW_CONTROL_ERROR);
}

inline void Http2Connection::go_away() {
  if (going_away_ || over_) return;
  going_away_ = true;
  nghttp2_submit_shutdown_notice(session_);
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
  pump();
}

// GOAWAY with `error_code`, once; the connection closes when it is written.
inline void Http2Connection::terminate(uint32_t error_code) {
  if (terminated_) return;
  terminated_ = true;
  going_away_ = true;
  nghttp2_session_terminate_session(session_, error_code);
}

}  // namespace detail

inline void EdgeServer::hand_to_http2(const std::shared_ptr<detail::EdgeConnection> &conn) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    http2_arrivals_.push_back(conn);
  }
  wake();
}

// On the edge loop: the connections workers found speaking HTTP/2 start their sessions.
inline void EdgeServer::start_http2_connections() {
  std::vector<std::shared_ptr<detail::EdgeConnection>> arrived;
  {
    std::lock_guard<std::mutex> lk(mu_);
    arrived.swap(http2_arrivals_);
  }
  for (auto &conn : arrived) {
    std::shared_ptr<detail::Http2Connection> h2;
    try {
      h2 = std::make_shared<detail::Http2Connection>(*this, conn);
    } catch (const std::exception &e) {
      logger_.error(e.what());
      close_connection(conn);
      continue;
    }
    http2_connections_[conn->fd()] = h2;
    h2->pump();  // the preface and what came with it are read already
    end_if_over(h2);
  }
}

// A connection whose session is over leaves the loop; its socket closes once the session's
// pairs did.
inline void EdgeServer::end_if_over(std::shared_ptr<detail::Http2Connection> h2) {
  if (!h2->over()) return;
  http2_connections_.erase(h2->fd());
  h2->close();
  close_connection(h2->connection());
}

// An event on a descriptor of an HTTP/2 connection (its socket or a stream's pair).
inline bool EdgeServer::serve_http2_event(int fd) {
  auto it = http2_watched_.find(fd);
  if (it == http2_watched_.end()) return false;
  auto h2 = http2_connections_.find(it->second->fd());
  if (h2 == http2_connections_.end()) return true;
  auto connection = h2->second;
  connection->pump(fd == connection->fd());
  end_if_over(connection);
  return true;
}

inline void EdgeServer::tick_http2(bool stopping) {
  auto now = detail::Clock::now();
  std::vector<std::shared_ptr<detail::Http2Connection>> all;
  all.reserve(http2_connections_.size());
  for (auto &c : http2_connections_) all.push_back(c.second);
  for (auto &h2 : all) {
    if (stopping) h2->go_away();
    h2->tick(now);
    h2->pump();
    end_if_over(h2);
  }
}

inline void EdgeServer::close_http2_connections() {
  std::vector<std::shared_ptr<detail::Http2Connection>> all;
  for (auto &c : http2_connections_) all.push_back(c.second);
  http2_connections_.clear();
  for (auto &h2 : all) {
    h2->close();
    close_connection(h2->connection());
  }
}

inline void EdgeServer::watch(int fd, uint32_t events, detail::Http2Connection *owner) {
  if (events == 0) return unwatch(fd);
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT)
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  http2_watched_[fd] = owner;
}

inline void EdgeServer::unwatch(int fd) {
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  forget(fd);
}

inline void EdgeServer::forget(int fd) { http2_watched_.erase(fd); }

// A stream's request, on its socket pair: a worker serves it like an accepted connection.
inline bool EdgeServer::serve_stream(std::shared_ptr<detail::EdgeConnection> conn) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return false;
    active_[conn.get()] = conn;
  }
  workers_.enqueue([this, conn] { serve_connection(conn); });
  return true;
}
#endif  // WRPC_HTTP_NGHTTP2_SUPPORT

}  // namespace wrpc_http

// ---- telemetry ----
//
// OpenTelemetry as a wasmCloud host asks for it in the host data's `otel_config`: a server
// span per HTTP request and a client span per wRPC call, request metrics, and the provider's
// log lines, exported as OTLP/HTTP JSON by one background thread. Requests only append to
// bounded queues: a slow or dead collector costs dropped telemetry, never request time.

namespace wrpc_http {

// `otel_config` of the host data: the fields of wasmCloud's OtelConfig.
struct OtelConfig {
  bool enable_observability = false;
  std::optional<bool> enable_traces, enable_metrics, enable_logs;
  std::string observability_endpoint, traces_endpoint, metrics_endpoint, logs_endpoint;
  std::string protocol = "http";  // "http" or "grpc"; only OTLP/HTTP is exported
  std::vector<std::string> additional_ca_paths;
  std::string trace_level;
  // How the export runs: not otel_config keys; the WRPC_HTTP_OTEL_* macros are the defaults
  // (and OTEL_METRIC_EXPORT_INTERVAL, outside a host, sets metrics_interval).
  size_t queue_limit = WRPC_HTTP_OTEL_QUEUE_LIMIT;  // each of spans and log records; more are dropped
  size_t batch_size = WRPC_HTTP_OTEL_BATCH_SIZE;
  std::chrono::milliseconds export_interval{WRPC_HTTP_OTEL_EXPORT_INTERVAL_MS};
  std::chrono::milliseconds metrics_interval{WRPC_HTTP_OTEL_METRICS_INTERVAL_MS};
  std::chrono::milliseconds export_timeout{WRPC_HTTP_OTEL_TIMEOUT_MS};  // one attempt
  int retries = WRPC_HTTP_OTEL_RETRIES;

  // Throws std::invalid_argument naming the bad field.
  static OtelConfig from_json(const nlohmann::json &j);
  bool traces_enabled() const { return enable_traces.value_or(enable_observability); }
  bool metrics_enabled() const { return enable_metrics.value_or(enable_observability); }
  bool logs_enabled() const { return enable_logs.value_or(enable_observability); }
  // As the host resolves it: the signal's own endpoint as given; else observability_endpoint,
  // with `/v1/<signal>` added when it has no path; else the OTLP/HTTP default.
  std::string endpoint(const std::string &signal) const;
};

namespace detail {

inline std::optional<bool> json_optional_bool(const nlohmann::json &j, const char *key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) throw std::invalid_argument(std::string("otel_config field '") + key + "' must be a boolean");
  return it->get<bool>();
}

// "http://host:port/path" -> {"http://host:port", "/path"} (path "" when there is none).
inline std::pair<std::string, std::string> split_url(const std::string &url) {
  auto scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return {url, ""};
  auto path_start = url.find('/', scheme_end + 3);
  if (path_start == std::string::npos) return {url, ""};
  return {url.substr(0, path_start), url.substr(path_start)};
}

}  // namespace detail

inline OtelConfig OtelConfig::from_json(const nlohmann::json &j) {
  OtelConfig c;
  if (j.is_null()) return c;
  if (!j.is_object()) throw std::invalid_argument("otel_config must be a JSON object");
  c.enable_observability = detail::json_optional_bool(j, "enable_observability").value_or(false);
  c.enable_traces = detail::json_optional_bool(j, "enable_traces");
  c.enable_metrics = detail::json_optional_bool(j, "enable_metrics");
  c.enable_logs = detail::json_optional_bool(j, "enable_logs");
  c.observability_endpoint = detail::json_string(j, "observability_endpoint");
  c.traces_endpoint = detail::json_string(j, "traces_endpoint");
  c.metrics_endpoint = detail::json_string(j, "metrics_endpoint");
  c.logs_endpoint = detail::json_string(j, "logs_endpoint");
  // serde writes the enum as "Http"/"Grpc"; hand-written host data says "http"/"grpc".
  c.protocol = detail::json_string(j, "protocol", "http");
  for (auto &ch : c.protocol) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (c.protocol != "http" && c.protocol != "grpc")
    throw std::invalid_argument("otel_config 'protocol' must be http or grpc, not '" + c.protocol + "'");
  auto cas = j.find("additional_ca_paths");
  if (cas != j.end() && !cas->is_null()) {
    if (!cas->is_array()) throw std::invalid_argument("otel_config 'additional_ca_paths' must be an array");
    for (auto &p : *cas) {
      if (!p.is_string()) throw std::invalid_argument("otel_config 'additional_ca_paths' must hold strings");
      c.additional_ca_paths.push_back(p.get<std::string>());
    }
  }
  auto level = j.find("trace_level");
  if (level != j.end() && level->is_string()) c.trace_level = level->get<std::string>();
  return c;
}

inline std::string OtelConfig::endpoint(const std::string &signal) const {
  const std::string &own = signal == "traces" ? traces_endpoint : signal == "metrics" ? metrics_endpoint : logs_endpoint;
  if (!own.empty()) return own;
  if (observability_endpoint.empty()) return "http://localhost:4318/v1/" + signal;
  auto parts = detail::split_url(observability_endpoint);
  if (parts.second.empty() || parts.second == "/") return parts.first + "/v1/" + signal;
  return observability_endpoint;
}

class Telemetry;

namespace detail {

// Defined with the HTTP bridge: the W3C trace-context helpers.
inline bool valid_traceparent(const std::string &t);
inline std::string random_hex(size_t digits);

inline uint64_t unix_nanos() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

// One attribute of a span, log record or metric series: a string or an integer. Queued
// records keep their attributes this small and become OTLP JSON only when exported: a full
// queue (a collector that is away) costs a few hundred bytes per span, not kilobytes.
struct Attribute {
  std::string key, text;
  int64_t number = 0;
  bool is_number = false;
  Attribute(std::string k, std::string value) : key(std::move(k)), text(std::move(value)) {}
  Attribute(std::string k, int64_t value) : key(std::move(k)), number(value), is_number(true) {}
};
using Attributes = std::vector<Attribute>;

inline Attribute otlp_attribute(const std::string &key, const std::string &value) { return {key, value}; }
inline Attribute otlp_attribute(const std::string &key, int64_t value) { return {key, value}; }

inline nlohmann::json otlp_json(const Attributes &attributes) {
  auto out = nlohmann::json::array();
  for (auto &a : attributes) {
    nlohmann::json value = a.is_number ? nlohmann::json{{"intValue", std::to_string(a.number)}}
                                       : nlohmann::json{{"stringValue", a.text}};
    out.push_back({{"key", a.key}, {"value", std::move(value)}});
  }
  return out;
}

// One finished span, as OTLP wants it.
struct SpanRecord {
  enum Kind { server = 2, client = 3 };
  std::string trace_id, span_id, parent_span_id, name;
  Kind kind = server;
  uint64_t start_ns = 0, end_ns = 0;
  Attributes attributes;
  bool error = false;
};

struct LogRecord {
  uint64_t time_ns = 0;
  int severity = 9;
  std::string severity_text, body, trace_id, span_id;
  Attributes attributes;
};

// A method the semantic conventions know, else "_OTHER": a client cannot grow the metric
// series with made-up methods.
inline std::string known_method(const std::string &method) {
  static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"};
  for (auto k : known)
    if (method == k) return method;
  return "_OTHER";
}


// What a request's spans and metrics need, kept on its EdgeRequest from the pre-routing step
// to the last body byte.
struct RequestTrace {
  Telemetry *telemetry = nullptr;
  std::string trace_id, parent_span_id, server_span_id, client_span_id, flags;
  std::string method, route, target;
  uint64_t start_ns = 0, client_start_ns = 0, client_end_ns = 0;
  std::chrono::steady_clock::time_point started;
  int status = 0;         // the response's, from the post-routing step
  bool answered = false;  // the post-routing step ran
  Attributes attributes;
  bool sampled() const { return flags.size() == 2 && (std::stoi(flags, nullptr, 16) & 1); }
};

// Names the route (the handler's pattern or the link's path) `req` took.
inline void note_route(const httplib::Request &req, const std::string &route) {
  auto *edge = edge_request(req);
  if (edge && edge->trace) edge->trace->route = route;
}

// The low-cardinality template a span and `http.route` name a route by, never a regular
// expression (OpenTelemetry's HTTP conventions): a path prefix and everything below it is
// `/prefix/*` (`/*` for all paths); a cpp-httplib pattern keeps its literal path up to its
// first regular-expression character, then `*` (`/items/(\d+)` is `/items/*`).
inline std::string route_template(const std::string &pattern) {
  static const char *const kEverythingBelow = "(/.*)?";
  std::string literal = pattern;
  bool below = false;
  if (literal.size() >= std::strlen(kEverythingBelow) &&
      literal.compare(literal.size() - std::strlen(kEverythingBelow), std::string::npos, kEverythingBelow) == 0) {
    literal.resize(literal.size() - std::strlen(kEverythingBelow));
    below = true;
  }
  auto special = literal.find_first_of("\\^$.|?*+()[]{}");
  if (special != std::string::npos) {
    literal.resize(special);
    below = true;
  }
  if (literal.empty() || literal[0] != '/') literal.insert(literal.begin(), '/');
  if (!below) return literal;
  if (literal.back() != '/') literal += '/';
  return literal + "*";
}

// The traceparent a wRPC call to `target` sends: with tracing on, that of a new client span,
// child of the request's server span; empty when tracing is off (the caller falls back).
inline std::string traced_call(EdgeRequest &edge, const std::string &target) {
  auto &t = edge.trace;
  if (!t) return "";
  t->target = target;
  t->client_span_id = random_hex(16);
  t->client_start_ns = unix_nanos();
  return "00-" + t->trace_id + "-" + t->client_span_id + "-" + t->flags;
}

}  // namespace detail

// The OTLP/HTTP JSON exporter and the instruments. Without any signal enabled it does nothing
// and starts no thread. Requests only append to queues and counters under mu_; every export
// (and every log line about one) happens on an exporter thread without mu_ held, so a
// collector that is down, slow or recovering costs dropped telemetry, never a request.
class Telemetry {
public:
  struct Counters {
    uint64_t exported = 0;  // spans, log records and metric batches accepted by the collector
    uint64_t dropped = 0;   // lost to a full queue or a failed export
  };

  Telemetry(OtelConfig config, nlohmann::json resource_attributes, const Logger &logger)
      : config_(std::move(config)), resource_(std::move(resource_attributes)), logger_(logger),
        process_start_ns_(detail::unix_nanos()) {
    grpc_ = config_.protocol == "grpc";
    // The OpenTelemetry SDKs' variable, for runs outside a host (a host clears the environment).
    if (const char *interval = std::getenv("OTEL_METRIC_EXPORT_INTERVAL")) {
      char *end = nullptr;
      long ms = std::strtol(interval, &end, 10);
      if (end && *end == '\0' && ms > 0) config_.metrics_interval = std::chrono::milliseconds(ms);
    }
  }
  ~Telemetry() { stop(); }
  Telemetry(const Telemetry &) = delete;
  Telemetry &operator=(const Telemetry &) = delete;

  bool traces() const { return config_.traces_enabled() && !grpc_; }
  bool metrics() const { return config_.metrics_enabled() && !grpc_; }
  bool logs() const { return config_.logs_enabled() && !grpc_; }
  bool any() const { return traces() || metrics() || logs(); }

  // Starts an exporter thread for each enabled signal.
  void start();
  // Sends what is queued (one attempt each, bounded by export_timeout) and joins.
  void stop();
  Counters counters() const {
    std::lock_guard<std::mutex> lk(mu_);
    return counters_;
  }

  // Request path (see detail::install_request_hooks): the pre-routing step, the post-routing
  // step, and the end of the response (EdgeServer::on_response_done), where the spans end.
  void begin_request(const httplib::Request &req);
  void end_request(const httplib::Request &req, const httplib::Response &res);
  void response_done(detail::EdgeRequest &request, bool whole);
  // A log line (the Logger hook), tied to the request on this thread if any.
  void record_log(Logger::Level level, const std::string &message, const StringMap &fields);

private:
  struct Histogram {
    nlohmann::json attributes;
    uint64_t count = 0;
    double sum = 0;
    std::vector<uint64_t> buckets;
  };
  // Distinct attribute sets (method, status, route, target) kept; requests beyond are not counted.
  static constexpr size_t max_series = 1000;
  static const std::vector<double> &duration_bounds() {
    // seconds, the semantic conventions' advice for http.server.request.duration
    static const std::vector<double> bounds = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                                               0.5,   0.75, 1,     2.5,  5,     7.5, 10};
    return bounds;
  }

  void finish(const std::shared_ptr<detail::RequestTrace> &trace, int status, bool body_ok);
  // Both with mu_ held by the caller only for take_batch.
  template <class Record> void enqueue(std::deque<Record> &queue, Record &&record);
  template <class Record> std::vector<Record> take_batch(std::deque<Record> &queue) const;
  // The exporter threads, one per enabled signal: a collector endpoint that stalls or fails
  // for one signal delays no other, and metrics leave on their interval whatever happens.
  template <class Record>
  void export_queue(const std::string &signal, std::deque<Record> &queue,
                    nlohmann::json (Telemetry::*encode)(std::vector<Record> &) const);
  void export_metrics();
  nlohmann::json envelope(const char *resource_key, const char *scope_key, const char *items_key,
                          nlohmann::json items) const;
  nlohmann::json encode_spans(std::vector<detail::SpanRecord> &spans) const;
  nlohmann::json encode_logs(std::vector<detail::LogRecord> &logs) const;
  nlohmann::json encode_metrics() const;
  bool send(const std::string &signal, const nlohmann::json &body, size_t items, bool final_attempt);

  OtelConfig config_;
  nlohmann::json resource_;
  const Logger &logger_;
  bool grpc_ = false;
  uint64_t process_start_ns_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<detail::SpanRecord> spans_;
  std::deque<detail::LogRecord> logs_;
  std::map<std::string, Histogram> durations_;  // by attribute set
  int64_t active_requests_ = 0;
  Counters counters_;
  bool stopping_ = false;
  bool queue_overflowed_ = false;  // set by a full queue, logged once by an exporter
  bool overflow_reported_ = false;
  std::map<std::string, bool> failing_;  // by signal: failure logged, not yet recovered
  std::vector<std::thread> exporters_;
};

inline void Telemetry::start() {
  if (grpc_ && config_.enable_observability)
    logger_.warn("otel_config asks for OTLP over gRPC; this provider exports OTLP/HTTP only, so telemetry is off");
  if (!any() || !exporters_.empty()) return;
  if (traces()) exporters_.emplace_back([this] { export_queue("traces", spans_, &Telemetry::encode_spans); });
  if (logs()) exporters_.emplace_back([this] { export_queue("logs", logs_, &Telemetry::encode_logs); });
  if (metrics()) exporters_.emplace_back([this] { export_metrics(); });
  logger_.info("exporting telemetry", {{"traces", traces() ? config_.endpoint("traces") : "off"},
                                       {"metrics", metrics() ? config_.endpoint("metrics") : "off"},
                                       {"logs", logs() ? config_.endpoint("logs") : "off"}});
}

inline void Telemetry::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto &exporter : exporters_) exporter.join();
  exporters_.clear();
}

inline void Telemetry::begin_request(const httplib::Request &req) {
  auto *edge = detail::edge_request(req);
  if (!edge) return;  // not behind the provider's edge: nothing to end the span with
  auto &current = edge->trace;
  // Still one of a request on this thread: cpp-httplib >= 0.33 runs the pre-routing step
  // twice for a WebSocket upgrade nothing accepts; or a server without the response_done step.
  if (current) {
    current.reset();
    std::lock_guard<std::mutex> lk(mu_);
    --active_requests_;
  }
  if (!traces() && !metrics()) return;
  auto t = std::make_shared<detail::RequestTrace>();
  t->telemetry = this;
  t->method = detail::known_method(detail::sent_method(req));
  t->start_ns = detail::unix_nanos();
  t->started = std::chrono::steady_clock::now();
  auto incoming = req.get_header_value("traceparent");
  if (detail::valid_traceparent(incoming)) {
    t->trace_id = incoming.substr(3, 32);
    t->parent_span_id = incoming.substr(36, 16);
    t->flags = incoming.substr(53, 2);
  } else {
    t->trace_id = detail::random_hex(32);
    t->flags = "01";
  }
  t->server_span_id = detail::random_hex(16);
  current = t;
  std::lock_guard<std::mutex> lk(mu_);
  ++active_requests_;
}

inline void Telemetry::end_request(const httplib::Request &req, const httplib::Response &res) {
  auto *edge = detail::edge_request(req);
  if (!edge || !edge->trace) return;
  auto &trace = edge->trace;
  std::string host = detail::without_port(req.get_header_value("Host"));
  trace->attributes = {detail::otlp_attribute("http.request.method", trace->method),
                       detail::otlp_attribute("url.path", req.path),
                       detail::otlp_attribute("url.scheme", edge->over_tls ? "https" : "http"),
                       detail::otlp_attribute("server.address", host.empty() ? req.local_addr : host),
                       detail::otlp_attribute("server.port", static_cast<int64_t>(req.local_port)),
                       detail::otlp_attribute("http.response.status_code", static_cast<int64_t>(res.status))};
  if (trace->method != detail::sent_method(req))
    trace->attributes.push_back(detail::otlp_attribute("http.request.method_original", detail::sent_method(req)));
  if (!trace->route.empty()) trace->attributes.push_back(detail::otlp_attribute("http.route", trace->route));
  if (!trace->target.empty())
    trace->attributes.push_back(detail::otlp_attribute("wasmcloud.component.id", trace->target));
  if (req.has_header("User-Agent"))
    trace->attributes.push_back(detail::otlp_attribute("user_agent.original", req.get_header_value("User-Agent")));
  trace->client_end_ns = detail::unix_nanos();  // the call's response head is here
  // The body, streamed or not, is still to be written: the server span ends with its last
  // byte, in response_done.
  trace->status = res.status;
  trace->answered = true;
}

inline void Telemetry::response_done(detail::EdgeRequest &edge, bool whole) {
  auto trace = std::move(edge.trace);
  edge.trace.reset();
  if (!trace) return;
  if (trace->answered) return finish(trace, trace->status, whole);
  // No response was written for it (cpp-httplib gave up before its post-routing step).
  std::lock_guard<std::mutex> lk(mu_);
  --active_requests_;
}

inline void Telemetry::finish(const std::shared_ptr<detail::RequestTrace> &trace, int status, bool body_ok) {
  uint64_t end_ns = detail::unix_nanos();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - trace->started).count();
  if (traces() && trace->sampled()) {
    if (!trace->client_span_id.empty()) {
      detail::SpanRecord client;
      client.trace_id = trace->trace_id;
      client.span_id = trace->client_span_id;
      client.parent_span_id = trace->server_span_id;
      client.name = "wrpc:http/incoming-handler@0.1.0.handle";
      client.kind = detail::SpanRecord::client;
      client.start_ns = trace->client_start_ns;
      client.end_ns = trace->client_end_ns;
      client.attributes = {detail::otlp_attribute("rpc.system", "wrpc"),
                           detail::otlp_attribute("rpc.service", "wrpc:http/incoming-handler@0.1.0"),
                           detail::otlp_attribute("rpc.method", "handle"),
                           detail::otlp_attribute("wasmcloud.component.id", trace->target),
                           detail::otlp_attribute("http.response.status_code", static_cast<int64_t>(status))};
      client.error = status >= 500;
      enqueue(spans_, std::move(client));
    }
    detail::SpanRecord server;
    server.trace_id = trace->trace_id;
    server.span_id = trace->server_span_id;
    server.parent_span_id = trace->parent_span_id;
    server.name = trace->route.empty() ? trace->method : trace->method + " " + trace->route;
    server.kind = detail::SpanRecord::server;
    server.start_ns = trace->start_ns;
    server.end_ns = end_ns;
    server.attributes = trace->attributes;
    server.error = status >= 500 || (!body_ok && status < 400);  // a refusal may close on purpose
    enqueue(spans_, std::move(server));
  }
  std::lock_guard<std::mutex> lk(mu_);
  --active_requests_;
  if (!metrics()) return;
  detail::Attributes series = {detail::otlp_attribute("http.request.method", trace->method),
                                detail::otlp_attribute("http.response.status_code", static_cast<int64_t>(status))};
  if (!trace->route.empty()) series.push_back(detail::otlp_attribute("http.route", trace->route));
  if (!trace->target.empty()) series.push_back(detail::otlp_attribute("wasmcloud.component.id", trace->target));
  auto attributes = detail::otlp_json(series);
  auto key = attributes.dump();
  if (durations_.size() >= max_series && !durations_.count(key)) {
    ++counters_.dropped;
    return;
  }
  auto &h = durations_[key];
  if (h.buckets.empty()) {
    h.attributes = attributes;
    h.buckets.assign(duration_bounds().size() + 1, 0);
  }
  ++h.count;
  h.sum += seconds;
  auto bucket = std::lower_bound(duration_bounds().begin(), duration_bounds().end(), seconds) - duration_bounds().begin();
  ++h.buckets[static_cast<size_t>(bucket)];
}

template <class Record> void Telemetry::enqueue(std::deque<Record> &queue, Record &&record) {
  std::lock_guard<std::mutex> lk(mu_);
  if (queue.size() >= config_.queue_limit) {
    ++counters_.dropped;
    queue_overflowed_ = true;
    return;
  }
  queue.push_back(std::move(record));
  if (queue.size() >= config_.batch_size) cv_.notify_all();
}

template <class Record> std::vector<Record> Telemetry::take_batch(std::deque<Record> &queue) const {
  std::vector<Record> batch;
  while (!queue.empty() && batch.size() < config_.batch_size) {
    batch.push_back(std::move(queue.front()));
    queue.pop_front();
  }
  return batch;
}

inline void Telemetry::record_log(Logger::Level level, const std::string &message, const StringMap &fields) {
  if (!logs()) return;
  static const int severities[] = {1, 5, 9, 13, 17, 21, 0};  // OTLP SeverityNumber per Logger::Level
  detail::LogRecord record;
  record.time_ns = detail::unix_nanos();
  record.severity = severities[static_cast<int>(level)];
  record.severity_text = Logger::level_name(level);
  record.body = message;
  for (auto &f : fields) record.attributes.push_back(detail::otlp_attribute(f.first, f.second));
  auto *edge = detail::serving_on_this_thread();
  if (auto *t = edge ? edge->trace.get() : nullptr) {
    record.trace_id = t->trace_id;
    record.span_id = t->client_span_id.empty() ? t->server_span_id : t->client_span_id;
  }
  enqueue(logs_, std::move(record));
}

inline nlohmann::json Telemetry::envelope(const char *resource_key, const char *scope_key, const char *items_key,
                                          nlohmann::json items) const {
  nlohmann::json scope = {{"scope", {{"name", "wrpc-http-provider"}, {"version", WRPC_HTTP_VERSION}}},
                          {items_key, std::move(items)}};
  return {{resource_key, nlohmann::json::array({{{"resource", {{"attributes", resource_}}},
                                                 {scope_key, nlohmann::json::array({std::move(scope)})}}})}};
}

inline nlohmann::json Telemetry::encode_spans(std::vector<detail::SpanRecord> &spans) const {
  auto items = nlohmann::json::array();
  for (auto &s : spans) {
    nlohmann::json span = {{"traceId", s.trace_id},
                           {"spanId", s.span_id},
                           {"name", s.name},
                           {"kind", static_cast<int>(s.kind)},
                           {"startTimeUnixNano", std::to_string(s.start_ns)},
                           {"endTimeUnixNano", std::to_string(s.end_ns)},
                           {"attributes", detail::otlp_json(s.attributes)},
                           {"status", {{"code", s.error ? 2 : 0}}}};
    if (!s.parent_span_id.empty()) span["parentSpanId"] = s.parent_span_id;
    items.push_back(std::move(span));
  }
  return envelope("resourceSpans", "scopeSpans", "spans", std::move(items));
}

inline nlohmann::json Telemetry::encode_logs(std::vector<detail::LogRecord> &logs) const {
  auto items = nlohmann::json::array();
  for (auto &l : logs) {
    nlohmann::json record = {{"timeUnixNano", std::to_string(l.time_ns)},
                             {"observedTimeUnixNano", std::to_string(l.time_ns)},
                             {"severityNumber", l.severity},
                             {"severityText", l.severity_text},
                             {"body", {{"stringValue", l.body}}},
                             {"attributes", detail::otlp_json(l.attributes)}};
    if (!l.trace_id.empty()) {
      record["traceId"] = l.trace_id;
      record["spanId"] = l.span_id;
    }
    items.push_back(std::move(record));
  }
  return envelope("resourceLogs", "scopeLogs", "logRecords", std::move(items));
}

// Cumulative since the process started, as OTLP's default temporality.
inline nlohmann::json Telemetry::encode_metrics() const {
  std::string start = std::to_string(process_start_ns_), now = std::to_string(detail::unix_nanos());
  auto durations = nlohmann::json::array(), counts = nlohmann::json::array();
  std::lock_guard<std::mutex> lk(mu_);
  for (auto &entry : durations_) {
    auto &h = entry.second;
    auto buckets = nlohmann::json::array();
    for (auto b : h.buckets) buckets.push_back(std::to_string(b));
    durations.push_back({{"attributes", h.attributes},
                         {"startTimeUnixNano", start},
                         {"timeUnixNano", now},
                         {"count", std::to_string(h.count)},
                         {"sum", h.sum},
                         {"bucketCounts", std::move(buckets)},
                         {"explicitBounds", duration_bounds()}});
    counts.push_back({{"attributes", h.attributes},
                      {"startTimeUnixNano", start},
                      {"timeUnixNano", now},
                      {"asInt", std::to_string(h.count)}});
  }
  nlohmann::json active = {{"startTimeUnixNano", start}, {"timeUnixNano", now},
                           {"asInt", std::to_string(active_requests_)}};
  auto metrics = nlohmann::json::array(
      {{{"name", "http.server.request.duration"},
        {"description", "Duration of HTTP server requests"},
        {"unit", "s"},
        {"histogram", {{"aggregationTemporality", 2}, {"dataPoints", std::move(durations)}}}},
       {{"name", "http.server.request.count"},
        {"description", "HTTP server requests served"},
        {"unit", "{request}"},
        {"sum", {{"aggregationTemporality", 2}, {"isMonotonic", true}, {"dataPoints", std::move(counts)}}}},
       {{"name", "http.server.active_requests"},
        {"description", "HTTP server requests in flight"},
        {"unit", "{request}"},
        {"sum",
         {{"aggregationTemporality", 2}, {"isMonotonic", false}, {"dataPoints", nlohmann::json::array({active})}}}}});
  return envelope("resourceMetrics", "scopeMetrics", "metrics", std::move(metrics));
}

// One POST, retried with backoff on connection failures and on the statuses OTLP calls
// retryable (429, 502, 503, 504). A failure is logged once until the collector recovers.
inline bool Telemetry::send(const std::string &signal, const nlohmann::json &body, size_t items, bool final_attempt) {
  auto url = detail::split_url(config_.endpoint(signal));
  if (final_attempt) {
    // At shutdown a collector that is already failing is not waited for again.
    std::lock_guard<std::mutex> lk(mu_);
    if (failing_[signal]) {
      counters_.dropped += items;
      return false;
    }
  }
  std::string payload = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string failure;
  for (int attempt = 0; attempt <= (final_attempt ? 0 : config_.retries); ++attempt) {
    if (attempt > 0) {
      std::unique_lock<std::mutex> lk(mu_);
      if (cv_.wait_for(lk, std::chrono::milliseconds(100 << attempt), [&] { return stopping_; })) break;
    }
    try {
      httplib::Client client(url.first);
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
      // cpp-httplib takes one CA file: the first of additional_ca_paths.
      if (!config_.additional_ca_paths.empty()) client.set_ca_cert_path(config_.additional_ca_paths.front().c_str());
#endif
      auto timeout = config_.export_timeout;
      client.set_connection_timeout(timeout);
      client.set_read_timeout(timeout);
      client.set_write_timeout(timeout);
      auto res = client.Post(url.second.empty() ? "/" : url.second.c_str(), payload, "application/json");
      if (res && res->status >= 200 && res->status < 300) {
        bool recovered;
        {
          std::lock_guard<std::mutex> lk(mu_);
          counters_.exported += items;
          recovered = failing_[signal];
          failing_[signal] = false;
        }
        // Logged without mu_: the log hook exports log records, which takes mu_.
        if (recovered) logger_.info("telemetry export recovered", {{"signal", signal}});
        return true;
      }
      failure = res ? "status " + std::to_string(res->status) : httplib::to_string(res.error());
      if (res && res->status != 429 && res->status != 502 && res->status != 503 && res->status != 504) break;
    } catch (const std::exception &e) {
      failure = e.what();
      break;
    }
  }
  bool first;
  {
    std::lock_guard<std::mutex> lk(mu_);
    counters_.dropped += items;
    first = !failing_[signal];
    failing_[signal] = true;
  }
  if (first)
    logger_.warn("telemetry export failed; dropping " + signal + " until the collector answers",
                 {{"endpoint", config_.endpoint(signal)}, {"error", failure}});
  return false;
}

template <class Record>
void Telemetry::export_queue(const std::string &signal, std::deque<Record> &queue,
                             nlohmann::json (Telemetry::*encode)(std::vector<Record> &) const) {
  size_t backlog = 0;  // the most records waiting since the queue was last empty
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    cv_.wait_for(lk, config_.export_interval, [&] { return stopping_ || queue.size() >= config_.batch_size; });
    bool stopping = stopping_;
    backlog = std::max(backlog, queue.size());
    auto batch = take_batch(queue);
    bool more = !queue.empty();
    bool report_overflow = queue_overflowed_ && !overflow_reported_;
    if (report_overflow) overflow_reported_ = true;
    lk.unlock();
    if (report_overflow)
      logger_.warn("telemetry queue full: dropping telemetry", {{"queue_limit", std::to_string(config_.queue_limit)}});
    // At shutdown everything left gets one attempt, so stopping is bounded.
    if (!batch.empty()) send(signal, (this->*encode)(batch), batch.size(), stopping);
    if (!more && backlog > config_.batch_size) {
      batch = {};
      detail::release_free_heap();
      backlog = 0;
    }
    lk.lock();
    if (stopping && !more) return;
  }
}

inline void Telemetry::export_metrics() {
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    bool stopping = cv_.wait_for(lk, config_.metrics_interval, [&] { return stopping_; });
    lk.unlock();
    send("metrics", encode_metrics(), 1, stopping);
    lk.lock();
    if (stopping) return;
  }
}

}  // namespace wrpc_http

// ---- HTTP policies ----
//
// What wasmCloud's Rust HTTP server provider does around every request, with its config keys:
// CORS (preflights answered here, allow/expose headers on the rest), a default Cache-Control
// and read-only mode. One step before routing and one after (detail::install_request_hooks).

namespace wrpc_http {

// CORS of a listener; an empty list means "any" (the Rust provider's meaning).
struct CorsPolicy {
  std::vector<std::string> allowed_origins;  // "http[s]://host[:port]"
  std::vector<std::string> allowed_headers = {"accept", "accept-language", "content-type", "content-language"};
  std::vector<std::string> allowed_methods = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"};
  std::vector<std::string> exposed_headers;
  uint64_t max_age_secs = 300;

  bool allows_origin(const std::string &origin) const {
    return allowed_origins.empty() ||
           std::find(allowed_origins.begin(), allowed_origins.end(), origin) != allowed_origins.end();
  }
};

// The keys cors_*, cache_control and readonly_mode of a listener's settings.
struct HttpPolicy {
  CorsPolicy cors;
  std::string cache_control;  // added to 2xx/3xx responses that have none
  bool readonly_mode = false;  // only GET and HEAD

  // `config` has lower-case keys (detail::lower_keys). Throws std::invalid_argument naming the key.
  static HttpPolicy from_config(const StringMap &config);
  // Changes when any field changes (a listener with a fixed policy is reopened).
  std::string signature() const;
};

namespace detail {

// Defined with the HTTP bridge.
inline uint64_t parse_unsigned(const std::string &key, const std::string &text);
inline bool parse_flag(const std::string &key, const std::string &text);
inline std::string lower(std::string s);
inline bool valid_header_value(const std::string &value);
inline void write_text(httplib::Response &res, int status, const std::string &text);

// Config keys are case-insensitive, as in the Rust provider; two keys that differ only in
// case are refused rather than one picked at random.
inline StringMap lower_keys(const StringMap &config) {
  StringMap out;
  for (auto &kv : config) {
    std::string key = kv.first;
    for (auto &c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (!out.emplace(key, kv.second).second)
      throw std::invalid_argument("config key '" + kv.first + "' is given twice (keys are case-insensitive)");
  }
  return out;
}

// A JSON array of strings, as the Rust provider takes list values: '["a", "b"]'.
inline std::vector<std::string> parse_json_list(const std::string &key, const std::string &text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception &) {
    throw std::invalid_argument("config '" + key + "' must be a JSON array of strings, got '" + text + "'");
  }
  if (!j.is_array()) throw std::invalid_argument("config '" + key + "' must be a JSON array of strings");
  std::vector<std::string> out;
  for (auto &item : j) {
    if (!item.is_string()) throw std::invalid_argument("config '" + key + "' must hold strings only");
    out.push_back(item.get<std::string>());
  }
  return out;
}

// "http[s]://host[:port]" with at most a trailing "/" (dropped): what a browser sends as Origin.
inline std::string parse_cors_origin(const std::string &origin) {
  auto scheme_end = origin.find("://");
  std::string scheme = scheme_end == std::string::npos ? "" : origin.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https")
    throw std::invalid_argument("config 'cors_allowed_origins': '" + origin + "' must start with http:// or https://");
  std::string rest = origin.substr(scheme_end + 3);
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.empty() || rest.find_first_of("/?#@ \t\r\n") != std::string::npos)
    throw std::invalid_argument("config 'cors_allowed_origins': '" + origin + "' must be scheme://host[:port]");
  return scheme + "://" + rest;
}

// `listen_address` (the Rust provider's name) or its alias `default_address`, from lower-case
// keys; "" when neither is set.
inline std::string listen_address(const StringMap &config) {
  auto named = config.find("listen_address"), alias = config.find("default_address");
  if (named != config.end() && alias != config.end() && named->second != alias->second)
    throw std::invalid_argument("config 'listen_address' and 'default_address' disagree");
  if (named != config.end()) return named->second;
  return alias != config.end() ? alias->second : "";
}

inline std::string join(const std::vector<std::string> &items, const char *separator = ", ") {
  std::string out;
  for (auto &item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

}  // namespace detail

inline HttpPolicy HttpPolicy::from_config(const StringMap &config) {
  HttpPolicy p;
  auto get = [&](const char *key) -> const std::string * {
    auto it = config.find(key);
    return it == config.end() ? nullptr : &it->second;
  };
  auto header_names = [](const char *key, const std::string &text) {
    auto names = detail::parse_json_list(key, text);
    for (auto &n : names) {
      if (!detail::http1::is_token(n))
        throw std::invalid_argument(std::string("config '") + key + "': bad header name '" + n + "'");
      for (auto &c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return names;
  };
  if (auto v = get("cors_allowed_origins")) {
    p.cors.allowed_origins.clear();
    for (auto &origin : detail::parse_json_list("cors_allowed_origins", *v))
      p.cors.allowed_origins.push_back(detail::parse_cors_origin(origin));
  }
  if (auto v = get("cors_allowed_headers")) p.cors.allowed_headers = header_names("cors_allowed_headers", *v);
  if (auto v = get("cors_exposed_headers")) p.cors.exposed_headers = header_names("cors_exposed_headers", *v);
  if (auto v = get("cors_allowed_methods")) {
    p.cors.allowed_methods = detail::parse_json_list("cors_allowed_methods", *v);
    for (auto &m : p.cors.allowed_methods)
      if (!detail::http1::is_token(m))
        throw std::invalid_argument("config 'cors_allowed_methods': bad method '" + m + "'");
  }
  if (auto v = get("cors_max_age_secs")) p.cors.max_age_secs = detail::parse_unsigned("cors_max_age_secs", *v);
  if (auto v = get("cache_control")) {
    if (v->empty() || v->find_first_of("\r\n") != std::string::npos || v->find('\0') != std::string::npos)
      throw std::invalid_argument("config 'cache_control' is not a valid header value");
    p.cache_control = *v;
  }
  if (auto v = get("readonly_mode")) p.readonly_mode = detail::parse_flag("readonly_mode", *v);
  return p;
}

inline std::string HttpPolicy::signature() const {
  return detail::join(cors.allowed_origins, " ") + "|" + detail::join(cors.allowed_headers, " ") + "|" +
         detail::join(cors.allowed_methods, " ") + "|" + detail::join(cors.exposed_headers, " ") + "|" +
         std::to_string(cors.max_age_secs) + "|" + cache_control + "|" + (readonly_mode ? "ro" : "rw");
}

namespace detail {

inline bool is_preflight(const httplib::Request &req) {
  return req.method == "OPTIONS" && req.has_header("Origin") && req.has_header("Access-Control-Request-Method");
}

// Adds `name` to the response's Vary list (a component's own Vary is kept).
inline void add_vary(httplib::Response &res, const std::string &names) {
  std::string vary = res.get_header_value("Vary");
  if (vary == "*") return;
  if (lower(vary).find(lower(names)) != std::string::npos) return;
  res.headers.erase("Vary");
  res.set_header("Vary", vary.empty() ? names : vary + ", " + names);
}

// The provider owns CORS: a component's own Access-Control-* answers are replaced.
inline void set_allowed_origin(const CorsPolicy &cors, const std::string &origin, httplib::Response &res) {
  for (auto name : {"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers",
                    "Access-Control-Allow-Methods", "Access-Control-Allow-Headers", "Access-Control-Max-Age"})
    res.headers.erase(name);
  if (cors.allowed_origins.empty()) {
    res.set_header("Access-Control-Allow-Origin", "*");
  } else {
    // A listed origin is trusted with credentials; browsers refuse credentials with "*".
    res.set_header("Access-Control-Allow-Origin", origin);
    res.set_header("Access-Control-Allow-Credentials", "true");
  }
}

// A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered here,
// never forwarded. An origin that is not allowed gets no Access-Control-* headers, so the
// browser refuses the actual request. Returns whether it answered.
inline bool answer_preflight(const HttpPolicy &policy, const httplib::Request &req, httplib::Response &res) {
  if (!is_preflight(req)) return false;
  const auto &cors = policy.cors;
  res.status = 200;
  add_vary(res, "Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
  auto origin = req.get_header_value("Origin");
  if (!cors.allows_origin(origin)) return true;
  set_allowed_origin(cors, origin, res);
  // "Any" echoes what was asked: a literal "*" means nothing to a credentialed request.
  res.set_header("Access-Control-Allow-Methods", cors.allowed_methods.empty()
                                                     ? req.get_header_value("Access-Control-Request-Method")
                                                     : join(cors.allowed_methods));
  std::string asked_headers = req.get_header_value("Access-Control-Request-Headers");
  std::string headers = cors.allowed_headers.empty() ? asked_headers : join(cors.allowed_headers);
  if (!headers.empty() && valid_header_value(headers)) res.set_header("Access-Control-Allow-Headers", headers);
  res.set_header("Access-Control-Max-Age", std::to_string(cors.max_age_secs));
  return true;
}

// readonly_mode: anything but GET and HEAD gets 405 with `Allow`, before its body is read
// (the edge closes the connection after the provider's own errors).
inline bool readonly_refusal(const HttpPolicy &policy, const httplib::Request &req, httplib::Response &res) {
  if (!policy.readonly_mode || req.method == "GET" || req.method == "HEAD") return false;
  res.set_header("Allow", "GET, HEAD");
  write_text(res, 405, "only GET and HEAD allowed in read-only mode");
  return true;
}

// After routing: CORS headers for an allowed Origin, Vary: Origin, and cache_control on
// successful responses that have no Cache-Control (error answers are never made cacheable).
inline void decorate_response(const HttpPolicy &policy, const httplib::Request &req, httplib::Response &res) {
  if (is_preflight(req)) return;
  add_vary(res, "Origin");
  auto origin = req.get_header_value("Origin");
  if (!origin.empty() && policy.cors.allows_origin(origin)) {
    set_allowed_origin(policy.cors, origin, res);
    res.set_header("Access-Control-Expose-Headers",
                   policy.cors.exposed_headers.empty() ? "*" : join(policy.cors.exposed_headers));
  }
  if (!policy.cache_control.empty() && res.status >= 200 && res.status < 400 && !res.has_header("Cache-Control"))
    res.set_header("Cache-Control", policy.cache_control);
}

// Installs the policies and the telemetry around every request of `server`. `policy` is read
// per request, so config changes apply from the next one.
inline void install_request_hooks(EdgeServer &server, std::function<HttpPolicy()> policy, Telemetry &telemetry,
                                  const Logger &logger) {
  server.around_requests([policy, &telemetry](const httplib::Request &req, httplib::Response &res) {
    telemetry.begin_request(req);
    auto p = policy();
    return answer_preflight(p, req, res) || readonly_refusal(p, req, res);
  },
  // cpp-httplib calls this outside its exception handling: nothing may escape.
  [policy, &telemetry, &logger](const httplib::Request &req, httplib::Response &res) {
    try {
      decorate_response(policy(), req, res);
    } catch (const std::exception &e) {
      logger.warn(std::string("response headers not decorated: ") + e.what());
    }
    try {
      telemetry.end_request(req, res);
    } catch (const std::exception &e) {
      logger.warn(std::string("request not traced: ") + e.what());
    }
  });
  server.on_response_done([&telemetry, &logger](detail::EdgeRequest &request, bool whole) {
    try {
      telemetry.response_done(request, whole);
    } catch (const std::exception &e) {
      logger.warn(std::string("request not traced: ") + e.what());
    }
  });
}

}  // namespace detail
}  // namespace wrpc_http

// ---- HTTP bridge ----
//
// HTTP requests in (cpp-httplib's blocking thread pool), wRPC `handle` calls out.

namespace wrpc_http {

// Settings of one HTTP listener, from the provider config and a source link's
// source_config (which wins). Keys are documented in the README.
struct HttpSettings {
  std::string address = "0.0.0.0:8080";
  std::chrono::milliseconds timeout{5000};  // until the component's response head
  size_t max_content_len = WRPC_HTTP_DEFAULT_MAX_CONTENT_LEN;
  std::chrono::milliseconds body_idle_timeout{WRPC_HTTP_BODY_IDLE_TIMEOUT_MS};
  std::chrono::milliseconds head_timeout{WRPC_HTTP_HEAD_TIMEOUT_MS};  // whole request head, else 408
  // Both set: the listener serves HTTPS with this certificate chain and key (PEM files).
  std::string tls_cert_file, tls_priv_key_file;
  HttpPolicy policy;  // CORS, cache_control, readonly_mode
  size_t max_target_bytes = WRPC_HTTP_MAX_TARGET_BYTES;  // longest component id a director may pick
  bool keep_alive = true;  // disable_keepalive: false here, each connection carries one request
  // `http2` (false: HTTP/1.1 only), `h2_max_concurrent_streams`, `h2_max_header_list_size`,
  // `h2_idle_timeout_ms`, `h2_settings_timeout_ms`; the rest by macro (WRPC_HTTP_H2_*).
  Http2Options http2;

  // Throws std::invalid_argument naming the bad key.
  static HttpSettings from_config(const StringMap &config, const StringMap &overrides = {});
};

namespace detail {

inline bool parse_flag(const std::string &key, const std::string &text) {
  std::string flag = lower(text);
  if (flag != "true" && flag != "false")
    throw std::invalid_argument("config '" + key + "' must be true or false, got '" + text + "'");
  return flag == "true";
}

inline uint64_t parse_unsigned(const std::string &key, const std::string &text) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("config '" + key + "' must be a whole number, got '" + text + "'");
  return std::stoull(text);
}

// "1048576", "512K", "100M", "1G" (binary multiples; a trailing "B"/"iB" is allowed).
inline size_t parse_size(const std::string &key, std::string text) {
  for (auto &c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (text.size() > 2 && text.compare(text.size() - 2, 2, "IB") == 0) text.resize(text.size() - 2);
  else if (text.size() > 1 && text.back() == 'B') text.pop_back();
  uint64_t multiplier = 1;
  if (!text.empty()) {
    switch (text.back()) {
    case 'K': multiplier = 1ull << 10; break;
    case 'M': multiplier = 1ull << 20; break;
    case 'G': multiplier = 1ull << 30; break;
    default: break;
    }
    if (multiplier != 1) text.pop_back();
  }
  return static_cast<size_t>(parse_unsigned(key, text) * multiplier);
}

// "host:port", "[v6]:port" or ":port". Returns {host, port}.
inline std::pair<std::string, int> parse_address(const std::string &address) {
  std::string host, port;
  if (!address.empty() && address[0] == '[') {
    auto close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':')
      throw std::invalid_argument("bad address '" + address + "'");
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    auto colon = address.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("address '" + address + "' has no port");
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  if (host.empty()) host = "0.0.0.0";
  auto number = parse_unsigned("address", port);
  if (number > 65535) throw std::invalid_argument("bad port in address '" + address + "'");
  return {host, static_cast<int>(number)};
}

}  // namespace detail

inline HttpSettings HttpSettings::from_config(const StringMap &config, const StringMap &overrides) {
  StringMap merged = detail::lower_keys(config);
  for (auto &kv : detail::lower_keys(overrides)) merged[kv.first] = kv.second;
  HttpSettings s;
  s.policy = HttpPolicy::from_config(merged);
  // The Rust provider's listen_address (alias default_address) is where a listener without
  // its own `address` listens.
  if (!merged.count("address")) {
    auto fallback = detail::listen_address(merged);
    if (!fallback.empty()) merged["address"] = fallback;
  }
  auto get = [&](const char *key) -> const std::string * {
    auto it = merged.find(key);
    return it == merged.end() ? nullptr : &it->second;
  };
  if (auto v = get("address")) {
    detail::parse_address(*v);  // validate now, not at bind time
    s.address = *v;
  }
  if (auto v = get("timeout_ms")) s.timeout = std::chrono::milliseconds(detail::parse_unsigned("timeout_ms", *v));
  if (auto v = get("max_content_len")) s.max_content_len = detail::parse_size("max_content_len", *v);
  if (auto v = get("body_idle_timeout_ms"))
    s.body_idle_timeout = std::chrono::milliseconds(detail::parse_unsigned("body_idle_timeout_ms", *v));
  if (auto v = get("head_timeout_ms"))
    s.head_timeout = std::chrono::milliseconds(detail::parse_unsigned("head_timeout_ms", *v));
  if (auto v = get("disable_keepalive")) s.keep_alive = !detail::parse_flag("disable_keepalive", *v);
  if (auto v = get("http2")) {
    s.http2.only = detail::lower(*v) == "only";
    s.http2.enabled = s.http2.only || detail::parse_flag("http2", *v);
  }
  if (auto v = get("h2_max_concurrent_streams")) {
    auto n = detail::parse_unsigned("h2_max_concurrent_streams", *v);
    if (n == 0 || n > 100000) throw std::invalid_argument("config 'h2_max_concurrent_streams' must be 1 to 100000");
    s.http2.max_concurrent_streams = static_cast<uint32_t>(n);
  }
  if (auto v = get("h2_max_header_list_size")) s.http2.max_header_list_bytes = detail::parse_size("h2_max_header_list_size", *v);
  if (auto v = get("h2_idle_timeout_ms"))
    s.http2.idle_timeout = std::chrono::milliseconds(detail::parse_unsigned("h2_idle_timeout_ms", *v));
  if (auto v = get("h2_settings_timeout_ms"))
    s.http2.settings_timeout = std::chrono::milliseconds(detail::parse_unsigned("h2_settings_timeout_ms", *v));
  if (auto v = get("tls_cert_file")) s.tls_cert_file = *v;
  if (auto v = get("tls_priv_key_file")) s.tls_priv_key_file = *v;
  if (s.tls_cert_file.empty() != s.tls_priv_key_file.empty())
    throw std::invalid_argument("config 'tls_cert_file' and 'tls_priv_key_file' go together");
  return s;
}

// Picks the component for a request (the Go example's WithDirector).
using Director = std::function<std::string(const httplib::Request &)>;

// The Go example's WithSingleTarget.
inline Director single_target(std::string target) {
  return [target](const httplib::Request &) { return target; };
}

// The routes of a listener, as Provider::serve hands them out: cpp-httplib's route
// registration by method and pattern, and nothing else of the server. Its error, pre- and
// post-routing handlers and its settings stay the edge's own, out of a route's reach. A thin
// handle on the server: pass it by value.
class Router {
public:
  using Handler = httplib::Server::Handler;
  using HandlerWithContentReader = httplib::Server::HandlerWithContentReader;

  Router(httplib::Server &server) : server_(server) {}  // NOLINT: a Server is a Router

  Router &Get(const std::string &pattern, Handler handler) { return add(&httplib::Server::Get, pattern, handler); }
  Router &Options(const std::string &pattern, Handler handler) {
    return add(&httplib::Server::Options, pattern, handler);
  }
  // A plain Handler gets the body read whole into req.body first (up to max_content_len); a
  // HandlerWithContentReader streams it.
  Router &Post(const std::string &pattern, Handler handler) { return add(&httplib::Server::Post, pattern, handler); }
  Router &Post(const std::string &pattern, HandlerWithContentReader handler) {
    return add(&httplib::Server::Post, pattern, handler);
  }
  Router &Put(const std::string &pattern, Handler handler) { return add(&httplib::Server::Put, pattern, handler); }
  Router &Put(const std::string &pattern, HandlerWithContentReader handler) {
    return add(&httplib::Server::Put, pattern, handler);
  }
  Router &Patch(const std::string &pattern, Handler handler) {
    return add(&httplib::Server::Patch, pattern, handler);
  }
  Router &Patch(const std::string &pattern, HandlerWithContentReader handler) {
    return add(&httplib::Server::Patch, pattern, handler);
  }
  Router &Delete(const std::string &pattern, Handler handler) {
    return add(&httplib::Server::Delete, pattern, handler);
  }
  Router &Delete(const std::string &pattern, HandlerWithContentReader handler) {
    return add(&httplib::Server::Delete, pattern, handler);
  }

private:
  template <class H>
  Router &add(httplib::Server &(httplib::Server::*method)(const std::string &, H), const std::string &pattern,
              H handler) {
    (server_.*method)(pattern, std::move(handler));
    return *this;
  }

  httplib::Server &server_;
};

namespace detail {

// Registers routes under `pattern` for every method cpp-httplib routes: `bodiless` for GET
// (which serves HEAD too) and OPTIONS, `with_body` for POST, PUT, PATCH and DELETE. A plain
// Handler as `with_body` gets the body read by cpp-httplib first; a HandlerWithContentReader
// leaves the body to the route.
template <class BodyHandler>
void route_every_method(Router routes, const std::string &pattern, const httplib::Server::Handler &bodiless,
                        const BodyHandler &with_body) {
  routes.Get(pattern, bodiless);
  routes.Options(pattern, bodiless);
  routes.Post(pattern, with_body);
  routes.Put(pattern, with_body);
  routes.Patch(pattern, with_body);
  routes.Delete(pattern, with_body);
}

}  // namespace detail

// Registers `handler` under `pattern` for every method cpp-httplib routes, as a route the
// provider answers itself: the handler sees the request head, never its body. A body is not
// stored: the edge reads it and drops it as it arrives (still framed, still bounded by
// max_content_len) while the answer is written.
inline void route_all(Router routes, const std::string &pattern, const httplib::Server::Handler &handler) {
  auto routed = [route = detail::route_template(pattern), handler](const httplib::Request &req, httplib::Response &res) {
    detail::note_route(req, route);
    handler(req, res);
  };
  auto body_left_to_edge = [routed](const httplib::Request &req, httplib::Response &res,
                                    const httplib::ContentReader &) { routed(req, res); };
  detail::route_every_method(routes, pattern, routed, body_left_to_edge);
}

namespace detail {

// The last routes of a provider listener: a request with a body that no route took is
// answered 404 without cpp-httplib storing the body first (its own fallback reads it whole).
inline void answer_unrouted(httplib::Server &server) {
  auto not_found = [](const httplib::Request &, httplib::Response &res, const httplib::ContentReader &) {
    write_text(res, 404, "not found");
  };
  server.Post(".*", not_found);
  server.Put(".*", not_found);
  server.Patch(".*", not_found);
  server.Delete(".*", not_found);
}

// Hop-by-hop headers (RFC 9110 7.6.1) and those wasi:http forbids: they describe this
// connection, not the message, so they are never forwarded in either direction.
inline bool is_hop_by_hop(const std::string &lower_name) {
  static const char *names[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                "te",         "trailer",    "upgrade",          "http2-settings",
                                "host",       "content-length", "expect"};
  for (auto n : names)
    if (lower_name == n) return true;
  return false;
}

// The fields as the client sent them, for wasi:http: each name once, lower-cased, with all
// its values in arrival order; connection-specific fields are left out.
inline Fields forwarded_fields(const http1::FieldList &sent) {
  Fields fields;
  for (auto &f : sent) {
    std::string name = lower(f.first);
    if (is_hop_by_hop(name)) continue;
    auto same = std::find_if(fields.begin(), fields.end(), [&](const Fields::value_type &g) { return g.first == name; });
    if (same != fields.end()) same->second.push_back(f.second);
    else fields.push_back({name, {f.second}});
  }
  return fields;
}

inline bool valid_header_name(const std::string &name) {
  if (name.empty()) return false;
  for (unsigned char c : name)
    if (c <= ' ' || c >= 0x7f || c == ':') return false;
  return true;
}

// A component's field value goes out only without control bytes (HTAB aside).
inline bool valid_header_value(const std::string &value) {
  for (unsigned char c : value)
    if (!http1::is_field_value_byte(c)) return false;
  return true;
}

inline void write_text(httplib::Response &res, int status, const std::string &text) {
  res.status = status;
  res.set_content(text + "\n", "text/plain; charset=utf-8");
}

// `<hex size>\r\n<data>\r\n`: the chunked framing written by hand, because cpp-httplib 0.11
// cannot write trailers after the last chunk.
inline void frame_chunk(const std::string &data, std::string &out) {
  char size[20];
  int n = std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  out.clear();
  out.reserve(data.size() + static_cast<size_t>(n) + 2);
  out.append(size, static_cast<size_t>(n));
  out += data;
  out += "\r\n";
}

inline std::string last_chunk_with_trailers(const std::optional<Fields> &trailers) {
  std::string out = "0\r\n";
  if (trailers)
    for (auto &f : *trailers)
      if (valid_header_name(f.first) && !is_hop_by_hop(lower(f.first)))
        for (auto &v : f.second)
          if (valid_header_value(v)) out += f.first + ": " + v + "\r\n";
  out += "\r\n";
  return out;
}

}  // namespace detail

namespace detail {

// routing_mode host: the host a request names in the routing header (`Host`, or e.g.
// `X-Forwarded-Host`): the first of a comma-separated list (the client's, before proxies
// appended theirs), without its port, lower case.
inline std::string routed_host(const std::string &value) {
  return lower(without_port(http1::trim_ows(value.substr(0, value.find(',')))));
}

// A link's host (lower case, port removed) against a request's: equal, or for `*.example.com`
// exactly one more label in front (`api.example.com`, not `example.com` or `a.b.example.com`).
inline bool host_matches(const std::string &pattern, const std::string &host) {
  if (pattern.compare(0, 2, "*.") != 0) return pattern == host;
  size_t suffix = pattern.size() - 1;  // ".example.com"
  if (host.size() <= suffix || host.compare(host.size() - suffix, suffix, pattern, 1, suffix) != 0) return false;
  auto label_end = host.size() - suffix;
  return host.find('.') == label_end;
}

// A component id becomes one token of a NATS subject: printable, no dots or wildcards, and
// short enough for the server's control line.
inline bool valid_target(const std::string &target, size_t max_bytes) {
  if (target.empty() || target.size() > max_bytes) return false;
  for (unsigned char c : target)
    if (c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>') return false;
  return true;
}

}  // namespace detail

// Forwards HTTP requests to components over wRPC: the Go example's incoming round tripper.
class Forwarder {
public:
  using SettingsSource = std::function<HttpSettings()>;

  // `source_id` (this provider's id) goes with each invocation, as the Rust SDK sends it.
  Forwarder(nats::Client &nc, std::string lattice, Director director, SettingsSource settings,
            const Logger &logger, std::string source_id)
      : nc_(nc), lattice_(std::move(lattice)), director_(std::move(director)), settings_(std::move(settings)),
        logger_(logger), source_id_(std::move(source_id)) {}

  // Serves `prefix` and everything below it (`/proxy`, `/proxy/...`) for every method;
  // an empty prefix serves every path.
  // Every method reaches the component (the edge routes the ones cpp-httplib does not know
  // as POST); the body streams from the edge, so no handler lets cpp-httplib read it.
  void mount(Router routes, const std::string &prefix) {
    std::string pattern = prefix + "(/.*)?";
    auto plain = [this, route = detail::route_template(pattern)](const httplib::Request &req, httplib::Response &res) {
      detail::note_route(req, route);
      handle(req, res);
    };
    auto streamed = [plain](const httplib::Request &req, httplib::Response &res, const httplib::ContentReader &) {
      plain(req, res);
    };
    detail::route_every_method(routes, pattern, plain, streamed);
  }

  // Forwards the request the provider's HTTP edge is serving on this thread: the request is
  // sent from this thread, the response is written as it arrives without one
  // (detail::ForwardedResponse).
  void handle(const httplib::Request &req, httplib::Response &res);

private:
  nats::Client &nc_;
  std::string lattice_;
  Director director_;
  SettingsSource settings_;
  const Logger &logger_;
  std::string source_id_;
};

namespace detail {

inline bool is_lower_hex(const std::string &s, size_t from, size_t count) {
  if (s.size() < from + count) return false;
  for (size_t i = from; i < from + count; ++i)
    if (!std::isxdigit(static_cast<unsigned char>(s[i])) || std::isupper(static_cast<unsigned char>(s[i])))
      return false;
  return true;
}

// W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
inline bool valid_traceparent(const std::string &t) {
  return t.size() == 55 && t[2] == '-' && t[35] == '-' && t[52] == '-' && is_lower_hex(t, 0, 2) &&
         t.compare(0, 2, "ff") != 0 && is_lower_hex(t, 3, 32) && is_lower_hex(t, 36, 16) && is_lower_hex(t, 53, 2) &&
         t.compare(3, 32, std::string(32, '0')) != 0 && t.compare(36, 16, std::string(16, '0')) != 0;
}

inline std::string random_hex(size_t digits) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char hex[] = "0123456789abcdef";
  std::string out(digits, '0');
  for (auto &c : out) c = hex[rng() & 15];
  if (out.find_first_not_of('0') == std::string::npos) out.back() = '1';
  return out;
}

// The request's traceparent, or a new one that starts a trace here.
inline std::string trace_parent_for(const httplib::Request &req) {
  auto incoming = req.get_header_value("traceparent");
  if (valid_traceparent(incoming)) return incoming;
  return "00-" + random_hex(32) + "-" + random_hex(16) + "-01";
}

}  // namespace detail

namespace detail {

// The response to a forwarded request, written as the component's answer arrives (a
// ResponseProducer: no thread waits for it). Its head becomes the HTTP status line and fields
// (a promised Content-Length passed on and kept to; otherwise chunked framing, written here
// so the component's trailers can follow the last chunk). A failure before the head is the
// provider's own error answer (503, 504, 502, ...); after it, the connection is cut.
class ForwardedResponse : public ResponseProducer {
public:
  struct About {  // for the log lines
    std::string method, path, target, trace_id;
  };

  ForwardedResponse(std::shared_ptr<wrpc::OutgoingCall> call, Clock::time_point head_deadline,
                    std::chrono::milliseconds body_idle, const Logger &logger, About about)
      : call_(std::move(call)), head_deadline_(head_deadline), body_idle_(body_idle), logger_(logger),
        about_(std::move(about)) {}

  void advance(DetachedResponse &out, Clock::time_point now) override {
    try {
      if (phase_ == Phase::head) return start(out, now);
      if (phase_ == Phase::trailers) return finish_chunked(out, now);
      auto got = call_->poll_body(piece_);
      if (got == wrpc::OutgoingCall::BodyPoll::wait) {
        if (now - last_news_ >= body_idle_) throw wrpc::CallError(wrpc::CallError::Kind::timeout, "body stalled");
        return;
      }
      last_news_ = now;
      if (got == wrpc::OutgoingCall::BodyPoll::end) {
        if (phase_ == Phase::length) throw wrpc::CallError(wrpc::CallError::Kind::bad_reply, "body ended short of its length");
        phase_ = Phase::trailers;
        return finish_chunked(out, now);
      }
      if (phase_ == Phase::length) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(piece_.size(), length_left_));  // never past the promise
        out.write(piece_.data(), n);
        length_left_ -= n;
        if (length_left_ == 0) end(out);
      } else {
        frame_chunk(piece_, framed_);
        out.write(framed_.data(), framed_.size());
      }
    } catch (const wrpc::CallError &e) {
      fail(out, e);
    }
  }

  bool logs() const override { return !failure_.empty() || logger_.enabled(Logger::Level::debug); }

  void finished(bool whole) override {
    if (!failure_.empty()) {
      logger_.warn(answered_ ? "response body cut off" : "request failed",
                   {{"method", about_.method},
                    {"path", about_.path},
                    {"target", about_.target},
                    {"error", failure_},
                    {"trace_id", about_.trace_id}});
    } else if (logger_.enabled(Logger::Level::debug)) {
      logger_.debug(whole ? "forwarded" : "response not delivered", {{"method", about_.method},
                                                                     {"path", about_.path},
                                                                     {"target", about_.target},
                                                                     {"status", std::to_string(status_)},
                                                                     {"trace_id", about_.trace_id}});
    }
  }

private:
  enum class Phase { head, length, chunked, trailers, done };

  void start(DetachedResponse &out, Clock::time_point now) {
    auto head = call_->poll_response();
    if (!head) {
      if (now >= head_deadline_)
        throw wrpc::CallError(wrpc::CallError::Kind::timeout, "the component did not answer in time");
      return;
    }
    if (head->status < 200 || head->status > 599)
      throw wrpc::CallError(wrpc::CallError::Kind::bad_reply,
                            "component answered with invalid status " + std::to_string(head->status));
    httplib::Response res;
    res.status = status_ = head->status;
    std::optional<uint64_t> content_length;
    for (auto &field : head->headers) {
      std::string name = lower(field.first);
      if (!valid_header_name(name)) continue;
      if (name == "content-length" && field.second.size() == 1 && !field.second[0].empty() &&
          field.second[0].size() <= 18 && field.second[0].find_first_not_of("0123456789") == std::string::npos) {
        content_length = std::stoull(field.second[0]);
        continue;
      }
      if (is_hop_by_hop(name)) continue;
      for (auto &value : field.second)
        if (valid_header_value(value)) res.headers.emplace(field.first, value);
    }
    bool bodyless = out.request().head.method == "HEAD" || head->status == 204 || head->status == 304;
    if (content_length && (bodyless || *content_length == 0)) {
      res.set_header("Content-Length", std::to_string(*content_length));
    } else if (content_length) {
      res.set_header("Content-Length", std::to_string(*content_length));
      length_left_ = *content_length;
      phase_ = Phase::length;
    } else if (!bodyless) {
      res.set_header("Transfer-Encoding", "chunked");
      phase_ = Phase::chunked;
    }
    out.request().answered_by_component = answered_ = true;
    last_news_ = now;
    out.start(res);
    if (phase_ == Phase::head) end(out);  // no body to write
  }

  // The last chunk and the component's trailers, once they are here.
  void finish_chunked(DetachedResponse &out, Clock::time_point now) {
    std::optional<Fields> trailers;
    if (!call_->poll_trailers(trailers)) {
      if (now - last_news_ >= body_idle_) throw wrpc::CallError(wrpc::CallError::Kind::timeout, "trailers did not arrive");
      return;
    }
    auto last = last_chunk_with_trailers(trailers);
    out.write(last.data(), last.size());
    end(out);
  }

  void end(DetachedResponse &out) {
    phase_ = Phase::done;
    out.end();
  }

  void fail(DetachedResponse &out, const wrpc::CallError &e) {
    failure_ = e.what();
    phase_ = Phase::done;
    if (answered_) return out.cut();  // the client sees a cut-off body
    httplib::Response res;
    write_text(res, e.http_status(), e.what());
    out.request().close_after = true;  // the provider's own error: the connection closes
    status_ = res.status;
    out.start(res);
    out.end();
  }

  std::shared_ptr<wrpc::OutgoingCall> call_;
  Clock::time_point head_deadline_;
  std::chrono::milliseconds body_idle_;
  const Logger &logger_;
  About about_;
  Phase phase_ = Phase::head;
  uint64_t length_left_ = 0;
  Clock::time_point last_news_{};
  std::string piece_, framed_;
  int status_ = 0;
  bool answered_ = false;  // the component's head went out
  std::string failure_;
};

}  // namespace detail

inline void Forwarder::handle(const httplib::Request &req, httplib::Response &res) {
  auto started = std::chrono::steady_clock::now();
  auto *edge = detail::edge_request(req);
  if (!edge) return detail::write_text(res, 500, "the Forwarder serves only behind the provider's HTTP edge");
  const detail::http1::Head &in = edge->head;
  HttpSettings settings = settings_();
  std::string target;
  try {
    target = director_(req);
  } catch (const std::exception &e) {
    return detail::write_text(res, 500, std::string("director failed: ") + e.what());
  }
  if (target.empty()) return detail::write_text(res, 404, "no link routes this request");
  // The target becomes a NATS subject token: request data must not smuggle wildcards or dots.
  if (!detail::valid_target(target, settings.max_target_bytes)) return detail::write_text(res, 400, "bad request: invalid target");

  // Trace context travels in the invocation's NATS headers, with the ids the Rust SDK sends.
  std::string traceparent = detail::traced_call(*edge, target);
  if (traceparent.empty()) traceparent = detail::trace_parent_for(req);
  std::string trace_id = traceparent.substr(3, 32);
  nats::Headers nats_headers = {{"traceparent", traceparent}, {"source-id", source_id_}, {"target-id", target}};
  if (req.has_header("tracestate") && detail::valid_header_value(req.get_header_value("tracestate")))
    nats_headers.push_back({"tracestate", req.get_header_value("tracestate")});

  RequestHead head;
  head.method = method_from_string(in.method);
  head.path_with_query = in.path_with_query;
  head.scheme = Scheme{edge->over_tls ? SchemeKind::https : SchemeKind::http, ""};
  if (!in.authority.empty()) head.authority = in.authority;
  head.headers = detail::forwarded_fields(in.fields);
  // cpp-httplib would otherwise compress or slice what the component sent; the component
  // sees these headers and answers them itself. The Request object is the server's own
  // non-const instance, so writing to it is defined.
  auto &own = const_cast<httplib::Request &>(req);
  own.headers.erase("Accept-Encoding");
  own.ranges.clear();

  auto deadline = started + settings.timeout;
  bool trailers_follow = in.framing == detail::http1::Framing::chunked;
  std::shared_ptr<wrpc::OutgoingCall> call;
  auto open_call = [&] {
    call = std::make_shared<wrpc::OutgoingCall>(nc_, wrpc::handle_subject(lattice_, target), head, &nats_headers,
                                                trailers_follow);
  };
  // A streamed body's call starts with its first bytes, so a request whose body breaks
  // before any data never reaches the component.
  auto start_call = [&] {
    open_call();
    call->await_handshake(deadline);
  };
  try {
    std::string piece;
    if (edge->body.take_if_arrived(piece)) {
      // A body that is all here goes with the handshake: the worker waits once per call.
      open_call();
      call->send_whole_request(std::move(piece));
    } else {
      while (edge->body.read_piece(piece)) {
        if (!call) start_call();
        call->write_body(piece.data(), piece.size());
      }
      if (edge->body.refusal() != detail::http1::Refusal::none) {
        if (call) call->abort_request();
        auto refusal = detail::http1::describe(edge->body.refusal());
        return detail::write_text(res, refusal.status, refusal.text);
      }
      if (!call) start_call();
      std::optional<Fields> trailers;
      if (!edge->body.trailers().empty()) trailers = detail::forwarded_fields(edge->body.trailers());
      call->finish_request(trailers);
    }
    auto response = std::make_unique<detail::ForwardedResponse>(
        call, deadline, settings.body_idle_timeout, logger_,
        detail::ForwardedResponse::About{in.method, in.path_with_query, target, trace_id});
    auto detached = edge->server.detach(*edge, std::move(response));
    call->on_progress([weak = std::weak_ptr<detail::DetachedResponse>(detached)] {
      if (auto d = weak.lock()) d->kick();
    });
    res.status = 200;  // dropped: the detached response is what the client gets
  } catch (const wrpc::CallError &e) {
    logger_.warn("request failed", {{"method", in.method},
                                    {"path", in.path_with_query},
                                    {"target", target},
                                    {"error", e.what()},
                                    {"trace_id", trace_id}});
    detail::write_text(res, e.http_status(), e.what());
  }
}

// ---- provider ----

// The provider process: host data, lattice subjects, links, listeners and shutdown.
//
//   wrpc_http::Provider provider(wrpc_http::HostData::read());
//   auto proxy = provider.forwarder(wrpc_http::single_target("http-http_component"));
//   provider.serve([&](wrpc_http::Router &http) { proxy.mount(http, "/proxy"); ... });
//   return provider.run();
class Provider {
public:
  using LinkCallback = std::function<void(const LinkDefinition &)>;
  using Routes = std::function<void(Router &)>;

  explicit Provider(HostData host_data);
  ~Provider();
  Provider(const Provider &) = delete;
  Provider &operator=(const Provider &) = delete;

  const HostData &host_data() const { return host_; }
  const Logger &logger() const { return logger_; }
  nats::Client &lattice() { return nc_; }

  // Settings of the listener: provider config, overridden by the source link's config.
  HttpSettings settings() const;
  Forwarder forwarder(Director director);
  // The routes of the HTTP listener (without `routing_mode`): called for each listener the
  // provider opens. With `routing_mode`, links decide and every path is forwarded.
  void serve(Routes routes) { routes_ = std::move(routes); }

  void on_source_link_put(LinkCallback cb) { on_source_put_ = std::move(cb); }
  void on_target_link_put(LinkCallback cb) { on_target_put_ = std::move(cb); }
  void on_source_link_del(LinkCallback cb) { on_source_del_ = std::move(cb); }
  void on_target_link_del(LinkCallback cb) { on_target_del_ = std::move(cb); }
  std::vector<LinkDefinition> source_links() const;
  std::vector<LinkDefinition> target_links() const;

  // Connects, subscribes, listens; returns the exit code once shut down (by the host's
  // request, SIGTERM, SIGINT, or the end of the process that started it). Failures to start
  // are logged and give 1.
  int run();
  // Asks run() to return (thread-safe).
  void request_shutdown();

private:
  // What one listener serves: in routing_mode `address` each source link has its own.
  struct ListenerSpec {
    HttpSettings settings;
    std::string target;  // routing_mode `address`: the link's component
    // What the socket and the edge are built from: a change reopens the listener.
    std::string edge_signature() const {
      return settings.address + "|" + target + "|" + std::to_string(settings.max_content_len) + "|" +
             std::to_string(settings.head_timeout.count()) + "|" + (settings.keep_alive ? "ka" : "close") + "|" +
             settings.tls_cert_file + "|" + settings.tls_priv_key_file + "|" + (settings.http2.only ? "h2only" : settings.http2.enabled ? "h2" : "h1") +
             "|" + std::to_string(settings.http2.max_concurrent_streams) + "|" +
             std::to_string(settings.http2.max_header_list_bytes) + "|" + std::to_string(settings.http2.idle_timeout.count()) +
             "|" + std::to_string(settings.http2.settings_timeout.count());
    }
    // What each request reads as it starts: a change applies in place, connections stay.
    std::string request_signature() const {
      return std::to_string(settings.timeout.count()) + "|" + std::to_string(settings.body_idle_timeout.count()) +
             "|" + settings.policy.signature();
    }
  };
  struct Listener {
    std::string edge_signature, request_signature;
    // Read by every request (std::atomic_load), replaced whole by a config or link change.
    std::shared_ptr<const HttpSettings> settings;
    std::unique_ptr<EdgeServer> server;
    std::unique_ptr<Forwarder> forwarder;  // routed modes
    int listen_fd = -1;
    std::thread thread;  // the edge loop
    HttpSettings current() const { return *std::atomic_load(&settings); }
  };
  struct Route {
    std::string match;  // path prefix or host name
    std::string target;
    std::string name;   // path mode: the route template spans are named by (`/api/*`)
  };

  std::string topic(const std::string &suffix, const std::string &key) const {
    return "wasmbus.rpc." + host_.lattice_rpc_prefix + "." + key + "." + suffix;
  }
  std::string link_put_key() const;
  void subscribe_lattice();
  Secrets open_link_secrets(const LinkDefinition &link) const;
  void put_link(const LinkDefinition &link);
  void delete_link(const LinkDefinition &link);
  // Runs `task` on the control thread, after the control messages that came before it.
  void post_control(std::function<void()> task);
  void stop_control();
  std::map<std::string, ListenerSpec> wanted_listeners() const;
  std::unique_ptr<Listener> start_listener(const ListenerSpec &spec);
  void stop_listener(const std::string &address);
  void stop_listeners();
  void open_initial_listeners();
  void reconcile_listeners();
  void rebuild_routes();
  std::string route(const httplib::Request &req) const;
  void wait_for_shutdown(pid_t host);

  HostData host_;
  Logger logger_;
  std::unique_ptr<Telemetry> telemetry_;  // before nc_: the client logs until it is destroyed
  nats::Client nc_;
  Routes routes_;
  LinkCallback on_source_put_, on_target_put_, on_source_del_, on_target_del_;

  mutable std::mutex links_mu_;
  std::map<std::string, LinkDefinition> source_links_, target_links_;
  StringMap config_;
  mutable std::shared_ptr<const HttpSettings> settings_cache_;  // of settings(); reset on change

  std::string routing_mode_;  // "", "address", "path" or "host"
  std::string route_header_ = "host";  // routing_mode host: the header that names the host
  std::shared_ptr<const std::vector<Route>> route_table_ = std::make_shared<std::vector<Route>>();

  // By address. Only the control thread opens, changes and closes listeners (run() too, once
  // that thread has stopped), so no lock guards the map.
  std::map<std::string, std::unique_ptr<Listener>> listeners_;

  std::mutex shutdown_mu_;
  std::condition_variable shutdown_cv_;
  bool shutdown_requested_ = false;
  std::string shutdown_reply_;  // the host's shutdown request, answered once stopped

  // The control thread: link puts and deletes and config updates, in the order they arrived,
  // off the NATS reader (which must keep reading the replies that let listeners drain). One
  // thread at most; after shutdown_requested_ its tasks do nothing. Last member: destroyed,
  // and so joined, first.
  std::atomic<bool> control_closed_{false};
  detail::ElasticTaskQueue control_{1};
};

namespace detail {
// The exporter the host data's otel_config asks for. A bad otel_config costs the telemetry,
// not the provider.
inline std::unique_ptr<Telemetry> make_telemetry(const HostData &h, const Logger &logger) {
  OtelConfig config;
  try {
    config = OtelConfig::from_json(h.otel_config);
  } catch (const std::exception &e) {
    logger.error(std::string("telemetry off: ") + e.what());
  }
  Attributes resource = {otlp_attribute("service.name", "wrpc-http-provider"),
                         otlp_attribute("service.version", WRPC_HTTP_VERSION),
                         otlp_attribute("service.instance.id", h.instance_id),
                         otlp_attribute("wasmcloud.provider.id", h.provider_key),
                         otlp_attribute("wasmcloud.host.id", h.host_id),
                         otlp_attribute("wasmcloud.lattice", h.lattice_rpc_prefix)};
  return std::make_unique<Telemetry>(std::move(config), otlp_json(resource), logger);
}

inline nats::Options lattice_options(const HostData &h, const Logger &logger) {
  nats::Options o;
  o.url = h.lattice_rpc_url;
  o.name = h.provider_key;
  o.user_jwt = h.lattice_rpc_user_jwt;
  o.user_seed = h.lattice_rpc_user_seed;
  // The host data carries no CA: a lattice behind a private CA names its PEM file in the config.
  auto config = lower_keys(h.config);
  auto ca_file = config.find("nats_tls_ca_file");
  if (ca_file != config.end()) o.tls_ca_file = ca_file->second;
  o.log = logger.nats_sink();
  return o;
}
}  // namespace detail

inline Provider::Provider(HostData host_data)
    : host_(std::move(host_data)),
      telemetry_([&] {
        logger_.configure(Logger::parse_level(host_.log_level), host_.structured_logging);
        return detail::make_telemetry(host_, logger_);
      }()),
      nc_(detail::lattice_options(host_, logger_)),
      config_(detail::lower_keys(host_.config)) {
  if (telemetry_->logs())
    logger_.set_hook([t = telemetry_.get()](Logger::Level level, const std::string &message, const StringMap &fields) {
      t->record_log(level, message, fields);
    });
  HttpSettings::from_config(config_);  // reject a bad config before anything starts
  auto mode = config_.find("routing_mode");
  if (mode != config_.end()) {
    if (mode->second != "address" && mode->second != "path" && mode->second != "host")
      throw std::invalid_argument("config 'routing_mode' must be address, path or host, not '" + mode->second + "'");
    routing_mode_ = mode->second;
  }
  auto header = config_.find("header");
  if (header != config_.end()) {
    if (!detail::http1::is_token(header->second))
      throw std::invalid_argument("config 'header' must be a header name, not '" + header->second + "'");
    route_header_ = detail::lower(header->second);
  }
  for (auto &received : host_.link_definitions) {
    LinkDefinition link = received;
    try {
      link.secrets = open_link_secrets(received);
      link.source_config = detail::lower_keys(link.source_config);
    } catch (const std::exception &e) {
      logger_.error(std::string("skipping link from host data: ") + e.what(),
                    {{"source_id", link.source_id}, {"target", link.target}});
      continue;
    }
    if (link.source_id == host_.provider_key) source_links_[link.key(link.target)] = link;
    if (link.target == host_.provider_key) target_links_[link.key(link.source_id)] = link;
  }
  rebuild_routes();
}

inline Provider::~Provider() {
  stop_control();
  stop_listeners();
  nc_.close();
  telemetry_->stop();
  logger_.set_hook(nullptr);
}

inline HttpSettings Provider::settings() const {
  std::lock_guard<std::mutex> lk(links_mu_);
  // Read for every request (and by its policy steps): parsed once per config or link change.
  if (settings_cache_) return *settings_cache_;
  // The example has one listener: the first source link's config refines the provider's.
  StringMap overrides;
  if (!source_links_.empty()) overrides = source_links_.begin()->second.source_config;
  settings_cache_ = std::make_shared<const HttpSettings>(HttpSettings::from_config(config_, overrides));
  return *settings_cache_;
}

inline Forwarder Provider::forwarder(Director director) {
  return Forwarder(nc_, host_.lattice_rpc_prefix, std::move(director), [this] { return settings(); }, logger_,
                   host_.provider_key);
}

inline std::vector<LinkDefinition> Provider::source_links() const {
  std::lock_guard<std::mutex> lk(links_mu_);
  std::vector<LinkDefinition> out;
  for (auto &l : source_links_) out.push_back(l.second);
  return out;
}

inline std::vector<LinkDefinition> Provider::target_links() const {
  std::lock_guard<std::mutex> lk(links_mu_);
  std::vector<LinkDefinition> out;
  for (auto &l : target_links_) out.push_back(l.second);
  return out;
}

// Hosts >= 1.1 send link puts to the provider's xkey, so that only holders of the key
// can read the sealed secrets in them; older hosts use the provider key.
inline std::string Provider::link_put_key() const {
  if (host_.host_xkey_public_key.empty() || host_.provider_xkey_private_key.empty()) return host_.provider_key;
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
  return detail::nkeys::public_key_from_seed(host_.provider_xkey_private_key);
#else
  throw std::invalid_argument("host data has xkeys: build with WRPC_HTTP_OPENSSL_SUPPORT to derive the link subject");
#endif
}

// Link secrets are sealed by the host's xkey for this provider's xkey (nkeys "xkv1"). The
// side that concerns this provider is opened; a link whose secrets do not open is refused.
inline Secrets Provider::open_link_secrets(const LinkDefinition &link) const {
  const auto &sealed = link.source_id == host_.provider_key ? link.source_secrets : link.target_secrets;
  if (sealed.empty()) return {};
  if (host_.host_xkey_public_key.empty() || host_.provider_xkey_private_key.empty())
    throw std::invalid_argument("link has secrets but the host data has no xkeys to open them");
#if defined(WRPC_HTTP_OPENSSL_SUPPORT) && defined(WRPC_HTTP_SODIUM_SUPPORT)
  std::string json;
  try {
    json = detail::nkeys::xkey_open(sealed, host_.host_xkey_public_key, host_.provider_xkey_private_key);
  } catch (const std::exception &e) {
    throw std::invalid_argument(std::string("cannot open link secrets: ") + e.what());
  }
  try {
    return detail::parse_secrets(nlohmann::json::parse(json));
  } catch (const nlohmann::json::exception &) {
    throw std::invalid_argument("opened link secrets are not a JSON map");
  }
#else
  throw std::invalid_argument("link secrets need WRPC_HTTP_OPENSSL_SUPPORT and WRPC_HTTP_SODIUM_SUPPORT");
#endif
}

inline void Provider::put_link(const LinkDefinition &received) {
  LinkDefinition link = received;
  link.secrets = open_link_secrets(received);
  link.source_config = detail::lower_keys(link.source_config);
  bool is_source = link.source_id == host_.provider_key;
  bool is_target = link.target == host_.provider_key;
  if (!is_source && !is_target) {
    logger_.warn("ignoring a link that does not involve this provider",
                 {{"source_id", link.source_id}, {"target", link.target}});
    return;
  }
  bool fresh;
  {
    std::lock_guard<std::mutex> lk(links_mu_);
    auto &table = is_source ? source_links_ : target_links_;
    auto key = link.key(is_source ? link.target : link.source_id);
    auto it = table.find(key);
    fresh = it == table.end() || it->second.source_config != link.source_config ||
            it->second.target_config != link.target_config;
    table[key] = link;
    settings_cache_.reset();
  }
  if (!fresh) return;  // the host re-sends links it already sent
  logger_.info("link put", {{"source_id", link.source_id}, {"target", link.target}, {"name", link.name}});
  auto &cb = is_source ? on_source_put_ : on_target_put_;
  if (cb) cb(link);
  if (is_source) {
    rebuild_routes();
    reconcile_listeners();
  }
}

inline void Provider::delete_link(const LinkDefinition &link) {
  bool is_source = link.source_id == host_.provider_key;
  size_t erased;
  {
    std::lock_guard<std::mutex> lk(links_mu_);
    auto &table = is_source ? source_links_ : target_links_;
    erased = table.erase(link.key(is_source ? link.target : link.source_id));
    settings_cache_.reset();
  }
  if (!erased) return;
  logger_.info("link deleted", {{"source_id", link.source_id}, {"target", link.target}, {"name", link.name}});
  auto &cb = is_source ? on_source_del_ : on_target_del_;
  if (cb) cb(link);
  if (is_source) {
    rebuild_routes();
    reconcile_listeners();
  }
}

inline void Provider::subscribe_lattice() {
  const auto &p = host_.provider_key;
  nc_.subscribe(topic("health", p), [this](nats::Message &m) {
    if (m.reply.empty()) return;
    nlohmann::json health = {{"healthy", nc_.connected()}, {"message", "wrpc-http-provider " WRPC_HTTP_VERSION}};
    nc_.publish(m.reply, health.dump());
  });
  auto link_handler = [this](bool put) {
    return [this, put](nats::Message &m) {
      post_control([this, put, data = std::move(m.data), reply = std::move(m.reply)] {
        std::string answer = R"({"success":true})";
        try {
          auto link = LinkDefinition::from_json(nlohmann::json::parse(data));
          put ? put_link(link) : delete_link(link);
        } catch (const std::exception &e) {
          logger_.error(std::string("bad link ") + (put ? "put" : "del") + ": " + e.what());
          answer = nlohmann::json({{"success", false}, {"error", e.what()}}).dump();
        }
        if (reply.empty()) return;
        try {
          nc_.publish(reply, answer);
        } catch (const nats::Error &e) {
          logger_.warn(std::string("link answer not sent: ") + e.what());
        }
      });
    };
  };
  nc_.subscribe(topic("linkdefs.put", link_put_key()), link_handler(true));
  nc_.subscribe(topic("linkdefs.del", p), link_handler(false));
  nc_.subscribe(topic("default.shutdown", p), [this](nats::Message &m) {
    // Every instance of this provider id hears the request: only ours counts.
    try {
      auto j = nlohmann::json::parse(m.data.empty() ? "{}" : m.data);
      auto host = j.value("host_id", std::string());
      if (!host.empty() && !host_.host_id.empty() && host != host_.host_id) return;
    } catch (const nlohmann::json::exception &) {
      logger_.warn("shutdown request with unreadable payload; shutting down anyway");
    }
    // Answered by run() once the listeners have drained, as the wasmCloud provider SDK answers
    // after its provider's shutdown: the host kills the process as soon as the answer arrives.
    {
      std::lock_guard<std::mutex> lk(shutdown_mu_);
      shutdown_reply_ = m.reply;
    }
    request_shutdown();
  });
  nc_.subscribe(topic("config.update", p), [this](nats::Message &m) {
    post_control([this, data = std::move(m.data)] {
      try {
        StringMap update = detail::lower_keys(
            detail::json_string_map(nlohmann::json{{"config", nlohmann::json::parse(data)}}, "config"));
        HttpSettings::from_config(update);  // refuse a config that would not apply
        {
          std::lock_guard<std::mutex> lk(links_mu_);
          config_ = std::move(update);
          settings_cache_.reset();
        }
        logger_.info("config updated");
        reconcile_listeners();
      } catch (const std::exception &e) {
        logger_.error(std::string("config update refused: ") + e.what());
      }
    });
  });
}

inline void Provider::post_control(std::function<void()> task) {
  control_.enqueue([this, task = std::move(task)] {
    if (!control_closed_) task();
  });
}

// A control task under way (a listener draining) ends first; those still queued are dropped.
inline void Provider::stop_control() {
  control_closed_ = true;
  control_.shutdown();
}

// The listeners the links and config ask for, by address.
inline std::map<std::string, Provider::ListenerSpec> Provider::wanted_listeners() const {
  std::map<std::string, ListenerSpec> wanted;
  if (routing_mode_ != "address") {
    ListenerSpec spec;
    if (routing_mode_.empty()) {
      spec.settings = settings();
    } else {
      std::lock_guard<std::mutex> lk(links_mu_);
      spec.settings = HttpSettings::from_config(config_);
      auto fallback = detail::listen_address(config_);
      if (!fallback.empty()) spec.settings.address = fallback;
    }
    wanted[spec.settings.address] = spec;
    return wanted;
  }
  std::vector<std::pair<std::string, StringMap>> refused;  // logged once links_mu_ is released
  {
    std::lock_guard<std::mutex> lk(links_mu_);
    for (auto &entry : source_links_) {
      auto &link = entry.second;
      ListenerSpec spec;
      try {
        spec.settings = HttpSettings::from_config(config_, link.source_config);
      } catch (const std::exception &e) {
        refused.push_back({std::string("link refused: ") + e.what(), {{"target", link.target}}});
        continue;
      }
      if (link.source_config.find("address") == link.source_config.end()) {
        refused.push_back({"link refused: routing_mode address needs source_config.address", {{"target", link.target}}});
        continue;
      }
      spec.target = link.target;
      auto taken = wanted.find(spec.settings.address);
      if (taken != wanted.end()) {
        refused.push_back({"link refused: address already used by another link",
                           {{"address", spec.settings.address}, {"target", link.target}, {"holder", taken->second.target}}});
        continue;
      }
      wanted[spec.settings.address] = spec;
    }
  }
  for (auto &r : refused) logger_.error(r.first, r.second);
  return wanted;
}

// A listening TCP socket on `address` (SO_REUSEADDR, not SO_REUSEPORT: a second listener on
// the same port must fail, not silently share it), non-blocking for the edge loop.
inline int EdgeServer::open_listener(const std::string &address, int backlog) {
  auto host_port = detail::parse_address(address);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo *found = nullptr;
  std::string port = std::to_string(host_port.second);
  if (::getaddrinfo(host_port.first.c_str(), port.c_str(), &hints, &found) != 0 || !found)
    throw std::runtime_error("cannot resolve listen address " + address);
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, ::freeaddrinfo);
  int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, found->ai_protocol);
  if (fd < 0) throw std::runtime_error("cannot listen on " + address + ": " + std::strerror(errno));
  int yes = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  if (::bind(fd, found->ai_addr, found->ai_addrlen) != 0 || ::listen(fd, backlog) != 0) {
    int error = errno;
    ::close(fd);
    throw std::runtime_error("cannot listen on " + address + ": " + std::strerror(error));
  }
  return fd;
}

inline std::unique_ptr<Provider::Listener> Provider::start_listener(const ListenerSpec &spec) {
  const auto &settings = spec.settings;
  EdgeOptions options;
  options.max_content_len = settings.max_content_len;
  options.head_timeout = settings.head_timeout;
  options.keep_alive = settings.keep_alive;
  options.tls_cert_file = settings.tls_cert_file;
  options.tls_priv_key_file = settings.tls_priv_key_file;
  options.http2 = settings.http2;
  auto listener = std::make_unique<Listener>();
  listener->edge_signature = spec.edge_signature();
  listener->request_signature = spec.request_signature();
  listener->settings = std::make_shared<const HttpSettings>(settings);
  listener->server = std::make_unique<EdgeServer>(options, logger_);
  auto &server = *listener->server;
  const Listener *self = listener.get();
  detail::install_request_hooks(server, [self] { return self->current().policy; }, *telemetry_, logger_);
  if (routing_mode_.empty()) {
    Router router(server);
    if (routes_) routes_(router);
    detail::answer_unrouted(server);
  } else {
    // Every path goes to a component: the one this listener's link names, or the one the
    // route table picks per request.
    Director director = routing_mode_ == "address" ? single_target(spec.target)
                                                   : Director([this](const httplib::Request &req) { return route(req); });
    listener->forwarder = std::make_unique<Forwarder>(nc_, host_.lattice_rpc_prefix, std::move(director),
                                                      [self] { return self->current(); }, logger_, host_.provider_key);
    listener->forwarder->mount(server, "");
  }
  listener->listen_fd = EdgeServer::open_listener(settings.address, listener->server->options().listen_backlog);
  listener->thread = std::thread([l = listener.get()] { l->server->serve(l->listen_fd); });
  logger_.info("listening", {{"address", settings.address}, {"target", spec.target}});
  return listener;
}

// Stops accepting at once and gives running requests the edge's drain_timeout to finish;
// their replies keep flowing, since the NATS reader never waits for this.
inline void Provider::stop_listener(const std::string &address) {
  auto it = listeners_.find(address);
  if (it == listeners_.end()) return;
  logger_.info("closing listener", {{"address", address}});
  auto &listener = *it->second;
  listener.server->stop(listener.server->options().drain_timeout);
  listener.thread.join();
  ::close(listener.listen_fd);
  listeners_.erase(it);
}

inline void Provider::stop_listeners() {
  while (!listeners_.empty()) stop_listener(listeners_.begin()->first);
}

// At start: every wanted listener opens, or the provider fails to start (throws).
inline void Provider::open_initial_listeners() {
  for (auto &w : wanted_listeners())
    if (!listeners_.count(w.first)) listeners_[w.first] = start_listener(w.second);
}

// Brings the open listeners in line with what links and config ask for. A listener whose
// socket or edge settings changed is reopened; one whose per-request settings (policy,
// timeouts) changed keeps its socket and connections and takes the new settings for the
// requests that start from now on. A listener that moves opens at its new address before
// the old one drains, so the move costs no gap.
inline void Provider::reconcile_listeners() {
  std::map<std::string, ListenerSpec> wanted;
  try {
    wanted = wanted_listeners();
  } catch (const std::exception &e) {
    logger_.error(std::string("keeping the current listeners: ") + e.what());
    return;
  }
  std::vector<std::string> unwanted, reopened;
  for (auto &open : listeners_) {
    auto w = wanted.find(open.first);
    if (w == wanted.end()) {
      unwanted.push_back(open.first);
      continue;
    }
    auto &listener = *open.second;
    if (w->second.edge_signature() != listener.edge_signature) {
      reopened.push_back(open.first);
      continue;
    }
    if (w->second.request_signature() != listener.request_signature) {
      listener.request_signature = w->second.request_signature();
      std::atomic_store(&listener.settings, std::make_shared<const HttpSettings>(w->second.settings));
      logger_.info("listener settings updated", {{"address", open.first}});
    }
  }
  for (auto &address : reopened) stop_listener(address);  // the same address: closed before it reopens
  for (auto &w : wanted) {
    if (listeners_.count(w.first)) continue;
    try {
      listeners_[w.first] = start_listener(w.second);
    } catch (const std::exception &e) {
      logger_.error(e.what());
    }
  }
  for (auto &address : unwanted) stop_listener(address);
}

// Routes for routing_mode path/host, rebuilt when links change and swapped whole, so a
// request in flight keeps the route it started with.
inline void Provider::rebuild_routes() {
  if (routing_mode_ != "path" && routing_mode_ != "host") return;
  auto table = std::make_shared<std::vector<Route>>();
  std::vector<std::string> unroutable;  // targets, logged once links_mu_ is released
  {
    std::lock_guard<std::mutex> lk(links_mu_);
    for (auto &entry : source_links_) {
      auto it = entry.second.source_config.find(routing_mode_);
      if (it == entry.second.source_config.end()) {
        unroutable.push_back(entry.second.target);
        continue;
      }
      std::string match = it->second;
      if (routing_mode_ == "host") {
        match = detail::lower(detail::without_port(match));
      } else {
        if (match.empty() || match[0] != '/') match = "/" + match;
        while (match.size() > 1 && match.back() == '/') match.pop_back();
      }
      table->push_back({match, entry.second.target, detail::route_template(match + "(/.*)?")});
    }
  }
  for (auto &target : unroutable)
    logger_.error("link has no source_config." + routing_mode_ + " for routing_mode " + routing_mode_,
                  {{"target", target}});
  // The most specific first, so the first match wins: exact host names before `*.` patterns,
  // and the longest path prefix or host pattern before shorter ones.
  std::sort(table->begin(), table->end(), [](const Route &a, const Route &b) {
    bool a_wild = a.match.compare(0, 2, "*.") == 0, b_wild = b.match.compare(0, 2, "*.") == 0;
    if (a_wild != b_wild) return b_wild;
    return a.match.size() > b.match.size();
  });
  std::atomic_store(&route_table_, std::shared_ptr<const std::vector<Route>>(std::move(table)));
}

// The component for a request in routing_mode path/host; "" when no link matches (404).
inline std::string Provider::route(const httplib::Request &req) const {
  auto table = std::atomic_load(&route_table_);
  if (routing_mode_ == "host") {
    std::string host = detail::routed_host(req.get_header_value(route_header_.c_str()));
    for (auto &r : *table)
      if (detail::host_matches(r.match, host)) return r.target;
    return "";
  }
  const std::string &path = req.path;
  for (auto &r : *table) {
    // Segment-aware: `/api` matches `/api` and `/api/...`, not `/apix`.
    if (r.match == "/" || (path.compare(0, r.match.size(), r.match) == 0 &&
                           (path.size() == r.match.size() || path[r.match.size()] == '/'))) {
      detail::note_route(req, r.name);
      return r.target;
    }
  }
  return "";
}

inline void Provider::request_shutdown() {
  std::lock_guard<std::mutex> lk(shutdown_mu_);
  shutdown_requested_ = true;
  shutdown_cv_.notify_all();
}

// Blocks until a shutdown request, SIGTERM/SIGINT, or the end of the process that started
// this one (`host`, 0 for none: a host killed or crashed leaves no provider behind holding its port). The
// signals are blocked in every thread run() starts and taken here synchronously, so no
// handler runs in signal context. A request wakes it at once (the host waits for the
// answer); a signal or the host's end within 100 ms.
inline void Provider::wait_for_shutdown(pid_t host) {
  sigset_t signals = block_termination_signals();
  std::unique_lock<std::mutex> lk(shutdown_mu_);
  while (!shutdown_requested_) {
    timespec no_wait{0, 0};
    int sig = sigtimedwait(&signals, nullptr, &no_wait);
    if (sig == SIGTERM || sig == SIGINT) {
      shutdown_requested_ = true;
      lk.unlock();
      logger_.info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT"));
      return;
    }
    if (host != 0 && ::getppid() != host) {
      shutdown_requested_ = true;
      lk.unlock();
      logger_.warn("the process that started the provider has ended", {{"pid", std::to_string(host)}});
      return;
    }
    shutdown_cv_.wait_for(lk, std::chrono::milliseconds(100));
  }
}

inline int Provider::run() {
  const pid_t host = host_.started_by_host ? ::getppid() : 0;
  block_termination_signals();
  telemetry_->start();
  std::promise<void> opened;  // outlives the control task that sets it (joined below on failure)
  try {
    nc_.connect();
    // The host data's links and the first listeners come first on the control thread: link
    // puts and config updates that arrive once subscribed queue up behind them.
    auto listening = opened.get_future();
    post_control([this, &opened] {
      try {
        for (auto &link : source_links())
          if (on_source_put_) on_source_put_(link);
        for (auto &link : target_links())
          if (on_target_put_) on_target_put_(link);
        open_initial_listeners();
        opened.set_value();
      } catch (...) {
        opened.set_exception(std::current_exception());
      }
    });
    subscribe_lattice();
    nc_.flush(std::chrono::milliseconds(5000));
    listening.get();
  } catch (const std::exception &e) {
    logger_.error(std::string("provider failed to start: ") + e.what());
    stop_control();
    stop_listeners();
    nc_.close();
    telemetry_->stop();
    return 1;
  }
  logger_.info("provider started", {{"provider_key", host_.provider_key}, {"lattice", host_.lattice_rpc_prefix}});
  wait_for_shutdown(host);
  logger_.info("shutting down");
  stop_control();
  stop_listeners();
  logger_.info("provider stopped");
  telemetry_->stop();
  std::string reply;
  {
    std::lock_guard<std::mutex> lk(shutdown_mu_);
    reply = shutdown_reply_;
  }
  if (!reply.empty()) {  // last: a wasmCloud host kills the process once it has the answer
    try {
      nc_.publish(reply, "shutting down");
    } catch (const nats::Error &e) {
      logger_.warn(std::string("shutdown request not answered: ") + e.what());
    }
  }
  nc_.close();  // sends what is pending first
  return 0;
}

}  // namespace wrpc_http

#endif  // WRPC_HTTP_PROVIDER_HPP
