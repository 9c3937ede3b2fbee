//
//  wrpc_http_provider.hpp
//
//  A wasmCloud HTTP-server capability provider in one header: HTTP in (cpp-httplib),
//  wRPC over NATS out (`wrpc:http/incoming-handler@0.1.0.handle`), to a component that
//  exports `wasi:http/incoming-handler`.
//
//  API overview
//  ------------
//    wrpc_http::Provider        reads host data, connects to the lattice, answers health,
//                               links and shutdown, and runs the HTTP server:
//
//        int main() {
//          wrpc_http::Provider provider;                       // host data from stdin
//          auto forward = provider.forward_to("http-http_component");
//          provider.http().Get("/", [](auto &, auto &res) { res.set_content("Hello", "text/plain"); });
//          provider.route("/proxy", forward);
//          return provider.run();
//        }
//
//    wrpc_http::nats::Client    a small NATS client (pub/sub, request/reply, reconnect)
//    wrpc_http::wrpc::Client    invokes `handle` on a component over NATS
//    wrpc_http::wrpc::Server    serves `handle` (the demo component is built on it)
//
//  Configuration macros (define before including):
//    WRPC_HTTP_OPENSSL_SUPPORT  nkey/JWT auth to NATS (needs OpenSSL: -lssl -lcrypto)
//    WRPC_HTTP_MAX_HEAD_BYTES   largest wRPC request/response head accepted (1 MiB)
//    WRPC_HTTP_NATS_*           NATS client tuning, see below
//
//  Needs: cpp-httplib, nlohmann/json, a C++17 compiler, POSIX sockets.
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
#define WRPC_HTTP_NATS_MAX_PENDING_BYTES (32u * 1024u * 1024u)
#endif
#ifndef WRPC_HTTP_NATS_MAX_CONTROL_LINE
#define WRPC_HTTP_NATS_MAX_CONTROL_LINE 4096
#endif
#ifndef WRPC_HTTP_MAX_HEAD_BYTES
#define WRPC_HTTP_MAX_HEAD_BYTES (1024u * 1024u)
#endif
// Response (or request) body bytes one call may hold while its consumer is slower.
#ifndef WRPC_HTTP_MAX_BUFFERED_BODY
#define WRPC_HTTP_MAX_BUFFERED_BODY (16u * 1024u * 1024u)
#endif
// Body bytes gathered before they leave as one NATS message (fewer, larger messages).
#ifndef WRPC_HTTP_BODY_FLUSH_BYTES
#define WRPC_HTTP_BODY_FLUSH_BYTES (64u * 1024u)
#endif
#ifndef WRPC_HTTP_BODY_IDLE_TIMEOUT_MS
#define WRPC_HTTP_BODY_IDLE_TIMEOUT_MS 30000
#endif
#ifndef WRPC_HTTP_SERVER_WORKERS
#define WRPC_HTTP_SERVER_WORKERS 64
#endif
// Request body limit when the config sets no `max_content_len`.
#ifndef WRPC_HTTP_DEFAULT_MAX_CONTENT_LEN
#define WRPC_HTTP_DEFAULT_MAX_CONTENT_LEN (100u * 1024u * 1024u)
#endif
#ifndef WRPC_HTTP_MAX_HOST_DATA_BYTES
#define WRPC_HTTP_MAX_HOST_DATA_BYTES (16u * 1024u * 1024u)
#endif
// HTTP listener: every open connection holds a pool thread while it is served or kept
// alive, so the pool is sized for many clients, and idle ones are let go quickly.
#ifndef WRPC_HTTP_THREAD_POOL_SIZE
#define WRPC_HTTP_THREAD_POOL_SIZE 256
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

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
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
#include <sys/socket.h>
#include <unistd.h>

#include "wip/util.hpp"
#include "wip/nkeys.hpp"
#include "wip/nats.hpp"
#include "wip/codec.hpp"
#include "wip/transport.hpp"
#include "wip/provider.hpp"

#endif  // WRPC_HTTP_PROVIDER_HPP
