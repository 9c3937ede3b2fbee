// HTTP/2 on the provider's listeners: h2c by prior knowledge, h2 by ALPN over TLS, each stream
// a request through the same routes and forwarder, and the limits an HTTP/2 front door needs.
#include <doctest/doctest.h>

#include "h2_client.hpp"
#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::Clock;
using testsupport::CurlReply;
using testsupport::Http2Client;
using testsupport::Lattice;
using testsupport::LatticeOptions;
using testsupport::RawHttp2;

namespace {

CurlReply h2c(Lattice &lattice, const std::string &path, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--http2-prior-knowledge"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back(lattice.url(path));
  return testsupport::curl(args);
}

std::string sha256_of_file(const std::string &path) {
  auto out = testsupport::shell("sha256sum " + path);
  return out.substr(0, 64);
}

// Serves HTTP/1.1 GETs of `/` in a loop on another thread: the "other client" that attacks
// on one connection must not disturb. Counts answers and failures.
class BystanderClient {
public:
  explicit BystanderClient(int port) : thread_([this, port] {
      while (!stop_) {
        httplib::Client c("127.0.0.1", port);
        c.set_read_timeout(2, 0);
        auto res = c.Get("/");
        if (res && res->status == 200) ++answered_;
        else ++failed_;
        std::this_thread::sleep_for(20ms);
      }
    }) {}
  ~BystanderClient() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // 200 ms more, then stops: it was answered, every time.
  void check_undisturbed() {
    std::this_thread::sleep_for(200ms);
    stop();
    CHECK(answered_ > 0);
    CHECK(failed_ == 0);
  }

private:
  std::atomic<bool> stop_{false};
  std::atomic<int> answered_{0}, failed_{0};
  std::thread thread_;
};

// curl's arguments for HTTP/2 to `path`: h2c by prior knowledge, or h2 over TLS by ALPN.
std::vector<std::string> http2_to(const Lattice &lattice, const testsupport::SelfSigned *tls, const std::string &path) {
  if (!tls) return {"--http2-prior-knowledge", lattice.url(path)};
  return {"--http2", "--cacert", tls->cert, "https://127.0.0.1:" + std::to_string(lattice.http_port) + path};
}

}  // namespace

TEST_SUITE("http2") {

TEST_CASE("http2: h2c by prior knowledge answers / and /proxy as HTTP/1.1 does") {
  Lattice lattice;
  auto root = h2c(lattice, "/");
  auto proxy = h2c(lattice, "/proxy");
  CHECK(root.head.rfind("HTTP/2 200", 0) == 0);
  CHECK(proxy.head.rfind("HTTP/2 200", 0) == 0);
  CHECK(root.body == testsupport::curl({lattice.url("/")}).body);
  CHECK(proxy.body == "Hello from the component!");
  CHECK(proxy.header("x-component-id") == "http-http_component");
}

TEST_CASE("http2: h2 by ALPN over TLS answers like HTTP/1.1, and HTTP/1.1 clients still get HTTP/1.1") {
  testsupport::SelfSigned pair;
  LatticeOptions options;
  options.config = {{"tls_cert_file", pair.cert}, {"tls_priv_key_file", pair.key}};
  Lattice lattice(options);
  std::string base = "https://127.0.0.1:" + std::to_string(lattice.http_port);
  auto h2 = testsupport::curl({"--http2", "--cacert", pair.cert, base + "/proxy"});
  auto h1 = testsupport::curl({"--http1.1", "--cacert", pair.cert, base + "/proxy"});
  CHECK(h2.head.rfind("HTTP/2 200", 0) == 0);
  CHECK(h1.head.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(h2.body == h1.body);
  CHECK(h2.body == "Hello from the component!");
  // The component learns the request came over TLS either way.
  auto inspect = testsupport::curl({"--http2", "--cacert", pair.cert, base + "/proxy/inspect"});
  INFO(inspect.head);
  CHECK(nlohmann::json::parse(inspect.body)["scheme"] == 1);
}

TEST_CASE("http2: a 64 MiB upload reaches the component byte for byte, over h2c and over TLS") {
  testsupport::TempDir dir;
  std::string file = dir.path() + "/upload";
  testsupport::shell("head -c 67108864 /dev/urandom > " + file);
  testsupport::SelfSigned pair;
  for (bool tls : {false, true}) {
    CAPTURE(tls);
    LatticeOptions options;
    if (tls) options.config = {{"tls_cert_file", pair.cert}, {"tls_priv_key_file", pair.key}};
    Lattice lattice(options);
    std::vector<std::string> args = {"--max-time", "60", "-H", "content-type: application/octet-stream",
                                     "--data-binary", "@" + file};
    for (auto &a : http2_to(lattice, tls ? &pair : nullptr, "/proxy/digest")) args.push_back(a);
    auto reply = testsupport::curl(args);
    CHECK(reply.head.rfind("HTTP/2 200", 0) == 0);
    CHECK(reply.body == sha256_of_file(file));
  }
}

TEST_CASE("http2: a 64 MiB download reaches the client byte for byte, over h2c and over TLS") {
  testsupport::SelfSigned pair;
  for (bool tls : {false, true}) {
    CAPTURE(tls);
    LatticeOptions options;
    options.component = "fault-component";
    if (tls) options.config = {{"tls_cert_file", pair.cert}, {"tls_priv_key_file", pair.key}};
    Lattice lattice(options);
    // Paced at 32 MB/s: the transport's bound on a component that outruns its client is not
    // what this checks (see the README's Backpressure).
    std::vector<std::string> argv = {"curl", "-s", "--max-time", "60"};
    for (auto &a : http2_to(lattice, tls ? &pair : nullptr, "/proxy/fault/paced/67108864/8")) argv.push_back(a);
    auto result = testsupport::run_capture(argv, 70s);
    CHECK(result.out.size() == 67108864);
    CHECK((result.out == testsupport::pattern_bytes(67108864)));
  }
}

TEST_CASE("http2: request trailers reach the component and response trailers reach the client") {
  Lattice lattice;
  Http2Client client(lattice.http_port);
  auto sent = client.fetch("POST", "/proxy/inspect", std::string("body"), {{"x-sum", "42"}});
  REQUIRE(sent.status == 200);
  auto seen = nlohmann::json::parse(sent.body);
  CHECK(seen["body"] == "body");
  CHECK(seen["trailers"].dump() == R"([["x-sum",["42"]]])");
  auto answered = client.fetch("GET", "/proxy/trailers");
  CHECK(answered.status == 200);
  CHECK(answered.body == "body before trailers\n");
  CHECK(answered.trailer("x-checksum") == "abc123");
}

TEST_CASE("http2: 100 concurrent streams on one connection each get their own answer") {
  Lattice lattice;
  Http2Client client(lattice.http_port);
  std::vector<int32_t> ids;
  for (int i = 0; i < 100; ++i) ids.push_back(client.submit("GET", "/proxy/inspect?n=" + std::to_string(i)));
  REQUIRE(client.wait_all(20s));
  for (int i = 0; i < 100; ++i) {
    auto &r = client.response(ids[static_cast<size_t>(i)]);
    REQUIRE(r.status == 200);
    CHECK(nlohmann::json::parse(r.body)["path"] == "/proxy/inspect?n=" + std::to_string(i));
  }
}

TEST_CASE("http2: any method and a streamed echo pass through") {
  Lattice lattice;
  Http2Client client(lattice.http_port);
  auto put = client.fetch("PUT", "/proxy", std::string(300000, 'x'));
  CHECK(put.status == 200);
  CHECK(put.body == std::string(300000, 'x'));
  auto custom = client.fetch("PURGE", "/proxy/inspect");
  CHECK(custom.status == 200);
  CHECK(nlohmann::json::parse(custom.body)["method_other"] == "PURGE");
}

TEST_CASE("http2: gRPC passes through: unary and server-streaming calls, grpc-status as a trailer") {
  const char *client = std::getenv("WRPC_HTTP_GRPC_CLIENT");  // make test-unit builds it (tests/grpc)
  REQUIRE(client);
  Lattice lattice;
  auto result = testsupport::run_capture({client, testsupport::loopback(lattice.http_port)}, 20s);
  CHECK(result.exit_code == 0);
  CHECK(result.out == "unary: echo: hello status=OK trailer=[demo-component]\n"
                      "stream: message 1\nstream: message 2\nstream: message 3\nstream: status=OK\n"
                      "unknown: status=Unimplemented\n");
}

TEST_CASE("http2: a config update that reopens the listener lets the streams in flight finish after GOAWAY") {
  LatticeOptions options;
  options.config = {{"timeout_ms", "5000"}};
  Lattice lattice(options);
  lattice.count_invocations();
  Http2Client client(lattice.http_port);
  std::vector<int32_t> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(client.submit("GET", "/proxy/sleep/1000"));
  REQUIRE(client.run_until([&] { return lattice.invocation_count >= 5; }, 5s));
  // A new max_content_len reopens the listener on its address: it drains first.
  nlohmann::json update = {{"address", testsupport::loopback(lattice.http_port)}, {"timeout_ms", "5000"},
                           {"max_content_len", "50M"}};
  lattice.client->publish(testsupport::provider_subject("config.update"), update.dump());
  REQUIRE(client.wait_all(8s));
  CHECK(client.got_goaway());
  for (auto id : ids) {
    CHECK(client.response(id).status == 200);
    CHECK(client.response(id).body == "Hello from the component!");
  }
  CHECK(testsupport::eventually([&] {
    if (!testsupport::port_open(lattice.http_port)) return false;
    Http2Client again(lattice.http_port);
    return again.fetch("GET", "/proxy").status == 200;
  }));
}

TEST_CASE("http2: the settings advertise the configured stream and header limits and the default windows") {
  LatticeOptions options;
  options.config = {{"h2_max_concurrent_streams", "7"}, {"h2_max_header_list_size", "4096"}};
  Lattice lattice(options);
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  REQUIRE(raw.read_until([](const RawHttp2::Frame &f) { return f.type == NGHTTP2_SETTINGS && !(f.flags & 1); }, 2s));
  std::map<int, uint32_t> settings;
  for (auto &f : raw.frames())
    if (f.type == NGHTTP2_SETTINGS && !(f.flags & 1))
      for (size_t at = 0; at + 6 <= f.payload.size(); at += 6)
        settings[(static_cast<uint8_t>(f.payload[at]) << 8) | static_cast<uint8_t>(f.payload[at + 1])] =
            RawHttp2::be32_value(f.payload, at + 2);
  CHECK(settings[NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS] == 7);
  CHECK(settings[NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE] == 4096);
  // The defaults of the rest: HPACK table, the stream window, and the connection window
  // (65,535 by the protocol, raised by the first WINDOW_UPDATE).
  CHECK(settings[NGHTTP2_SETTINGS_HEADER_TABLE_SIZE] == WRPC_HTTP_H2_HPACK_TABLE_BYTES);
  CHECK(settings[NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE] == WRPC_HTTP_H2_STREAM_WINDOW_BYTES);
  REQUIRE(raw.read_until([](const RawHttp2::Frame &f) { return f.type == NGHTTP2_WINDOW_UPDATE && f.stream == 0; }, 2s));
  CHECK(RawHttp2::be32_value(raw.frames().back().payload, 0) == WRPC_HTTP_H2_CONNECTION_WINDOW_BYTES - 65535);
}

TEST_CASE("http2: a header list over h2_max_header_list_size is answered 431 and the connection goes on") {
  LatticeOptions options;
  options.config = {{"h2_max_header_list_size", "4096"}};
  Lattice lattice(options);
  lattice.count_invocations();
  Http2Client client(lattice.http_port);
  auto big = client.fetch("GET", "/proxy", std::nullopt, {}, {{"x-big", std::string(8000, 'b')}});
  CHECK(big.status == 431);
  CHECK(lattice.invocations() == 0);
  CHECK(client.fetch("GET", "/proxy").status == 200);
}

TEST_CASE("http2: rapid reset closes the attacker's connection within 1 s while another client is served") {
  Lattice lattice;
  BystanderClient other(lattice.http_port);
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  auto started = Clock::now();
  std::string rst_payload = RawHttp2::be32(NGHTTP2_CANCEL);
  for (uint32_t id = 1; id < 20000 && testsupport::seconds_since(started) < 2; id += 2) {
    if (!raw.send_bytes(RawHttp2::get(id, "/") +
                        RawHttp2::frame(NGHTTP2_RST_STREAM, 0, id, rst_payload)))
      break;
  }
  CHECK(raw.read_to_close(2s));
  CHECK(testsupport::seconds_since(started) < 1.0);
  CHECK(raw.goaway_error() == NGHTTP2_ENHANCE_YOUR_CALM);
  other.check_undisturbed();
}

TEST_CASE("http2: a CONTINUATION flood closes the connection within 1 s while another client is served") {
  Lattice lattice;
  BystanderClient other(lattice.http_port);
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  auto started = Clock::now();
  bool sending = raw.send_bytes(RawHttp2::frame(NGHTTP2_HEADERS, 0, 1, RawHttp2::get_request("/")));
  for (int i = 0; sending && i < 100000 && testsupport::seconds_since(started) < 2; ++i)
    sending = raw.send_bytes(RawHttp2::frame(NGHTTP2_CONTINUATION, 0, 1, RawHttp2::header_block({{"x-f", "v"}})));
  CHECK(raw.read_to_close(2s));
  CHECK(testsupport::seconds_since(started) < 1.0);
  CHECK(raw.goaway_error() >= 0);
  other.check_undisturbed();
}

TEST_CASE("http2: a PING flood closes the connection with GOAWAY ENHANCE_YOUR_CALM") {
  Lattice lattice;
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  std::string pings;
  for (int i = 0; i < 1000; ++i) pings += RawHttp2::frame(NGHTTP2_PING, 0, 0, std::string(8, 'p'));
  raw.send_bytes(pings);
  CHECK(raw.read_to_close(2s));
  CHECK(raw.goaway_error() == NGHTTP2_ENHANCE_YOUR_CALM);
}

TEST_CASE("http2: a SETTINGS flood closes the connection with GOAWAY ENHANCE_YOUR_CALM") {
  Lattice lattice;
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  std::string settings;
  for (int i = 0; i < 1000; ++i) settings += RawHttp2::frame(NGHTTP2_SETTINGS, 0, 0, "");
  raw.send_bytes(settings);
  CHECK(raw.read_to_close(2s));
  CHECK(raw.goaway_error() == NGHTTP2_ENHANCE_YOUR_CALM);
}

TEST_CASE("http2: a client that never acknowledges the settings gets GOAWAY SETTINGS_TIMEOUT") {
  LatticeOptions options;
  options.config = {{"h2_settings_timeout_ms", "300"}};
  Lattice lattice(options);
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  auto started = Clock::now();
  CHECK(raw.read_to_close(3s));
  CHECK(testsupport::seconds_since(started) < 1.5);
  CHECK(raw.goaway_error() == NGHTTP2_SETTINGS_TIMEOUT);
}

TEST_CASE("http2: an idle connection is closed with GOAWAY NO_ERROR after h2_idle_timeout_ms") {
  LatticeOptions options;
  options.config = {{"h2_idle_timeout_ms", "400"}};
  Lattice lattice(options);
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  raw.send_bytes(RawHttp2::settings_ack());
  auto started = Clock::now();
  CHECK(raw.read_to_close(3s));
  CHECK(testsupport::seconds_since(started) >= 0.3);
  CHECK(testsupport::seconds_since(started) < 1.5);
  CHECK(raw.goaway_error() == NGHTTP2_NO_ERROR);
}

TEST_CASE("http2: a client that keeps its window shut is disconnected after the write timeout; others are served") {
  Lattice lattice;
  RawHttp2 raw(lattice.http_port);
  // Stream windows of 0: the response's DATA can never be sent.
  REQUIRE(raw.open({{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 0}}));
  raw.send_bytes(RawHttp2::settings_ack() +
                 RawHttp2::get(1, "/proxy/bytes/1000000"));
  auto started = Clock::now();
  Http2Client other(lattice.http_port);
  CHECK(other.fetch("GET", "/proxy").status == 200);
  CHECK(raw.read_to_close(12s));
  auto took = testsupport::seconds_since(started);
  CHECK(took >= 4.5);  // WRPC_HTTP_WRITE_TIMEOUT_SECOND
  CHECK(took < 7.0);
  CHECK(raw.goaway_error() == NGHTTP2_FLOW_CONTROL_ERROR);
}

TEST_CASE("http2: a slow stream holds back only itself: another stream on its connection is answered") {
  Lattice lattice;
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open({{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 0}}));
  // Stream 1 never opens its window; stream 3 gets one big enough for its answer.
  raw.send_bytes(RawHttp2::settings_ack() +
                 RawHttp2::get(1, "/proxy/bytes/10000000") +
                 RawHttp2::get(3, "/proxy") +
                 RawHttp2::frame(NGHTTP2_WINDOW_UPDATE, 0, 3, RawHttp2::be32(65536)));
  std::string body;
  bool ended = raw.read_until(
      [&](const RawHttp2::Frame &f) {
        if (f.type == NGHTTP2_DATA && f.stream == 3) body += f.payload;
        return f.type == NGHTTP2_DATA && f.stream == 3 && (f.flags & NGHTTP2_FLAG_END_STREAM);
      },
      3s);
  CHECK(ended);
  CHECK(body == "Hello from the component!");
}

TEST_CASE("http2: with http2=false the preface is refused as a malformed HTTP/1.1 request") {
  LatticeOptions options;
  options.config = {{"http2", "false"}};
  Lattice lattice(options);
  auto reply = testsupport::send_raw(lattice.http_port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
  CHECK(testsupport::raw_status(reply.bytes) >= 400);
  CHECK(h2c(lattice, "/").status == 0);
}

TEST_CASE("http2: h2spec passes every case on an h2c listener and on a TLS listener") {
  const char *h2spec = std::getenv("WRPC_HTTP_H2SPEC");  // make test-unit builds it (tests/h2spec)
  REQUIRE(h2spec);
  testsupport::SelfSigned pair;
  // Cleartext: an h2c-only listener, since on a listener that also serves HTTP/1.1 the case
  // "Sends invalid connection preface" (3.5/2) meets an HTTP/1.1 400, as it must there. Over
  // TLS, ALPN's h2 commits the connection: the default listener.
  LatticeOptions h2c_options, tls_options;
  h2c_options.config = {{"http2", "only"}};
  tls_options.config = {{"tls_cert_file", pair.cert}, {"tls_priv_key_file", pair.key}};
  for (bool tls : {false, true}) {
    CAPTURE(tls);
    Lattice lattice(tls ? tls_options : h2c_options);
    std::vector<std::string> argv = {h2spec, "-h", "127.0.0.1", "-p", std::to_string(lattice.http_port), "-o", "3"};
    if (tls) argv.insert(argv.end(), {"-t", "-k"});
    auto result = testsupport::run_capture(argv, 240s);
    auto summary = result.out.substr(result.out.rfind("tests,") == std::string::npos ? 0 : result.out.rfind("\n", result.out.rfind("tests,")));
    INFO(result.out.substr(result.out.size() > 6000 ? result.out.size() - 6000 : 0));
    CHECK(result.exit_code == 0);
    CHECK(summary.find(" 0 failed") != std::string::npos);
  }
}

TEST_CASE("http2: HEADERS on a skipped, lower stream id is a connection error (PROTOCOL_ERROR)") {
  Lattice lattice;
  RawHttp2 raw(lattice.http_port);
  REQUIRE(raw.open());
  raw.send_bytes(RawHttp2::settings_ack() +
                 RawHttp2::get(5, "/") +
                 RawHttp2::get(3, "/"));
  CHECK(raw.read_to_close(3s));
  CHECK(raw.goaway_error() == NGHTTP2_PROTOCOL_ERROR);
}

TEST_CASE("http2: on a listener with http2=only a bad preface gets GOAWAY, not an HTTP/1.1 answer") {
  LatticeOptions only;
  only.config = {{"http2", "only"}};
  Lattice lattice(only);
  auto reply = testsupport::send_raw(lattice.http_port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(reply.closed);
  CHECK(reply.bytes.find("HTTP/1.1") == std::string::npos);
  CHECK(h2c(lattice, "/proxy").body == "Hello from the component!");
}

}  // TEST_SUITE

TEST_CASE("http2 front: the response head parser takes the edge's heads and refuses malformed ones") {
  using wrpc_http::detail::parse_stream_response_head;
  using wrpc_http::detail::StreamResponseHead;
  StreamResponseHead head;
  std::string chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-multi: a\r\nx-multi: b\r\n\r\n5\r\n";
  CHECK(parse_stream_response_head(chunked, 65536, false, head) == chunked.size() - 3);
  CHECK(head.status == 200);
  CHECK(head.body == StreamResponseHead::Body::chunked);
  CHECK(head.fields.size() == 3);
  CHECK(parse_stream_response_head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 65536, true, head) > 0);
  CHECK(head.body == StreamResponseHead::Body::none);  // the answer to HEAD
  CHECK(parse_stream_response_head("HTTP/1.1 200 OK\r\nContent-Le", 65536, false, head) == 0);
  for (std::string bad : {"HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
                          "HTTP/1.1 200 OK\r\nx: a\x01" "b\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(parse_stream_response_head(bad, 65536, false, head), std::runtime_error);
  }
  CHECK_THROWS_AS(parse_stream_response_head("HTTP/1.1 200 OK\r\n" + std::string(70000, 'x'), 65536, false, head),
                  std::runtime_error);
}
