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
//
//        int main(int argc, char **argv) {
//          auto launch = wrpc_http::Launch::from(argc, argv, "http-http_component");
//          wrpc_http::Provider provider(launch.host_data);
//          auto proxy = provider.forwarder(wrpc_http::single_target(launch.target));
//          provider.serve([&](httplib::Server &http) { proxy.mount(http, "/proxy"); });
//          return provider.run();
//        }
//
//    wrpc_http::nats::Client        a small NATS client (pub/sub, request/reply, reconnect, TLS)
//    wrpc_http::wrpc::OutgoingCall  one `handle` invocation, client side
//    wrpc_http::wrpc::Server        serves `handle` (the demo component is built on it)
//
//  Sections, in order: configuration macros, utilities, nkeys, NATS client, wRPC codec,
//  wRPC transport, provider runtime, HTTP bridge, provider.
//
//  Configuration macros (define before including; defaults below):
//    WRPC_HTTP_OPENSSL_SUPPORT  nkey/JWT auth and TLS to NATS, HTTPS (needs OpenSSL: -lssl -lcrypto)
//    WRPC_HTTP_SODIUM_SUPPORT   opens link secrets sealed with xkeys (needs libsodium: -lsodium)
//    WRPC_HTTP_NATS_*           NATS client tuning
//    WRPC_HTTP_*                limits and timeouts of the wRPC transport and HTTP listener
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
#define WRPC_HTTP_NATS_MAX_PENDING_BYTES (8u * 1024u * 1024u)
#endif
#ifndef WRPC_HTTP_NATS_MAX_MESSAGE_BYTES
#define WRPC_HTTP_NATS_MAX_MESSAGE_BYTES (64u * 1024u * 1024u)
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
// HTTP listener: every open connection holds a thread while it is served or kept alive;
// threads start on demand up to this many (then connections wait for a free one).
#ifndef WRPC_HTTP_MAX_THREADS
#define WRPC_HTTP_MAX_THREADS 4096
#endif
// On shutdown or listener close: how long running requests get to finish.
#ifndef WRPC_HTTP_DRAIN_TIMEOUT_MS
#define WRPC_HTTP_DRAIN_TIMEOUT_MS 3000
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
