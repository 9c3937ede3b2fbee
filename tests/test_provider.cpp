// The provider end to end: a real nats-server, the demo component, and build/http-server
// started as a wasmCloud host starts it (base64 host data on stdin), driven by real HTTP.
#include <doctest/doctest.h>

#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::kComponent;
using testsupport::Lattice;
using testsupport::LatticeOptions;
using testsupport::link_to;
using testsupport::loopback;
using testsupport::NatsServer;
using testsupport::pattern_bytes;
using testsupport::Process;
using testsupport::provider_subject;

namespace {

std::string random_bytes(size_t n) {
  std::mt19937 rng(42);
  std::string out(n, '\0');
  for (auto &c : out) c = static_cast<char>(rng());
  return out;
}

// Sends `request` on a fresh connection and returns everything the server sends back until
// it closes the connection, `until` came, or 5 s passed.
std::string raw_exchange(int port, const std::string &request, const std::string &until = "") {
  int fd = testsupport::connect_loopback(port);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((until.empty() || out.find(until) == std::string::npos) && (n = ::recv(fd, buf, sizeof(buf), 0)) > 0)
    out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}


// The host data line as wasmCloud hosts write it on a provider's stdin (base64, then "\r\n"),
// captured from two host versions by a stand-in provider (a script that saved its first line)
// started from a provider archive by the interop's hosts (2026-12-06; the keys are those of
// throwaway lattices; 0.27.1's is from the provider's second start, after the link was put).
// They differ in otel_config: 0.20.0 writes the signals and endpoints it was not given as null,
// 0.27.1 leaves them out.
const char *const kHostDataLine_0_20_0 =
    "eyJob3N0X2lkIjoiTkNWVUU1REEySEFESElHUTJPTkkyM083RkhLN0RDU0IzT01JT1RQSVpKTVpNV1NPQ0NGQ1pNTUIiLCJs"
    "YXR0aWNlX3JwY19wcmVmaXgiOiJkZWZhdWx0IiwibGlua19uYW1lIjoiZGVmYXVsdCIsImxhdHRpY2VfcnBjX3VzZXJfand0"
    "IjoiIiwibGF0dGljZV9ycGNfdXNlcl9zZWVkIjoiIiwibGF0dGljZV9ycGNfdXJsIjoibmF0czovLzEyNy4wLjAuMToyNDIy"
    "MiIsInByb3ZpZGVyX2tleSI6Imh0dHAtaHR0cF9wcm92aWRlciIsImVudl92YWx1ZXMiOnt9LCJpbnN0YW5jZV9pZCI6IjM4"
    "NmE2MzE2LWExYjQtNGM4YS1iY2I3LTg3NDAzNWUzYjZjMiIsImxpbmtfZGVmaW5pdGlvbnMiOltdLCJjbHVzdGVyX2lzc3Vl"
    "cnMiOltdLCJjb25maWciOnsiYWRkcmVzcyI6IjEyNy4wLjAuMToyNDI4MSJ9LCJzZWNyZXRzIjp7fSwiaG9zdF94a2V5X3B1"
    "YmxpY19rZXkiOiJYQUw1UUZWNFc1WEY0SUlKNkpZU0VJWU1NWEtQT0ZSNzdIMldFSU5ET1FZTE5SSEVYWlRTN1RRUyIsInBy"
    "b3ZpZGVyX3hrZXlfcHJpdmF0ZV9rZXkiOiJTWEFETzdVNjNHSkpVRTJJV0hNSERHTEhNV1FLQlFGNzdZWEZEM0NQWEVDRDJV"
    "QVhUTUFHUERYQ1dRIiwiZGVmYXVsdF9ycGNfdGltZW91dF9tcyI6MjAwMCwic3RydWN0dXJlZF9sb2dnaW5nIjpmYWxzZSwi"
    "bG9nX2xldmVsIjoiaW5mbyIsIm90ZWxfY29uZmlnIjp7ImVuYWJsZV9vYnNlcnZhYmlsaXR5IjpmYWxzZSwiZW5hYmxlX3Ry"
    "YWNlcyI6bnVsbCwiZW5hYmxlX21ldHJpY3MiOm51bGwsImVuYWJsZV9sb2dzIjpudWxsLCJvYnNlcnZhYmlsaXR5X2VuZHBv"
    "aW50IjpudWxsLCJ0cmFjZXNfZW5kcG9pbnQiOm51bGwsIm1ldHJpY3NfZW5kcG9pbnQiOm51bGwsImxvZ3NfZW5kcG9pbnQi"
    "Om51bGwsInByb3RvY29sIjoiSHR0cCIsImFkZGl0aW9uYWxfY2FfcGF0aHMiOltdLCJ0cmFjZV9sZXZlbCI6ImluZm8ifX0="
    "\r\n";
const char *const kHostDataLine_0_27_1 =
    "eyJob3N0X2lkIjoiTkRMS0FRUEpIUEdFUkk2RE80UE5WVkROM0FSVkZKQllWMkVWTjdVVjZMTUdLNVhNVlpMNExaWVIiLCJs"
    "YXR0aWNlX3JwY19wcmVmaXgiOiJkZWZhdWx0IiwibGlua19uYW1lIjoiZGVmYXVsdCIsImxhdHRpY2VfcnBjX3VzZXJfand0"
    "IjoiIiwibGF0dGljZV9ycGNfdXNlcl9zZWVkIjoiIiwibGF0dGljZV9ycGNfdXJsIjoibmF0czovLzEyNy4wLjAuMToyNDIy"
    "MiIsInByb3ZpZGVyX2tleSI6Imh0dHAtaHR0cF9wcm92aWRlciIsImVudl92YWx1ZXMiOnt9LCJpbnN0YW5jZV9pZCI6ImY0"
    "MWM5Y2MzLTk2ZjUtNDIzZi1hNjBmLWUyZWQyNzhjNjIxZSIsImxpbmtfZGVmaW5pdGlvbnMiOlt7InNvdXJjZV9pZCI6Imh0"
    "dHAtaHR0cF9wcm92aWRlciIsInRhcmdldCI6Imh0dHAtaHR0cF9jb21wb25lbnQiLCJuYW1lIjoiZGVmYXVsdCIsIndpdF9u"
    "YW1lc3BhY2UiOiJ3YXNpIiwid2l0X3BhY2thZ2UiOiJodHRwIiwiaW50ZXJmYWNlcyI6WyJpbmNvbWluZy1oYW5kbGVyIl0s"
    "InNvdXJjZV9jb25maWciOnsiYWRkcmVzcyI6IjEyNy4wLjAuMToyNDI4MCJ9LCJ0YXJnZXRfY29uZmlnIjp7fSwic291cmNl"
    "X3NlY3JldHMiOm51bGwsInRhcmdldF9zZWNyZXRzIjpudWxsfV0sImNsdXN0ZXJfaXNzdWVycyI6W10sImNvbmZpZyI6eyJh"
    "ZGRyZXNzIjoiMTI3LjAuMC4xOjI0MjgxIn0sInNlY3JldHMiOnt9LCJob3N0X3hrZXlfcHVibGljX2tleSI6IlhCRU5OQ1NJ"
    "Sk9aRk5ZQ0kzU0RFTjU1Tk5BM0g2MjJXVVlUWTVaVEtXM0NXR0dYTUpPV0ZSS1dQIiwicHJvdmlkZXJfeGtleV9wcml2YXRl"
    "X2tleSI6IlNYQU9CUFc0T05BVTJNUlVaRVJXT0dRQlZGNUdEUTJDR0hZSTNSUVhPRkJCTzdYNzVUUURDTkpWV00iLCJkZWZh"
    "dWx0X3JwY190aW1lb3V0X21zIjoyMDAwLCJzdHJ1Y3R1cmVkX2xvZ2dpbmciOmZhbHNlLCJsb2dfbGV2ZWwiOiJpbmZvIiwi"
    "b3RlbF9jb25maWciOnsiZW5hYmxlX29ic2VydmFiaWxpdHkiOmZhbHNlLCJwcm90b2NvbCI6Ikh0dHAiLCJhZGRpdGlvbmFs"
    "X2NhX3BhdGhzIjpbXSwidHJhY2VfbGV2ZWwiOiJpbmZvIn19"
    "\r\n";

// HostData::read on a pipe holding exactly `bytes`, as the provider reads its stdin.
wrpc_http::HostData read_host_data_line(const std::string &bytes) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  REQUIRE(::write(fds[1], bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::close(fds[1]);
  auto host_data = wrpc_http::HostData::read(fds[0], 1000ms);
  ::close(fds[0]);
  return host_data;
}

void check_captured_host_data(const wrpc_http::HostData &h) {
  CHECK(h.lattice_rpc_prefix == "default");
  CHECK(h.lattice_rpc_url == "nats://127.0.0.1:24222");
  CHECK(h.provider_key == "http-http_provider");
  CHECK(h.config == wrpc_http::StringMap{{"address", "127.0.0.1:24281"}});
  CHECK(h.default_rpc_timeout_ms == 2000u);
  CHECK(h.log_level == "info");
  CHECK(h.host_xkey_public_key.rfind('X', 0) == 0);
  CHECK(h.provider_xkey_private_key.rfind("SX", 0) == 0);
  auto otel = wrpc_http::OtelConfig::from_json(h.otel_config);
  CHECK_FALSE(otel.traces_enabled());
  CHECK_FALSE(otel.metrics_enabled());
  CHECK_FALSE(otel.logs_enabled());
  CHECK(otel.endpoint("traces") == "http://localhost:4318/v1/traces");
  CHECK(otel.protocol == "http");
}
}  // namespace

TEST_CASE("provider: / is answered by the provider itself") {
  Lattice lattice;
  auto res = lattice.http().Get("/");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "Hello from the provider!");
}

TEST_CASE("provider: /proxy is answered by the component over wRPC") {
  Lattice lattice;
  auto res = lattice.http().Get("/proxy");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "Hello from the component!");
  CHECK(res->get_header_value("Content-Type") == "text/plain");
}

TEST_CASE("provider: a 5 MiB upload with Content-Length arrives byte-exact") {
  Lattice lattice;
  auto body = random_bytes(5 * 1024 * 1024);
  auto res = lattice.http().Post("/proxy/echo", body, "application/octet-stream");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body.size() == body.size());
  CHECK(res->body == body);
}

TEST_CASE("provider: a chunked upload arrives byte-exact") {
  Lattice lattice;
  auto body = random_bytes(3 * 1024 * 1024 + 17);
  size_t piece = 100 * 1000;
  auto res = lattice.http().Post(
      "/proxy/echo",
      [&](size_t offset, httplib::DataSink &sink) {
        if (offset < body.size()) {
          sink.write(body.data() + offset, std::min(piece, body.size() - offset));
        } else {
          sink.done();
        }
        return true;
      },
      "application/octet-stream");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == body);
}

TEST_CASE("provider: a 20 MB download streams byte-exact") {
  Lattice lattice;
  size_t size = 20 * 1000 * 1000;
  auto res = lattice.http().Get("/proxy/bytes/" + std::to_string(size));
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body.size() == size);
  CHECK(res->body == pattern_bytes(size));
}

TEST_CASE("provider: the component's status passes through") {
  Lattice lattice;
  for (int status : {201, 404, 418, 503}) {
    auto res = lattice.http().Get("/proxy/status/" + std::to_string(status));
    REQUIRE(res);
    CHECK(res->status == status);
  }
}

TEST_CASE("provider: request head reaches the component whole: method, path with query, authority, all header values") {
  Lattice lattice;
  httplib::Headers headers = {{"X-Multi", "one"}, {"X-Multi", "two"}, {"X-Single", "s"}};
  auto res = lattice.http().Get("/proxy/inspect?a=1&b=%20x", headers);
  REQUIRE(res);
  auto j = nlohmann::json::parse(res->body);
  CHECK(j["method"] == "GET");
  CHECK(j["path"] == "/proxy/inspect?a=1&b=%20x");
  CHECK(j["authority"] == "127.0.0.1:" + std::to_string(lattice.http_port));
  CHECK(j["scheme"] == 0);
  bool found = false;
  for (auto &h : j["headers"]) {
    if (h[0] == "x-multi") {
      CHECK(h[1] == nlohmann::json({"one", "two"}));
      found = true;
    }
    CHECK(h[0] != "host");  // carried as the authority
    CHECK(h[0] != "remote_addr");
  }
  CHECK(found);
}

TEST_CASE("provider: multi-valued response headers pass through") {
  Lattice lattice;
  auto res = lattice.http().Get("/proxy/inspect");
  REQUIRE(res);
  CHECK(res->get_header_value_count("x-multi") == 2);
  CHECK(res->get_header_value("x-multi", 0) == "a");
  CHECK(res->get_header_value("x-multi", 1) == "b");
}

TEST_CASE("provider: PUT, PATCH, DELETE, OPTIONS and HEAD are forwarded with their method") {
  Lattice lattice;
  auto http = lattice.http();
  auto put = http.Put("/proxy/inspect", "x", "text/plain");
  REQUIRE(put);
  CHECK(nlohmann::json::parse(put->body)["method"] == "PUT");
  auto patch = http.Patch("/proxy/inspect", "x", "text/plain");
  REQUIRE(patch);
  CHECK(nlohmann::json::parse(patch->body)["method"] == "PATCH");
  auto del = http.Delete("/proxy/inspect");
  REQUIRE(del);
  CHECK(nlohmann::json::parse(del->body)["method"] == "DELETE");
  auto options = http.Options("/proxy/inspect");
  REQUIRE(options);
  CHECK(nlohmann::json::parse(options->body)["method"] == "OPTIONS");
  auto head = http.Head("/proxy");
  REQUIRE(head);
  CHECK(head->status == 200);
  CHECK(head->body.empty());
}

TEST_CASE("provider: response trailers are written as HTTP/1.1 chunked trailers") {
  Lattice lattice;
  auto raw = raw_exchange(lattice.http_port,
                          "GET /proxy/trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  CHECK(raw.find("Transfer-Encoding: chunked\r\n") != std::string::npos);
  CHECK(raw.find("body before trailers") != std::string::npos);
  auto tail = raw.substr(raw.size() - std::min<size_t>(raw.size(), 40));
  CHECK(tail.find("\r\n0\r\nx-checksum: abc123\r\n\r\n") != std::string::npos);
}

TEST_CASE("provider: the component's error-code becomes the matching HTTP status") {
  Lattice lattice;
  auto res = lattice.http().Get("/proxy/error");
  REQUIRE(res);
  CHECK(res->status == 500);
  CHECK(res->body.find("internal-error: boom") != std::string::npos);
}

TEST_CASE("provider: 40 concurrent /proxy requests all succeed") {
  Lattice lattice;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 40; ++i) {
    clients.emplace_back([&, i] {
      auto http = lattice.http();
      auto body = "request " + std::to_string(i);
      auto res = http.Post("/proxy/echo", body, "text/plain");
      if (res && res->status == 200 && res->body == body) {
        ok++;
      } else {
        MESSAGE("request " << i << ": " << (res ? std::to_string(res->status) + " " + res->body : httplib::to_string(res.error())));
      }
    });
  }
  for (auto &t : clients) t.join();
  CHECK(ok == 40);
}

TEST_CASE("provider: health answers healthy on the lattice") {
  Lattice lattice;
  auto reply = lattice.client->request(provider_subject("health"), "", 2s);
  auto j = nlohmann::json::parse(reply.data);
  CHECK(j["healthy"] == true);
  CHECK(j["message"].is_string());
}

TEST_CASE("provider: a source link's config moves the listener, and deleting the link moves it back") {
  Lattice lattice;
  int link_port = testsupport::free_port();
  auto link = link_to(kComponent, {{"address", loopback(link_port)}});
  lattice.client->publish(provider_subject("linkdefs.put"), link.dump());
  REQUIRE(testsupport::wait_for_port(link_port));
  httplib::Client moved("127.0.0.1", link_port);
  auto res = moved.Get("/proxy");
  REQUIRE(res);
  CHECK(res->body == "Hello from the component!");

  lattice.client->publish(provider_subject("linkdefs.del"), link.dump());
  REQUIRE(testsupport::wait_for_port(lattice.http_port));
  CHECK(lattice.http().Get("/")->body == "Hello from the provider!");
}

TEST_CASE("provider: links from host data are in force at start") {
  int link_port = testsupport::free_port();
  int config_port = testsupport::free_port();
  LatticeOptions options;
  options.config = {{"address", loopback(config_port)}};
  options.links = {link_to(kComponent, {{"address", loopback(link_port)}})};
  options.listen_port = link_port;  // the link's address wins over the config's
  Lattice lattice(options);
  httplib::Client http("127.0.0.1", link_port);
  auto res = http.Get("/proxy");
  REQUIRE(res);
  CHECK(res->body == "Hello from the component!");
  CHECK_FALSE(testsupport::port_open(config_port));
}

TEST_CASE("provider: a shutdown request from its host is answered and the process exits 0") {
  Lattice lattice;
  auto reply = lattice.client->request(provider_subject("default.shutdown"), R"({"host_id":"NHOSTFORTESTS"})", 2s);
  CHECK_FALSE(reply.data.empty());
  CHECK(lattice.provider->wait(5000ms) == 0);
}

TEST_CASE("provider: a shutdown request for another host is ignored") {
  Lattice lattice;
  lattice.client->publish(provider_subject("default.shutdown"), R"({"host_id":"NSOMEONEELSE"})");
  lattice.client->flush(2s);
  std::this_thread::sleep_for(300ms);
  CHECK(lattice.provider->running());
}

// What a wasmCloud host (wasmcloud-host 0.27.1, async-nats 0.39) sent when its control
// interface's stop_provider came, captured with nats-server -V (`NATS_TRACE=1`) under the
// interop host: its CONNECT ("pass" is redacted in the trace; async-nats sends null without
// credentials), the inbox subscription its requests are answered on, the shutdown request.
const char *const kCapturedHostId = "NCYKXOE3QLSVUN4JYFJD4ETVQZCLNTMF4JFVQIYFNKPSFOI3DKMV3B53";
const char *const kCapturedStopBytes =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"jwt\":null,\"nkey\":null,\"sig\":null,\"name\":\"wasmbus\","
    "\"echo\":true,\"lang\":\"rust\",\"version\":\"0.39.0\",\"protocol\":1,\"tls_required\":false,\"user\":null,"
    "\"pass\":null,\"auth_token\":null,\"headers\":true,\"no_responders\":true}\r\n"
    "SUB _INBOX.HvvovFsviop7eA3bqY6OoC.* 0\r\n"
    "PUB wasmbus.rpc.default.http-http_provider.default.shutdown "
    "_INBOX.HvvovFsviop7eA3bqY6OoC.HvvovFsviop7eA3bqY6Orh 70\r\n"
    "{\"host_id\":\"NCYKXOE3QLSVUN4JYFJD4ETVQZCLNTMF4JFVQIYFNKPSFOI3DKMV3B53\"}\r\n";

TEST_CASE("provider: a wasmCloud host's stop (captured bytes) is answered once the provider has stopped; it exits 0") {
  NatsServer nats;
  int port = testsupport::free_port();
  auto host_data = testsupport::host_data(nats.url(), {{"address", loopback(port)}});
  host_data["host_id"] = kCapturedHostId;
  testsupport::ProviderProcess provider(host_data);
  REQUIRE(testsupport::wait_for_port(port));  // listening: subscribed to the lattice
  const std::string answer =
      "MSG _INBOX.HvvovFsviop7eA3bqY6OoC.HvvovFsviop7eA3bqY6Orh 0 13\r\nshutting down\r\n";
  auto start = std::chrono::steady_clock::now();
  auto received = raw_exchange(nats.port(), kCapturedStopBytes, answer);
  CHECK(received.find(answer) != std::string::npos);
  // The host kills the process as soon as it has the answer: by then nothing is left to do.
  CHECK_FALSE(testsupport::port_open(port));
  CHECK(provider.log().find("provider stopped") != std::string::npos);
  CHECK(provider.wait(1000ms) == 0);
  CHECK(std::chrono::steady_clock::now() - start < 1s);
}

TEST_CASE("provider: SIGTERM shuts it down with exit code 0") {
  Lattice lattice;
  lattice.provider->signal(SIGTERM);
  CHECK(lattice.provider->wait(5000ms) == 0);
}

TEST_CASE("provider: when the process that started it is killed (a host crash), it shuts down within 1 s") {
  NatsServer nats;
  int port = testsupport::free_port();
  auto log = testsupport::temp_file("", ".log");
  // The stand-in host: a shell that starts the provider with the host data on its stdin, and waits.
  Process host({"/bin/sh", "-c", "exec 3<&0; \"$0\" <&3 2>\"$1\" & wait", testsupport::build_path("http-server"),
                log},
               testsupport::host_data_line(testsupport::host_data(nats.url(), {{"address", loopback(port)}})));
  REQUIRE(testsupport::wait_for_port(port));
  host.signal(SIGKILL);
  CHECK(testsupport::eventually(
      [&] { return testsupport::read_file(log).find("provider stopped") != std::string::npos; }, 1000ms));
  CHECK_FALSE(testsupport::port_open(port));
  ::unlink(log.c_str());
}

TEST_CASE("provider: started with command-line flags instead of a host, it outlives the shell that started it") {
  NatsServer nats;
  int port = testsupport::free_port();
  auto pid_file = testsupport::temp_file("");
  // The shell starts the provider in the background, writes its pid and exits a second later,
  // when the provider runs (and would have taken the shell for its host).
  Process shell({"/bin/sh", "-c",
                 "\"$0\" --nats \"$1\" --address \"$2\" >/dev/null 2>&1 </dev/null & echo $! >\"$3\"; sleep 1",
                 testsupport::build_path("http-server"), nats.url(), "127.0.0.1:" + std::to_string(port), pid_file},
                "");
  REQUIRE(shell.wait(5000ms) == 0);
  pid_t provider = std::atoi(testsupport::read_file(pid_file).c_str());
  ::unlink(pid_file.c_str());
  REQUIRE(provider > 0);
  struct Stop {  // no host will stop it: the test does, whatever happens
    pid_t pid;
    ~Stop() { ::kill(pid, SIGTERM); }
  } stop{provider};
  REQUIRE(testsupport::port_open(port));
  std::this_thread::sleep_for(500ms);  // the parent watch would have looked 5 times
  httplib::Client http("127.0.0.1", port);
  auto res = http.Get("/");
  REQUIRE(res);
  CHECK(res->status == 200);
}

TEST_CASE("provider: missing or bad host data exits non-zero with one clear line") {
  for (std::string input : {std::string(""), std::string("not base64!\n"),
                            wrpc_http::detail::base64_encode("{\"provider_key\": 5}") + "\n",
                            wrpc_http::detail::base64_encode("[1,2]") + "\n"}) {
    auto log = testsupport::temp_file("");
    Process p({testsupport::build_path("http-server")}, input, true, log);
    CHECK(p.wait(10000ms) == 1);
    auto text = testsupport::read_file(log);
    CHECK(std::count(text.begin(), text.end(), '\n') == 1);
    CHECK(text.rfind("http-server: ", 0) == 0);
  }
}

TEST_CASE("host data: wasmcloud-host 0.20.0's line (captured; otel_config with nulls) is read whole") {
  auto h = read_host_data_line(kHostDataLine_0_20_0);
  CHECK(h.host_id == "NCVUE5DA2HADHIGQ2ONI23O7FHK7DCSB3OMIOTPIZJMZMWSOCCFCZMMB");
  CHECK(h.otel_config.at("enable_traces").is_null());
  CHECK(h.link_definitions.empty());
  check_captured_host_data(h);
}

TEST_CASE("host data: wasmcloud-host 0.27.1's line (captured; otel_config without the unset keys) is read whole") {
  auto h = read_host_data_line(kHostDataLine_0_27_1);
  CHECK(h.host_id == "NDLKAQPJHPGERI6DO4PNVVDN3ARVFJBYV2EVN7UV6LMGK5XMVZL4LZYR");
  CHECK_FALSE(h.otel_config.contains("enable_traces"));
  REQUIRE(h.link_definitions.size() == 1);
  const auto &link = h.link_definitions[0];
  CHECK(link.source_id == "http-http_provider");
  CHECK(link.target == "http-http_component");
  CHECK(link.interfaces == std::vector<std::string>{"incoming-handler"});
  CHECK(link.source_config == wrpc_http::StringMap{{"address", "127.0.0.1:24280"}});
  CHECK(link.source_secrets.empty());
  check_captured_host_data(h);
}

TEST_CASE("provider: no component serving the target answers 503 at once") {
  NatsServer nats;
  int port = testsupport::free_port();
  testsupport::ProviderProcess provider(testsupport::host_data(nats.url(), {{"address", loopback(port)}}));
  REQUIRE(testsupport::wait_for_port(port));
  httplib::Client http("127.0.0.1", port);
  auto start = std::chrono::steady_clock::now();
  auto res = http.Get("/proxy");
  REQUIRE(res);
  CHECK(res->status == 503);
  CHECK(std::chrono::steady_clock::now() - start < 1s);
}
