// The NATS client: protocol parsing (unit) and behaviour against a real nats-server.
#include <doctest/doctest.h>

#include "../wrpc_http_provider.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using testsupport::eventually;
using wrpc_http::nats::Client;
using wrpc_http::nats::Error;
using wrpc_http::nats::Message;
using wrpc_http::nats::Options;

namespace {

struct Collected {
  std::vector<Message> msgs;
  std::vector<uint64_t> sids;
  std::vector<std::string> infos, errs;
  int pings = 0, pongs = 0, oks = 0;
};

wrpc_http::detail::NatsParser collecting_parser(Collected &c) {
  return wrpc_http::detail::NatsParser({[&](Message &m, uint64_t sid) {
                                          c.msgs.push_back(m);
                                          c.sids.push_back(sid);
                                        },
                                        [&](const std::string &j) { c.infos.push_back(j); },
                                        [&] { c.pings++; }, [&] { c.pongs++; }, [&] { c.oks++; },
                                        [&](const std::string &e) { c.errs.push_back(e); }});
}

const std::string kStream =
    "INFO {\"max_payload\":1048576}\r\n"
    "PING\r\n"
    "MSG foo.bar 7 5\r\nhello\r\n"
    "MSG foo 8 _INBOX.x.1 0\r\n\r\n"
    "HMSG _INBOX.a.1 3 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    "HMSG h 4 r 23 26\r\nNATS/1.0\r\nX-Key: v1\r\n\r\nabc\r\n"
    "+OK\r\n"
    "PONG\r\n"
    "-ERR 'Authorization Violation'\r\n";

void check_stream(const Collected &c) {
  REQUIRE(c.msgs.size() == 4);
  CHECK(c.infos.size() == 1);
  CHECK(c.pings == 1);
  CHECK(c.pongs == 1);
  CHECK(c.oks == 1);
  REQUIRE(c.errs.size() == 1);
  CHECK(c.errs[0] == "'Authorization Violation'");
  CHECK(c.msgs[0].subject == "foo.bar");
  CHECK(c.sids[0] == 7);
  CHECK(c.msgs[0].data == "hello");
  CHECK(c.msgs[1].reply == "_INBOX.x.1");
  CHECK(c.msgs[1].data.empty());
  CHECK(c.msgs[2].no_responders());
  CHECK(c.msgs[2].data.empty());
  CHECK(c.msgs[3].status == 0);
  CHECK(c.msgs[3].reply == "r");
  CHECK(c.msgs[3].header("x-key") == "v1");
  CHECK(c.msgs[3].data == "abc");
}

}  // namespace

TEST_CASE("nats parser: reads a stream of every server operation") {
  Collected c;
  auto parser = collecting_parser(c);
  parser.feed(kStream.data(), kStream.size());
  check_stream(c);
}

TEST_CASE("nats parser: any split of the input gives the same operations") {
  for (size_t split = 1; split < kStream.size(); ++split) {
    Collected c;
    auto parser = collecting_parser(c);
    parser.feed(kStream.data(), split);
    parser.feed(kStream.data() + split, kStream.size() - split);
    check_stream(c);
  }
}

TEST_CASE("nats parser: one byte at a time gives the same operations") {
  Collected c;
  auto parser = collecting_parser(c);
  for (char ch : kStream) parser.feed(&ch, 1);
  check_stream(c);
}

TEST_CASE("nats parser: rejects garbage, bad sizes and unterminated payloads") {
  for (std::string bad : {std::string("HELLO world\r\n"), std::string("MSG a 1 x\r\n"),
                          std::string("MSG a 1 3\r\nabcXY"), std::string("HMSG a 1 10 5\r\n"),
                          std::string("HMSG a 1 6 6\r\nHTTP/1\r\n"), std::string(5000, 'A')}) {
    Collected c;
    auto parser = collecting_parser(c);
    CHECK_THROWS_AS(parser.feed(bad.data(), bad.size()), Error);
  }
}

TEST_CASE("nats url: credentials, token, port and default host") {
  auto u = wrpc_http::detail::parse_nats_url("nats://alice:s3cret@example.com:4333");
  CHECK(u.host == "example.com");
  CHECK(u.port == "4333");
  CHECK(u.user == "alice");
  CHECK(u.password == "s3cret");
  auto t = wrpc_http::detail::parse_nats_url("nats://tok@127.0.0.1");
  CHECK(t.token == "tok");
  CHECK(t.port == "4222");
  CHECK_THROWS_AS(wrpc_http::detail::parse_nats_url("http://x:1"), Error);
  CHECK_THROWS_AS(wrpc_http::detail::parse_nats_url("nats://x:port"), Error);
}

TEST_CASE("nats subjects: wildcards only where subscribing, no empty tokens or spaces") {
  using wrpc_http::detail::valid_subject;
  CHECK(valid_subject("a.b.c", false));
  CHECK(valid_subject("a.*.>", true));
  CHECK_FALSE(valid_subject("a.*", false));
  CHECK_FALSE(valid_subject("a..b", true));
  CHECK_FALSE(valid_subject("a b", true));
  CHECK_FALSE(valid_subject("", true));
  CHECK_FALSE(valid_subject("a.", true));
}

namespace {
Options options_for(const testsupport::NatsServer &server) {
  Options o;
  o.url = server.url();
  o.reconnect_wait_min = 20ms;
  o.reconnect_wait_max = 200ms;
  return o;
}
}  // namespace

TEST_CASE("nats client: connecting to a port with no server fails with a clear error") {
  Options o;
  o.url = "nats://127.0.0.1:" + std::to_string(testsupport::free_port());
  Client c(o);
  try {
    c.connect();
    FAIL("connect should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::connect);
    CHECK(std::string(e.what()).find("cannot connect") != std::string::npos);
  }
}

TEST_CASE("nats client: publish reaches a subscriber with headers and payload intact") {
  testsupport::NatsServer server;
  Client pub(options_for(server)), sub(options_for(server));
  pub.connect();
  sub.connect();
  std::mutex mu;
  std::vector<Message> got;
  sub.subscribe("greet.*", [&](Message &m) {
    std::lock_guard<std::mutex> lk(mu);
    got.push_back(m);
  });
  sub.flush(2s);
  wrpc_http::nats::Headers h = {{"X-Trace", "abc"}, {"X-Trace", "def"}};
  pub.publish("greet.world", std::string("hi\0there", 8), "", &h);
  pub.publish("greet.plain", "");
  REQUIRE(eventually([&] {
    std::lock_guard<std::mutex> lk(mu);
    return got.size() == 2;
  }));
  CHECK(got[0].subject == "greet.world");
  CHECK(got[0].data == std::string("hi\0there", 8));
  REQUIRE(got[0].headers.size() == 2);
  CHECK(got[0].headers[1].second == "def");
  CHECK(got[1].data.empty());
}

TEST_CASE("nats client: a subscription made before connect receives once connected") {
  testsupport::NatsServer server;
  Client pub(options_for(server)), sub(options_for(server));
  std::atomic<int> got{0};
  sub.subscribe("early", [&](Message &) { got++; });
  sub.connect();
  sub.flush(2s);
  pub.connect();
  pub.publish("early", "x");
  CHECK(eventually([&] { return got == 1; }));
}

TEST_CASE("nats client: request gets the reply through the shared inbox") {
  testsupport::NatsServer server;
  Client a(options_for(server)), b(options_for(server));
  a.connect();
  b.connect();
  b.subscribe("echo", [&](Message &m) { b.publish(m.reply, "re:" + m.data); });
  b.flush(2s);
  for (int i = 0; i < 50; ++i) CHECK(a.request("echo", std::to_string(i), 2s).data == "re:" + std::to_string(i));
}

TEST_CASE("nats client: request to a subject nobody serves fails fast with no responders") {
  testsupport::NatsServer server;
  Client a(options_for(server));
  a.connect();
  auto start = std::chrono::steady_clock::now();
  try {
    a.request("nobody.home", "x", 5s);
    FAIL("request should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::no_responders);
  }
  CHECK(std::chrono::steady_clock::now() - start < 1s);
}

TEST_CASE("nats client: request without an answer times out") {
  testsupport::NatsServer server;
  Client a(options_for(server)), b(options_for(server));
  a.connect();
  b.connect();
  b.subscribe("silent", [](Message &) {});
  b.flush(2s);
  try {
    a.request("silent", "x", 200ms);
    FAIL("request should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::timeout);
  }
}

TEST_CASE("nats client: queue group members share the messages") {
  testsupport::NatsServer server;
  Client pub(options_for(server)), s1(options_for(server)), s2(options_for(server));
  pub.connect();
  s1.connect();
  s2.connect();
  std::atomic<int> n1{0}, n2{0};
  s1.subscribe("work", [&](Message &) { n1++; }, "workers");
  s2.subscribe("work", [&](Message &) { n2++; }, "workers");
  s1.flush(2s);
  s2.flush(2s);
  for (int i = 0; i < 200; ++i) pub.publish("work", "x");
  pub.flush(2s);
  REQUIRE(eventually([&] { return n1 + n2 == 200; }));
  CHECK(n1 > 0);
  CHECK(n2 > 0);
}

TEST_CASE("nats client: unsubscribe with a maximum stops after that many messages") {
  testsupport::NatsServer server;
  Client c(options_for(server));
  c.connect();
  std::atomic<int> n{0};
  auto sid = c.subscribe("limited", [&](Message &) { n++; });
  c.unsubscribe(sid, 3);
  c.flush(2s);
  for (int i = 0; i < 10; ++i) c.publish("limited", "x");
  c.flush(2s);
  std::this_thread::sleep_for(100ms);
  CHECK(n == 3);
}

TEST_CASE("nats client: a payload over the server's max_payload is rejected before sending") {
  testsupport::NatsServer server(0, {"-c", testsupport::temp_file("max_payload: 1024\n")});
  Client c(options_for(server));
  c.connect();
  CHECK(c.max_payload() == 1024);
  try {
    c.publish("big", std::string(2000, 'x'));
    FAIL("publish should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::payload_too_large);
  }
  c.publish("fits", std::string(1000, 'x'));
  c.flush(2s);
}

TEST_CASE("nats client: reconnects after a server restart and restores subscriptions") {
  testsupport::NatsServer server;
  Client pub(options_for(server)), sub(options_for(server));
  pub.connect();
  sub.connect();
  std::atomic<int> got{0};
  sub.subscribe("after.restart", [&](Message &) { got++; });
  sub.subscribe("svc", [&](Message &m) { sub.publish(m.reply, "pong"); });
  sub.flush(2s);
  server.kill();
  REQUIRE(eventually([&] { return !pub.connected() && !sub.connected(); }));
  try {
    pub.publish("after.restart", "lost");
    FAIL("publish while disconnected should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::disconnected);
  }
  server.start();
  REQUIRE(eventually([&] { return pub.connected() && sub.connected(); }));
  sub.flush(2s);
  pub.publish("after.restart", "x");
  REQUIRE(eventually([&] { return got == 1; }));
  CHECK(pub.request("svc", "ping", 2s).data == "pong");
}

TEST_CASE("nats client: a caller waiting for a reply gets an error when the connection drops") {
  auto server = std::make_unique<testsupport::NatsServer>();
  Client a(options_for(*server)), b(options_for(*server));
  a.connect();
  b.connect();
  b.subscribe("slow", [](Message &) {});
  b.flush(2s);
  std::thread killer([&] {
    std::this_thread::sleep_for(200ms);
    server->kill();
  });
  auto start = std::chrono::steady_clock::now();
  try {
    a.request("slow", "x", 10s);
    FAIL("request should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::disconnected);
  }
  CHECK(std::chrono::steady_clock::now() - start < 3s);
  killer.join();
}

TEST_CASE("nats client: close flushes what was published before") {
  testsupport::NatsServer server;
  Client sub(options_for(server));
  sub.connect();
  std::atomic<int> got{0};
  sub.subscribe("bulk", [&](Message &) { got++; });
  sub.flush(2s);
  {
    Client pub(options_for(server));
    pub.connect();
    for (int i = 0; i < 1000; ++i) pub.publish("bulk", std::string(100, 'x'));
    pub.close();
  }
  CHECK(eventually([&] { return got == 1000; }));
}

TEST_CASE("nats client: user and password from the URL authenticate") {
  testsupport::NatsServer server(0, {"--user", "alice", "--pass", "wonder"});
  Options good;
  good.url = "nats://alice:wonder@127.0.0.1:" + std::to_string(server.port());
  Client ok(good);
  ok.connect();
  CHECK(ok.connected());
  Options bad = good;
  bad.url = "nats://alice:wrong@127.0.0.1:" + std::to_string(server.port());
  Client refused(bad);
  CHECK_THROWS_AS(refused.connect(), Error);
}

TEST_CASE("nats client: a token from the URL authenticates") {
  testsupport::NatsServer server(0, {"--auth", "t0ken"});
  Options good;
  good.url = "nats://t0ken@127.0.0.1:" + std::to_string(server.port());
  Client ok(good);
  ok.connect();
  CHECK(ok.connected());
}
