// Routing like a production HTTP provider: routing_mode address/path/host, links at run
// time under load, trace context on the invocation, and running without a host.
#include <doctest/doctest.h>

#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::kProviderKey;
using testsupport::link_to;
using testsupport::loopback;
using testsupport::NatsServer;
using testsupport::Process;
using testsupport::provider_subject;
using testsupport::ProviderProcess;
using testsupport::start_component;

namespace {

// A lattice with two demo components, "alpha" and "beta", and a provider in a routing mode.
struct RoutedLattice {
  NatsServer nats;
  std::unique_ptr<Process> alpha = start_component(nats.url(), "demo-component", "alpha"),
                           beta = start_component(nats.url(), "demo-component", "beta");
  wrpc_http::nats::Client client;
  std::unique_ptr<ProviderProcess> provider;
  int port = testsupport::free_port();

  RoutedLattice(const std::string &mode, nlohmann::json links = nlohmann::json::array(), bool wait = true,
                nlohmann::json extra_config = nlohmann::json::object())
      : client(testsupport::client_options(nats.url())) {
    client.connect();
    for (auto id : {"alpha", "beta"}) testsupport::wait_for_component(client, id);
    nlohmann::json config = {{"routing_mode", mode}, {"default_address", loopback(port)}};
    config.update(extra_config);
    provider = std::make_unique<ProviderProcess>(testsupport::host_data(nats.url(), config, links));
    if (wait) REQUIRE(testsupport::wait_for_port(port));
  }

  void put(const nlohmann::json &link) {
    client.publish(provider_subject("linkdefs.put"), link.dump());
    client.flush(2s);
  }
  void del(const nlohmann::json &link) {
    client.publish(provider_subject("linkdefs.del"), link.dump());
    client.flush(2s);
  }
};

// Which component answered GET `path` on `port` ("" when none did), and the status.
std::pair<int, std::string> who_answers(int port, const std::string &path, const httplib::Headers &headers = {}) {
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(5, 0);
  auto res = http.Get(path, headers);
  if (!res) return {0, ""};
  return {res->status, res->get_header_value("x-component-id")};
}

}  // namespace

TEST_CASE("routing address: each link's address opens a listener that forwards everything to its target") {
  int a = testsupport::free_port(), b = testsupport::free_port();
  RoutedLattice lattice(
      "address", {link_to("alpha", {{"address", loopback(a)}}), link_to("beta", {{"address", loopback(b)}})}, false);
  REQUIRE(testsupport::wait_for_port(a));
  REQUIRE(testsupport::wait_for_port(b));
  CHECK(who_answers(a, "/anything/at/all") == std::make_pair(200, std::string("alpha")));
  CHECK(who_answers(b, "/") == std::make_pair(200, std::string("beta")));
}

TEST_CASE("routing address: link put opens a listener and link del closes it") {
  RoutedLattice lattice("address", nlohmann::json::array(), false);
  // No listener to wait for: the provider is up once it answers health.
  REQUIRE(eventually([&] {
    try {
      return !lattice.client.request(provider_subject("health"), "", 1s).data.empty();
    } catch (const wrpc_http::nats::Error &) {
      return false;
    }
  }));
  int a = testsupport::free_port();
  auto link = link_to("alpha", {{"address", loopback(a)}});
  lattice.put(link);
  REQUIRE(testsupport::wait_for_port(a));
  CHECK(who_answers(a, "/x").second == "alpha");
  lattice.del(link);
  CHECK(eventually([&] { return !testsupport::port_open(a); }));
}

TEST_CASE("routing address: a second link asking for a taken address is refused and the first keeps working") {
  int a = testsupport::free_port();
  RoutedLattice lattice("address", {link_to("alpha", {{"address", loopback(a)}})}, false);
  REQUIRE(testsupport::wait_for_port(a));
  lattice.put(link_to("beta", {{"address", loopback(a)}}));
  std::this_thread::sleep_for(200ms);
  CHECK(who_answers(a, "/").second == "alpha");
  CHECK(lattice.provider->log().find("address already used by another link") !=
        std::string::npos);
}

TEST_CASE("routing path: the longest segment-aware prefix wins and no match is 404") {
  RoutedLattice lattice("path", {link_to("alpha", {{"path", "/api"}}), link_to("beta", {{"path", "/api/v2/"}})});
  CHECK(who_answers(lattice.port, "/api") == std::make_pair(200, std::string("alpha")));
  CHECK(who_answers(lattice.port, "/api/users?x=1") == std::make_pair(200, std::string("alpha")));
  CHECK(who_answers(lattice.port, "/api/v2") == std::make_pair(200, std::string("beta")));
  CHECK(who_answers(lattice.port, "/api/v2/items") == std::make_pair(200, std::string("beta")));
  CHECK(who_answers(lattice.port, "/apix").first == 404);
  CHECK(who_answers(lattice.port, "/").first == 404);
}

TEST_CASE("routing host: the Host header picks the link, port ignored, and no match is 404") {
  RoutedLattice lattice("host", {link_to("alpha", {{"host", "alpha.example"}}), link_to("beta", {{"host", "Beta.Example"}})});
  CHECK(who_answers(lattice.port, "/", {{"Host", "alpha.example"}}).second == "alpha");
  CHECK(who_answers(lattice.port, "/", {{"Host", "beta.example:8080"}}).second == "beta");
  CHECK(who_answers(lattice.port, "/", {{"Host", "gamma.example"}}).first == 404);
}

TEST_CASE("routing host: config 'header' routes on that header (X-Forwarded-Host) instead of Host") {
  RoutedLattice lattice("host", {link_to("alpha", {{"host", "alpha.example"}}), link_to("beta", {{"host", "beta.example"}})},
                        true, {{"header", "X-Forwarded-Host"}});
  CHECK(who_answers(lattice.port, "/", {{"Host", "alpha.example"}, {"X-Forwarded-Host", "beta.example"}}).second ==
        "beta");
  // The client's host comes first in a list proxies appended to.
  CHECK(who_answers(lattice.port, "/", {{"X-Forwarded-Host", "Alpha.Example:443, proxy.internal"}}).second == "alpha");
  CHECK(who_answers(lattice.port, "/", {{"Host", "alpha.example"}}).first == 404);
}

TEST_CASE("routing host: a *. host matches one label in front of it, and an exact host wins over it") {
  RoutedLattice lattice("host",
                        {link_to("alpha", {{"host", "*.example.com"}}), link_to("beta", {{"host", "api.example.com"}})});
  CHECK(who_answers(lattice.port, "/", {{"Host", "www.example.com"}}).second == "alpha");
  CHECK(who_answers(lattice.port, "/", {{"Host", "api.example.com"}}).second == "beta");
  CHECK(who_answers(lattice.port, "/", {{"Host", "example.com"}}).first == 404);
  CHECK(who_answers(lattice.port, "/", {{"Host", "a.b.example.com"}}).first == 404);
}

TEST_CASE("routing: disable_keepalive answers every request with Connection: close and closes") {
  RoutedLattice lattice("path", {link_to("alpha", {{"path", "/"}})}, true, {{"disable_keepalive", "true"}});
  int fd = testsupport::connect_loopback(lattice.port);
  auto first = testsupport::exchange_on(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
  auto rest = testsupport::exchange_on(fd, "");
  ::close(fd);
  CHECK(first.bytes.find("HTTP/1.1 200") == 0);
  CHECK(first.bytes.find("Connection: close") != std::string::npos);
  CHECK(rest.closed);  // the pipelined second request got no answer: the connection ended
  CHECK(rest.bytes.empty());
}

TEST_CASE("routing path: links change at run time under load without a dropped or misrouted request") {
  RoutedLattice lattice("path", {link_to("alpha", {{"path", "/stable"}})});
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, bad{0};
  std::vector<std::thread> load;
  for (int i = 0; i < 8; ++i) {
    load.emplace_back([&] {
      httplib::Client http("127.0.0.1", lattice.port);
      for (int n = 0; n < 2000 && !stop; ++n) {
        auto res = http.Get("/stable/x");
        (res && res->status == 200 && res->get_header_value("x-component-id") == "alpha" ? ok : bad)++;
      }
    });
  }
  auto moving = link_to("beta", {{"path", "/moving"}});
  for (int round = 0; round < 10; ++round) {
    lattice.put(moving);
    REQUIRE(eventually([&] { return who_answers(lattice.port, "/moving").second == "beta"; }));
    lattice.del(moving);
    REQUIRE(eventually([&] { return who_answers(lattice.port, "/moving").first == 404; }));
  }
  stop = true;
  for (auto &t : load) t.join();
  CHECK(bad == 0);
  CHECK(ok > 0);
}

TEST_CASE("trace context: traceparent and tracestate are forwarded in the invocation's NATS headers") {
  RoutedLattice lattice("path", {link_to("recorder", {{"path", "/"}})});
  std::mutex mu;
  std::vector<wrpc_http::nats::Message> seen;
  lattice.client.subscribe(wrpc_http::wrpc::handle_subject("default", "recorder"), [&](wrpc_http::nats::Message &m) {
    std::lock_guard<std::mutex> lk(mu);
    seen.push_back(m);
  });
  lattice.client.flush(2s);
  std::string parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  httplib::Client http("127.0.0.1", lattice.port);
  http.set_read_timeout(1, 0);
  http.Get("/traced", {{"traceparent", parent}, {"tracestate", "vendor=value"}});
  http.Get("/untraced");
  REQUIRE(eventually([&] {
    std::lock_guard<std::mutex> lk(mu);
    return seen.size() >= 2;
  }, 10000ms));
  std::lock_guard<std::mutex> lk(mu);
  CHECK(seen[0].header("traceparent") == parent);
  CHECK(seen[0].header("tracestate") == "vendor=value");
  CHECK(seen[0].header("source-id") == kProviderKey);
  CHECK(seen[0].header("target-id") == "recorder");
  auto created = seen[1].header("traceparent");
  CHECK(wrpc_http::detail::valid_traceparent(created));
  CHECK(created.substr(3, 32) != parent.substr(3, 32));
}

TEST_CASE("trace context: the trace id is in the provider's log line for the request") {
  RoutedLattice lattice("path", {link_to("alpha", {{"path", "/"}})});
  std::string parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  httplib::Client http("127.0.0.1", lattice.port);
  auto res = http.Get("/x", {{"traceparent", parent}});
  REQUIRE(res);
  CHECK(eventually([&] {
    return lattice.provider->log().find("trace_id=4bf92f3577b34da6a3ce929d0e0e4736") != std::string::npos;
  }));
}

TEST_CASE("local development: flags run the provider without host data") {
  NatsServer nats;
  Process component({testsupport::build_path("demo-component"), "--nats", nats.url(), "--lattice", "dev", "--id", "mine"},
                    "", true, "/dev/null");
  int port = testsupport::free_port();
  Process provider({testsupport::build_path("http-server"), "--nats", nats.url(), "--lattice", "dev", "--address",
                    loopback(port), "--target", "mine"},
                   "", true, "/dev/null");
  REQUIRE(testsupport::wait_for_port(port));
  CHECK(eventually([&] { return who_answers(port, "/proxy") == std::make_pair(200, std::string("mine")); }));
  CHECK(who_answers(port, "/").first == 200);
}

TEST_CASE("local development: an unknown flag exits non-zero with the usage line") {
  auto log = testsupport::temp_file("");
  Process provider({testsupport::build_path("http-server"), "--bogus", "x"}, "", true, log);
  CHECK(provider.wait(5000ms) == 1);
  CHECK(testsupport::read_file(log).find("usage:") != std::string::npos);
}

TEST_CASE("routing: an unknown routing_mode stops the provider with a clear error") {
  CHECK(testsupport::refused_config({{"routing_mode", "random"}}).find("routing_mode") != std::string::npos);
}
