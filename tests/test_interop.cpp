// Interoperability against real processes: nats_lite (our client) with nats_peer (the
// official nats.go client), nats_lite's errors, nkey and JWT (decentralized) authentication
// against a real nats-server, and the provider binary authenticating with host-data creds.
#include <doctest/doctest.h>

#include "lattice.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>

using namespace std::chrono_literals;
using testsupport::build_path;
using testsupport::CapturedProcess;
using testsupport::eventually;
using testsupport::NatsServer;
using testsupport::run_capture;
using wrpc_http::nats::Client;
using wrpc_http::nats::Error;
using wrpc_http::nats::Message;
using wrpc_http::nats::Options;
namespace nkeys = wrpc_http::detail::nkeys;

namespace {

// The command line of build/`client` (nats_lite or nats_peer) against the server at `url`.
std::vector<std::string> client_argv(const std::string &client, const std::string &url,
                                     std::vector<std::string> args) {
  args.insert(args.begin(), {build_path(client), "--server", url});
  return args;
}

std::vector<std::string> nats_lite(const NatsServer &server, std::vector<std::string> args) {
  return client_argv("nats_lite", server.url(), std::move(args));
}

std::vector<std::string> nats_peer(const NatsServer &server, std::vector<std::string> args) {
  return client_argv("nats_peer", server.url(), std::move(args));
}

size_t line_count(const std::string &text) { return static_cast<size_t>(std::count(text.begin(), text.end(), '\n')); }

bool contains(const std::string &haystack, const std::string &needle) {
  return haystack.find(needle) != std::string::npos;
}

// A nats-server started with the configuration `config` (read once, at start).
std::unique_ptr<NatsServer> server_with_config(const std::string &config) {
  std::string path = testsupport::temp_file(config, ".conf");
  struct Remove {
    std::string path;
    ~Remove() { std::remove(path.c_str()); }
  } remove{path};
  return std::make_unique<NatsServer>(0, std::vector<std::string>{"-c", path});
}

Options authenticated(const NatsServer &server, const std::string &seed, const std::string &jwt = "") {
  Options o;
  o.url = server.url();
  o.user_seed = seed;
  o.user_jwt = jwt;
  o.max_reconnect_attempts = 0;
  return o;
}

// Request/reply between two clients of the same server: proves the connection is usable.
void check_request_reply(Options responder_options, Options requester_options) {
  Client responder(std::move(responder_options)), requester(std::move(requester_options));
  responder.connect();
  requester.connect();
  responder.subscribe("auth.echo", [&](Message &m) { responder.publish(m.reply, "echo:" + m.data); });
  responder.flush(2s);
  CHECK(requester.request("auth.echo", "hi", 2s).data == "echo:hi");
}

// ---- decentralized auth: NATS v2 JWTs (nats-io/jwt v2 claim layout) ----

struct Identity {
  nkeys::key_pair keys;
  std::string jwt;
};

// `jti` is a hash of the claims in nats-io/jwt; nats-server does not check it (jwt.Decode
// verifies header, signature and issuer prefix only), so a unique random id does.
std::string claims_json(const std::string &issuer, const std::string &subject, const std::string &name,
                        nlohmann::json nats) {
  nlohmann::json claims = {{"jti", wrpc_http::detail::random_token(52)},
                           {"iat", static_cast<long long>(std::time(nullptr))},
                           {"iss", issuer},
                           {"name", name},
                           {"sub", subject},
                           {"nats", std::move(nats)}};
  return claims.dump();
}

Identity make_operator() {
  Identity op{nkeys::create_key_pair(nkeys::key_type::operator_), ""};
  op.jwt = nkeys::encode_jwt(
      claims_json(op.keys.public_key, op.keys.public_key, "test-operator", {{"type", "operator"}, {"version", 2}}),
      op.keys.seed, nkeys::nats_jwt_header);
  return op;
}

Identity make_account(const Identity &op, const std::string &name) {
  Identity acc{nkeys::create_key_pair(nkeys::key_type::account), ""};
  nlohmann::json nats = {{"limits",
                          {{"subs", -1},
                           {"data", -1},
                           {"payload", -1},
                           {"imports", -1},
                           {"exports", -1},
                           {"wildcards", true},
                           {"conn", -1},
                           {"leaf", -1}}},
                         {"default_permissions", {{"pub", nlohmann::json::object()}, {"sub", nlohmann::json::object()}}},
                         {"type", "account"},
                         {"version", 2}};
  acc.jwt = nkeys::encode_jwt(claims_json(op.keys.public_key, acc.keys.public_key, name, nats), op.keys.seed,
                              nkeys::nats_jwt_header);
  return acc;
}

Identity make_user(const Identity &account, const std::string &name) {
  Identity user{nkeys::create_key_pair(nkeys::key_type::user), ""};
  nlohmann::json nats = {{"pub", nlohmann::json::object()},
                         {"sub", nlohmann::json::object()},
                         {"subs", -1},
                         {"data", -1},
                         {"payload", -1},
                         {"type", "user"},
                         {"version", 2}};
  user.jwt = nkeys::encode_jwt(claims_json(account.keys.public_key, user.keys.public_key, name, nats),
                               account.keys.seed, nkeys::nats_jwt_header);
  return user;
}

// Operator mode with an in-memory resolver preloaded with `account`.
std::string operator_config(const Identity &op, const Identity &account) {
  return "operator: \"" + op.jwt + "\"\n" +
         "resolver: MEMORY\n"
         "resolver_preload: {\n"
         "  " +
         account.keys.public_key + ": \"" + account.jwt + "\"\n" + "}\n";
}

std::string nkey_config(const std::string &user_public_key) {
  return "authorization {\n  users = [\n    { nkey: \"" + user_public_key + "\" }\n  ]\n}\n";
}

}  // namespace

// ---- nats_lite <-> nats.go ----

TEST_CASE("interop: a request from nats_lite req is answered by a nats.go responder") {
  NatsServer server;
  CapturedProcess responder(nats_peer(server, {"reply", "interop.svc", "from-go"}));
  REQUIRE(responder.wait_for_stdout("ready", 3s));
  auto r = run_capture(nats_lite(server, {"req", "interop.svc", "question"}), 3s);
  CHECK(r.exit_code == 0);
  CHECK(r.out == "from-go\n");
  CHECK(r.err.empty());
}

TEST_CASE("interop: a request from nats.go is answered by nats_lite reply") {
  NatsServer server;
  CapturedProcess responder(nats_lite(server, {"reply", "interop.svc", "from-cpp"}));
  REQUIRE(responder.wait_for_stderr("listening on interop.svc", 3s));
  auto r = run_capture(nats_peer(server, {"req", "interop.svc", "question"}), 3s);
  CHECK(r.exit_code == 0);
  CHECK(r.out == "from-cpp\n");
}

TEST_CASE("interop: a message from nats_lite pub reaches a nats.go subscriber") {
  NatsServer server;
  CapturedProcess subscriber(nats_peer(server, {"sub", "interop.news", "--count", "1"}));
  REQUIRE(subscriber.wait_for_stdout("ready", 3s));
  auto pub = run_capture(nats_lite(server, {"pub", "interop.news", "hello from cpp"}), 3s);
  CHECK(pub.exit_code == 0);
  auto sub = subscriber.finish(3s);
  CHECK(sub.exit_code == 0);
  CHECK(sub.out == "ready\nhello from cpp\n");
}

TEST_CASE("interop: a message from nats.go reaches nats_lite sub, which stops after --count") {
  NatsServer server;
  CapturedProcess subscriber(nats_lite(server, {"sub", "interop.news", "--count", "1"}));
  REQUIRE(subscriber.wait_for_stderr("listening on interop.news", 3s));
  auto pub = run_capture(nats_peer(server, {"pub", "interop.news", "hello from go"}), 3s);
  CHECK(pub.exit_code == 0);
  auto sub = subscriber.finish(3s);
  CHECK(sub.exit_code == 0);
  CHECK(sub.out == "hello from go\n");
}

// ---- nats_lite errors ----

TEST_CASE("nats_lite errors: without a server it exits non-zero with a one-line reason") {
  std::string url = "nats://127.0.0.1:" + std::to_string(testsupport::free_port());
  for (auto cmd : std::vector<std::vector<std::string>>{{"pub", "a", "x"}, {"req", "a", "x"}, {"sub", "a"}}) {
    auto r = run_capture(client_argv("nats_lite", url, cmd), 3s);
    CAPTURE(cmd[0]);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != -1);
    CHECK(line_count(r.err) == 1);
    CHECK(contains(r.err, "cannot connect"));
    CHECK(r.out.empty());
  }
}

TEST_CASE("nats_lite errors: req with no responders fails fast and says so") {
  NatsServer server;
  auto r = run_capture(nats_lite(server, {"req", "nobody.home", "x", "--timeout-ms", "5000"}), 6s);
  CHECK(r.exit_code != 0);
  CHECK(r.exit_code != -1);
  CHECK(contains(r.err, "no responders"));
  CHECK(line_count(r.err) == 1);
  CHECK(r.elapsed < 1000ms);
}

TEST_CASE("nats_lite errors: req to a subscriber that never answers times out") {
  NatsServer server;
  CapturedProcess silent(nats_peer(server, {"sub", "silent.svc"}));
  REQUIRE(silent.wait_for_stdout("ready", 3s));
  auto r = run_capture(nats_lite(server, {"req", "silent.svc", "x", "--timeout-ms", "300"}), 3s);
  CHECK(r.exit_code != 0);
  CHECK(r.exit_code != -1);
  CHECK(contains(r.err, "timed out"));
  CHECK(line_count(r.err) == 1);
  CHECK(r.elapsed >= 300ms);
  CHECK(r.elapsed < 2000ms);
}

TEST_CASE("nats_lite errors: bad usage exits 2 with the usage text") {
  std::string lite = build_path("nats_lite");
  for (auto argv : std::vector<std::vector<std::string>>{{lite},
                                                         {lite, "frobnicate", "a"},
                                                         {lite, "pub", "a"},
                                                         {lite, "sub", "a", "extra"},
                                                         {lite, "sub", "a", "--count", "many"},
                                                         {lite, "--bogus", "pub", "a", "x"}}) {
    auto r = run_capture(argv, 3s);
    CAPTURE(argv.size() > 1 ? argv[1] : "(no arguments)");
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, "usage"));
  }
}

TEST_CASE("nats_lite errors: sub exits non-zero when the server goes away") {
  auto server = std::make_unique<NatsServer>();
  CapturedProcess subscriber(nats_lite(*server, {"sub", "doomed"}));
  REQUIRE(subscriber.wait_for_stderr("listening on doomed", 3s));
  server.reset();
  auto r = subscriber.finish(3s);
  CHECK(r.exit_code != 0);
  CHECK(r.exit_code != -1);
  CHECK(contains(r.err, "lost the NATS server"));
}

// ---- nkey authentication ----

TEST_CASE("nkey auth: a client with the user's seed connects and does request/reply") {
  auto user = nkeys::create_key_pair(nkeys::key_type::user);
  auto server = server_with_config(nkey_config(user.public_key));
  check_request_reply(authenticated(*server, user.seed), authenticated(*server, user.seed));
}

TEST_CASE("nkey auth: a client with another seed is refused with an authorization error") {
  auto user = nkeys::create_key_pair(nkeys::key_type::user);
  auto server = server_with_config(nkey_config(user.public_key));
  auto stranger = nkeys::create_key_pair(nkeys::key_type::user);
  Client c(authenticated(*server, stranger.seed));
  try {
    c.connect();
    FAIL("connect with an unknown nkey should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::connect);
    CHECK(contains(e.what(), "Authorization Violation"));
  }
  CHECK_FALSE(c.connected());
}

TEST_CASE("nkey auth: a client without credentials is refused") {
  auto user = nkeys::create_key_pair(nkeys::key_type::user);
  auto server = server_with_config(nkey_config(user.public_key));
  Options o;
  o.url = server->url();
  Client c(o);
  CHECK_THROWS_AS(c.connect(), Error);
}

// ---- JWT (decentralized) authentication ----

TEST_CASE("jwt auth: a user of an account the operator trusts connects and does request/reply") {
  auto op = make_operator();
  auto account = make_account(op, "APP");
  auto alice = make_user(account, "alice"), bob = make_user(account, "bob");
  auto server = server_with_config(operator_config(op, account));
  check_request_reply(authenticated(*server, alice.keys.seed, alice.jwt),
                      authenticated(*server, bob.keys.seed, bob.jwt));
}

TEST_CASE("jwt auth: a user JWT presented with a seed other than its subject's is refused") {
  auto op = make_operator();
  auto account = make_account(op, "APP");
  auto alice = make_user(account, "alice");
  auto server = server_with_config(operator_config(op, account));
  auto other = nkeys::create_key_pair(nkeys::key_type::user);
  Client c(authenticated(*server, other.seed, alice.jwt));
  try {
    c.connect();
    FAIL("connect with a mismatched seed should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::connect);
    CHECK(contains(e.what(), "Authorization Violation"));
  }
}

TEST_CASE("jwt auth: a user of an account the server does not know is refused") {
  auto op = make_operator();
  auto account = make_account(op, "APP");
  auto server = server_with_config(operator_config(op, account));
  auto unknown_account = make_account(op, "OTHER");  // signed by the operator, not preloaded
  auto mallory = make_user(unknown_account, "mallory");
  Client c(authenticated(*server, mallory.keys.seed, mallory.jwt));
  try {
    c.connect();
    FAIL("connect as a user of an unknown account should have thrown");
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::connect);
    CHECK(contains(e.what(), "Authorization Violation"));
  }
}

// ---- the provider binary with credentials from host data ----

namespace {

// The provider started like a wasmCloud host does: base64 host data on stdin, with the
// lattice credentials of `user`, serving HTTP on a free loopback port.
struct ProviderUnderTest {
  int http_port = testsupport::free_port();
  testsupport::ProviderProcess process;

  ProviderUnderTest(const NatsServer &server, const Identity &user)
      : process([&] {
          auto host_data = testsupport::host_data(server.url(), {{"address", testsupport::loopback(http_port)}});
          host_data["host_id"] = nkeys::create_key_pair(nkeys::key_type::server).public_key;
          host_data["lattice_rpc_user_jwt"] = user.jwt;
          host_data["lattice_rpc_user_seed"] = user.keys.seed;
          return host_data;
        }()) {}
};

}  // namespace

TEST_CASE("provider with jwt auth: answers its health subject to another user of the same account") {
  auto op = make_operator();
  auto account = make_account(op, "LATTICE");
  auto provider_user = make_user(account, "provider"), host_user = make_user(account, "host");
  auto server = server_with_config(operator_config(op, account));
  ProviderUnderTest provider(*server, provider_user);

  Client host(authenticated(*server, host_user.keys.seed, host_user.jwt));
  host.connect();
  Message reply;
  // The provider subscribes once it has connected: until then the server has no responders.
  REQUIRE(eventually([&] {
    try {
      reply = host.request("wasmbus.rpc.default.http-http_provider.health", "", 500ms);
      return true;
    } catch (const Error &e) {
      if (e.kind() != Error::Kind::no_responders) throw;
      return false;
    }
  }));
  auto health = nlohmann::json::parse(reply.data);
  CHECK(health.value("healthy", false));
  CHECK(provider.process.running());
}

TEST_CASE("provider with jwt auth: serves GET / on its configured HTTP address") {
  auto op = make_operator();
  auto account = make_account(op, "LATTICE");
  auto provider_user = make_user(account, "provider");
  auto server = server_with_config(operator_config(op, account));
  ProviderUnderTest provider(*server, provider_user);
  REQUIRE(testsupport::wait_for_port(provider.http_port, 3000ms));
  httplib::Client http("127.0.0.1", provider.http_port);
  auto res = http.Get("/");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "Hello from the provider!");
}

TEST_CASE("provider with jwt auth: exits non-zero when the lattice refuses its credentials") {
  auto op = make_operator();
  auto account = make_account(op, "LATTICE");
  auto server = server_with_config(operator_config(op, account));
  auto stranger_account = make_account(op, "STRANGER");  // not preloaded on the server
  ProviderUnderTest provider(*server, make_user(stranger_account, "provider"));
  int exit_code = provider.process.wait(3000ms);
  CHECK(exit_code > 0);
  CHECK(exit_code < 128);
  CHECK(contains(provider.process.log(), "Authorization Violation"));
}
