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
