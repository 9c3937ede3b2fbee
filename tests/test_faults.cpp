// Faults and bad input, end to end: a real nats-server, a component (the demo component, or
// build/fault-component for faults the demo cannot produce), build/http-server started with
// host data on stdin, and real HTTP clients, most of them raw sockets.
#include <doctest/doctest.h>

#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::Clock;
using testsupport::NatsServer;

namespace {

using testsupport::Lattice;
using testsupport::raw_status;
using testsupport::seconds_since;
using testsupport::kHostId;

// The provider's answer to a bad request: a 4xx, or the connection closed without one.
void check_refused(const testsupport::RawReply &reply, const std::string &what) {
  INFO("request: " << what << "\nresponse: " << reply.bytes.substr(0, 200));
  if (reply.bytes.empty()) {
    CHECK(reply.closed);
  } else {
    // A client error, or the edge's "not implemented" / "version not supported".
    int status = raw_status(reply.bytes);
    CHECK(((status >= 400 && status < 500) || status == 501 || status == 505));
  }
}

// After the bad requests, one good request: the counter sees exactly that one.
void check_nothing_was_forwarded(Lattice &lattice) {
  auto res = lattice.http().Get("/proxy");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(lattice.invocations() == 1);
}

std::string post_head(const std::string &path, const std::string &headers) {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\n" + headers + "\r\n";
}

}  // namespace

// ---- faults ----

TEST_CASE("faults: a component that stopped serving is answered 503 at once") {
  Lattice lattice;
  REQUIRE(lattice.http().Get("/proxy")->status == 200);
  lattice.component.reset();  // SIGTERM: it unsubscribes and exits
  auto start = Clock::now();
  auto res = lattice.http().Get("/proxy");
  REQUIRE(res);
  CHECK(res->status == 503);
  CHECK(seconds_since(start) < 0.5);
}

TEST_CASE("faults: a component slower than timeout_ms gets 504 near timeout_ms, and its late reply leaks nothing") {
  Lattice lattice("demo-component", {{"timeout_ms", "500"}});
  REQUIRE(lattice.http().Get("/proxy")->status == 200);
  int baseline_threads = testsupport::thread_count(lattice.provider->pid());
  auto start = Clock::now();
  std::vector<std::thread> clients;
  std::vector<int> statuses(4, 0);
  std::vector<double> seconds(4, 0);
  for (size_t i = 0; i < statuses.size(); ++i) {
    clients.emplace_back([&, i] {
      auto res = lattice.http().Get("/proxy/sleep/2000");
      statuses[i] = res ? res->status : -1;
      seconds[i] = seconds_since(start);
    });
  }
  for (auto &t : clients) t.join();
  for (size_t i = 0; i < statuses.size(); ++i) {
    CHECK(statuses[i] == 504);
    CHECK(seconds[i] >= 0.5);
    CHECK(seconds[i] < 1.5);
  }
  // The component answers after 2 s, to inboxes the provider has let go of.
  std::this_thread::sleep_until(start + 2300ms);
  auto res = lattice.http().Get("/proxy");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "Hello from the component!");
  // Listener threads stay for reuse, at most one per connection that was open at once.
  CHECK(testsupport::thread_count(lattice.provider->pid()) <= baseline_threads + int(statuses.size()) + 2);
  CHECK(lattice.provider->running());
}

TEST_CASE("faults: nats-server killed with requests in flight: they end 5xx promptly, new ones 503 fast, all recovers") {
  Lattice lattice;
  REQUIRE(lattice.http().Get("/proxy")->status == 200);
  std::vector<std::thread> clients;
  std::vector<int> statuses(4, 0);
  std::vector<Clock::time_point> ended(4);
  for (size_t i = 0; i < statuses.size(); ++i) {
    clients.emplace_back([&, i] {
      auto res = lattice.http().Get("/proxy/sleep/1000");
      statuses[i] = res ? res->status : -1;
      ended[i] = Clock::now();
    });
  }
  std::this_thread::sleep_for(300ms);  // all four are waiting for the component
  lattice.nats.kill();
  auto killed = Clock::now();
  for (auto &t : clients) t.join();
  for (size_t i = 0; i < statuses.size(); ++i) {
    CHECK(statuses[i] >= 500);
    CHECK(statuses[i] < 600);
    CHECK(std::chrono::duration<double>(ended[i] - killed).count() < 2.0);
  }

  auto start = Clock::now();
  auto down = lattice.http().Get("/proxy");
  REQUIRE(down);
  CHECK(down->status == 503);
  CHECK(seconds_since(start) < 0.5);

  lattice.nats.start();
  auto restarted = Clock::now();
  CHECK(lattice.wait_until_proxy_works(5s));
  MESSAGE("/proxy answered again " << seconds_since(restarted) << " s after nats-server restarted");
  CHECK(lattice.healthy_within(5s));
}

TEST_CASE("faults: 32 concurrent clients for 2 s after a NATS recovery all succeed") {
  Lattice lattice;
  lattice.nats.kill();
  lattice.nats.start();
  REQUIRE(lattice.wait_until_proxy_works(5s));
  std::atomic<int> succeeded{0}, failed{0};
  auto stop_at = Clock::now() + 2s;
  std::vector<std::thread> clients;
  for (int c = 0; c < 32; ++c) {
    clients.emplace_back([&, c] {
      auto http = lattice.http();
      http.set_keep_alive(true);
      for (int i = 0; i < 200 && Clock::now() < stop_at; ++i) {
        auto body = "client " + std::to_string(c) + " request " + std::to_string(i);
        auto res = http.Post("/proxy/echo", body, "text/plain");
        if (res && res->status == 200 && res->body == body) {
          succeeded++;
        } else {
          if (failed++ < 5)
            MESSAGE(body << ": " << (res ? std::to_string(res->status) + " " + res->body : httplib::to_string(res.error())));
        }
      }
    });
  }
  for (auto &t : clients) t.join();
  MESSAGE(succeeded.load() << " requests succeeded");
  CHECK(failed == 0);
  CHECK(succeeded >= 32);
}

TEST_CASE("faults: a component that dies mid-body leaves a truncated chunked response; the provider keeps serving") {
  Lattice lattice("fault-component", {{"body_idle_timeout_ms", "1000"}});
  auto start = Clock::now();
  auto reply = testsupport::send_raw(lattice.http_port,
                                     "GET /proxy/fault/die-mid-body HTTP/1.1\r\nHost: x\r\n\r\n", 5s);
  CHECK(reply.closed);
  CHECK(seconds_since(start) < 3.0);
  CHECK(raw_status(reply.bytes) == 200);
  CHECK(reply.bytes.find("Transfer-Encoding: chunked\r\n") != std::string::npos);
  CHECK(reply.bytes.find("the first half of the body") != std::string::npos);
  CHECK(reply.bytes.find("\r\n0\r\n") == std::string::npos);  // no last chunk: the body is cut
  CHECK(lattice.component->wait(2000ms) == 3);                // it did die, as planned

  CHECK(lattice.provider->running());
  lattice.start_component("fault-component");
  auto res = lattice.http().Get("/proxy/ok");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "fault component ok");
}

// wasmCloud host 0.20.0 (wasmCloud 1.2) sends a response's body stream and trailers value
// complete, but never the empty message that closes their channels, as later hosts do.
TEST_CASE("faults: complete body and trailers on channels never closed (host 0.20.0) are answered at once") {
  Lattice lattice("fault-component", {{"body_idle_timeout_ms", "5000"}});
  auto start = Clock::now();
  auto reply = testsupport::send_raw(lattice.http_port, "GET /proxy/fault/unclosed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 8s);
  CHECK(seconds_since(start) < 1.0);
  CHECK(raw_status(reply.bytes) == 200);
  CHECK(reply.bytes.find("unclosed\r\n0\r\nx-checksum: abc123\r\n\r\n") != std::string::npos);
}

TEST_CASE("faults: a component's broken result is answered 502, and the provider keeps serving") {
  Lattice lattice("fault-component");
  for (std::string fault : {"garbage", "partial-head", "empty-result", "status/999"}) {
    INFO("fault: " << fault);
    auto start = Clock::now();
    auto res = lattice.http().Get("/proxy/fault/" + fault);
    REQUIRE(res);
    CHECK(res->status == 502);
    CHECK(seconds_since(start) < 1.0);  // known at once, not at timeout_ms
    auto next = lattice.http().Get("/proxy/ok");
    REQUIRE(next);
    CHECK(next->status == 200);
    CHECK(next->body == "fault component ok");
  }
  CHECK(lattice.provider->running());
}

// A wasmCloud host kills the provider as soon as its shutdown request is answered
// (wasmcloud-host 0.27.1: the process is spawned with kill_on_drop), so the answer waits for
// the requests in flight.
TEST_CASE("faults: a shutdown request with requests in flight is answered after they finished with 200; a kill then loses none") {
  Lattice lattice;
  std::vector<std::thread> clients;
  std::vector<int> statuses(3, 0);
  std::vector<std::string> bodies(3);
  for (size_t i = 0; i < statuses.size(); ++i) {
    clients.emplace_back([&, i] {
      auto res = lattice.http().Get("/proxy/sleep/1000");
      statuses[i] = res ? res->status : -1;
      bodies[i] = res ? res->body : httplib::to_string(res.error());
    });
  }
  std::this_thread::sleep_for(300ms);
  auto reply = lattice.client->request(testsupport::provider_subject("default.shutdown"),
                                       nlohmann::json({{"host_id", kHostId}}).dump(), 5000ms);
  CHECK(reply.data == "shutting down");
  lattice.provider->signal(SIGKILL);  // what the host does on the answer
  for (auto &t : clients) t.join();
  for (size_t i = 0; i < statuses.size(); ++i) {
    CHECK(statuses[i] == 200);
    CHECK(bodies[i] == "Hello from the component!");
  }
}

// ---- bad input at the HTTP edge ----

TEST_CASE("bad input: malformed request lines are refused and never forwarded") {
  Lattice lattice;
  lattice.count_invocations();
  const char tls_client_hello[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
  for (std::string line : std::vector<std::string>{"GARBAGE", "GET /proxy", "GET /proxy HTTP/1.1 extra",
                                                   "GET /proxy HTTP/2.7",
                                                   std::string(tls_client_hello, sizeof(tls_client_hello) - 1)}) {
    check_refused(testsupport::send_raw(lattice.http_port, line + "\r\nHost: x\r\n\r\n"), line);
  }
  check_nothing_was_forwarded(lattice);
}

TEST_CASE("bad input: a bad or negative Content-Length is refused and never forwarded") {
  Lattice lattice;
  lattice.count_invocations();
  for (std::string length : {"abc", "-1", "5x", "0x10", "99999999999999999999999", ""}) {
    check_refused(testsupport::send_raw(lattice.http_port,
                                        post_head("/proxy/count", "Content-Length: " + length + "\r\n") + "hello"),
                  "Content-Length: " + length);
  }
  check_nothing_was_forwarded(lattice);
}

TEST_CASE("bad input: two different Content-Length values are refused and never forwarded") {
  Lattice lattice;
  lattice.count_invocations();
  auto request = post_head("/proxy/count", "Content-Length: 5\r\nContent-Length: 10\r\n") + "hello";
  check_refused(testsupport::send_raw(lattice.http_port, request), "Content-Length: 5 and 10");
  check_nothing_was_forwarded(lattice);
}

// The classic request smuggling shape: a front proxy that frames by Content-Length would
// see one request; framed by chunked, a second one hides in the body.
TEST_CASE("bad input: Content-Length together with Transfer-Encoding is refused, and no request hidden in it runs") {
  Lattice lattice;
  lattice.count_invocations();
  std::string hidden = "POST /proxy/count HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
  std::string body = "0\r\n\r\n" + hidden;
  auto request = post_head("/proxy/count", "Content-Length: " + std::to_string(body.size()) +
                                               "\r\nTransfer-Encoding: chunked\r\n") + body;
  auto reply = testsupport::send_raw(lattice.http_port, request);
  check_refused(reply, "Content-Length with Transfer-Encoding");
  CHECK(reply.bytes.find("HTTP/1.1 200") == std::string::npos);
  check_nothing_was_forwarded(lattice);
}

TEST_CASE("bad input: the unread body of a request refused with 413 is never run as a further request") {
  Lattice lattice("demo-component", {{"max_content_len", "1K"}});
  lattice.count_invocations();
  std::string hidden = "POST /proxy/count HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
  std::string body = hidden + std::string(2000, 'x');
  auto request = post_head("/proxy/count", "Content-Length: " + std::to_string(body.size()) + "\r\n") + body;
  auto reply = testsupport::send_raw(lattice.http_port, request);
  CHECK(raw_status(reply.bytes) == 413);
  CHECK(reply.bytes.find("HTTP/1.1 200") == std::string::npos);
  check_nothing_was_forwarded(lattice);
}

TEST_CASE("bad input: a bad chunk size is refused and never forwarded") {
  Lattice lattice;
  lattice.count_invocations();
  for (std::string size : {"zz", "10000000000000000000", " ", "x5"}) {
    check_refused(testsupport::send_raw(lattice.http_port,
                                        post_head("/proxy/count", "Transfer-Encoding: chunked\r\n") + size +
                                            "\r\nhello\r\n0\r\n\r\n"),
                  "chunk size " + size);
  }
  check_nothing_was_forwarded(lattice);
}

TEST_CASE("bad input: a request line over 8 KiB is refused and never forwarded") {
  Lattice lattice;
  lattice.count_invocations();
  auto request = "GET /proxy/" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n";
  auto reply = testsupport::send_raw(lattice.http_port, request);
  check_refused(reply, "9000-byte path");
  CHECK(raw_status(reply.bytes) == 414);
  check_nothing_was_forwarded(lattice);
}

TEST_CASE("bad input: a request head over 64 KiB is refused with 431 and never forwarded") {
  Lattice lattice;
  lattice.count_invocations();
  auto request = "GET /proxy HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(70000, 'b') + "\r\n\r\n";
  auto reply = testsupport::send_raw(lattice.http_port, request);
  check_refused(reply, "70000-byte header");
  CHECK(raw_status(reply.bytes) == 431);
  check_nothing_was_forwarded(lattice);
}

TEST_CASE("bad input: a body over max_content_len with Content-Length is answered 413 and never forwarded") {
  Lattice lattice("demo-component", {{"max_content_len", "1K"}});
  lattice.count_invocations();
  auto res = lattice.http().Post("/proxy/count", std::string(2000, 'x'), "application/octet-stream");
  REQUIRE(res);
  CHECK(res->status == 413);
  auto at_limit = lattice.http().Post("/proxy/count", std::string(1024, 'x'), "application/octet-stream");
  REQUIRE(at_limit);
  CHECK(at_limit->status == 200);
  CHECK(at_limit->body == "1024 bytes");
  CHECK(lattice.invocations() == 1);  // the request at the limit
}

TEST_CASE("bad input: a chunked body over max_content_len is answered 413 while it streams") {
  Lattice lattice("demo-component", {{"max_content_len", "1K"}});
  std::string chunk = "200\r\n" + std::string(512, 'x') + "\r\n";
  auto request = post_head("/proxy/count", "Transfer-Encoding: chunked\r\n") + chunk + chunk + chunk + chunk +
                 "0\r\n\r\n";
  auto reply = testsupport::send_raw(lattice.http_port, request);
  CHECK(raw_status(reply.bytes) == 413);
  CHECK(lattice.http().Get("/proxy")->status == 200);
}

TEST_CASE("bad input: 300 clients stalled half-way through their request head do not starve a new request") {
  Lattice lattice;
  std::vector<int> stalled;
  for (int i = 0; i < 300; ++i) {
    int fd = testsupport::connect_loopback(lattice.http_port);
    std::string half = "GET /proxy HTTP/1.1\r\nHost: x\r\n";
    CHECK(::send(fd, half.data(), half.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(half.size()));
    stalled.push_back(fd);
  }
  std::this_thread::sleep_for(300ms);  // the provider has taken them all in
  auto http = lattice.http();
  http.set_read_timeout(3, 0);  // a failure should not take the stalled clients' 5 s
  auto start = Clock::now();
  auto res = http.Get("/proxy");
  double took = seconds_since(start);
  for (int fd : stalled) ::close(fd);
  MESSAGE("a new request with 300 stalled clients: " << (res ? std::to_string(res->status) : httplib::to_string(res.error()))
                                                     << " after " << took << " s");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(took < 2.0);
}

// ---- a director that picks the target from request data ----

namespace {

// A Forwarder in this process whose director takes the target from the header x-target,
// on a real nats-server; a second connection counts everything published on the lattice.
struct DirectedForwarder {
  NatsServer nats;
  wrpc_http::Logger logger;
  std::unique_ptr<wrpc_http::nats::Client> lattice, observer;
  std::unique_ptr<wrpc_http::Forwarder> forwarder;
  std::unique_ptr<wrpc_http::EdgeServer> server;
  int listen_fd = -1;
  std::thread server_thread;
  int port = testsupport::free_port();
  std::atomic<int> published{0};

  DirectedForwarder() {
    logger.configure(wrpc_http::Logger::Level::off, false);
    wrpc_http::nats::Options o;
    o.url = nats.url();
    observer = std::make_unique<wrpc_http::nats::Client>(o);
    observer->connect();
    observer->subscribe(">", [this](wrpc_http::nats::Message &) { published++; });
    observer->flush(2s);
    lattice = std::make_unique<wrpc_http::nats::Client>(o);
    lattice->connect();
    forwarder = std::make_unique<wrpc_http::Forwarder>(
        *lattice, "default", [](const httplib::Request &req) { return req.get_header_value("x-target"); },
        [] {
          wrpc_http::HttpSettings settings;
          settings.timeout = 500ms;
          return settings;
        },
        logger, "test-provider");
    server = std::make_unique<wrpc_http::EdgeServer>(wrpc_http::EdgeOptions{}, logger);
    forwarder->mount(*server, "/proxy");
    listen_fd = wrpc_http::EdgeServer::open_listener("127.0.0.1:" + std::to_string(port), server->options().listen_backlog);
    server_thread = std::thread([this] { server->serve(listen_fd); });
    REQUIRE(testsupport::wait_for_port(port));
  }
  ~DirectedForwarder() {
    server->stop(0ms);
    server_thread.join();
    ::close(listen_fd);
    lattice->close();
    observer->close();
  }

  httplib::Result get(const std::string &target) {
    httplib::Client http("127.0.0.1", port);
    http.set_read_timeout(5, 0);
    return http.Get("/proxy", {{"x-target", target}});
  }

  // Messages published on the lattice so far, by anyone.
  int publications() {
    observer->flush(2s);
    return published;
  }
};

}  // namespace

TEST_CASE("director: a target that is not a single NATS subject token is refused with 400, nothing published") {
  DirectedForwarder fixture;
  for (std::string target : {"a b", "*", ">", "a.b", "a.*", "a.>", "x\ty"}) {
    INFO("target: '" << target << "'");
    auto res = fixture.get(target);
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(res->body == "bad request: invalid target\n");
  }
  // A director with no answer means no route.
  auto unrouted = fixture.get("");
  REQUIRE(unrouted);
  CHECK(unrouted->status == 404);
  CHECK(fixture.publications() == 0);
  // A plain target is published (and, as the observer hears every subject, times out).
  auto res = fixture.get("nobody");
  REQUIRE(res);
  CHECK(res->status == 504);
  CHECK(fixture.publications() == 1);
}

TEST_CASE("director: a target with control bytes is refused with 400, nothing published") {
  DirectedForwarder fixture;
  for (std::string target : {"a\x01z", "a\x7fz"}) {
    INFO("target: '" << target << "'");
    auto res = fixture.get(target);
    REQUIRE(res);
    CHECK(res->status == 400);
  }
  CHECK(fixture.publications() == 0);
}

TEST_CASE("director: a target too long for a NATS subject is refused with 400, and the lattice connection survives") {
  DirectedForwarder fixture;
  // A call in flight meanwhile: it ends by its timeout (504), not by a lost connection (503).
  int in_flight_status = 0;
  std::thread in_flight([&] {
    auto res = fixture.get("nobody");
    in_flight_status = res ? res->status : -1;
  });
  std::this_thread::sleep_for(100ms);
  auto res = fixture.get(std::string(5000, 'a'));
  in_flight.join();
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(in_flight_status == 504);
}
