// Security at the edges: HTTPS listener, link secrets sealed with xkeys, the xkey link subject.
#include <doctest/doctest.h>

#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::kProviderKey;
using testsupport::SelfSigned;
using testsupport::shell;
namespace nkeys = wrpc_http::detail::nkeys;

namespace {

nlohmann::json sealed_bytes(const std::string &sealed) {
  nlohmann::json out = nlohmann::json::array();
  for (unsigned char c : sealed) out.push_back(c);
  return out;
}

// Host data with xkeys, as hosts >= 1.1 send it.
struct XkeyHost {
  nkeys::key_pair host = nkeys::create_key_pair(nkeys::key_type::curve);
  nkeys::key_pair provider = nkeys::create_key_pair(nkeys::key_type::curve);

  wrpc_http::HostData host_data(const testsupport::NatsServer &nats, int http_port) const {
    wrpc_http::HostData h;
    h.host_id = "NHOSTFORTESTS";
    h.lattice_rpc_url = nats.url();
    h.provider_key = kProviderKey;
    h.host_xkey_public_key = host.public_key;
    h.provider_xkey_private_key = provider.seed;
    h.config = {{"address", "127.0.0.1:" + std::to_string(http_port)}};
    h.log_level = "error";
    return h;
  }

  // A source link whose provider-side secrets are sealed for the provider.
  nlohmann::json link_with_secret(const std::string &target) const {
    auto secrets = R"({"api_token":{"kind":"String","value":"t0p-s3cret"},"raw":{"kind":"Bytes","value":[1,2,255]}})";
    auto link = testsupport::link_to(target);
    link["source_secrets"] = sealed_bytes(nkeys::xkey_seal(secrets, provider.public_key, host.seed));
    return link;
  }
};

// Runs Provider::run() on a thread; shuts it down and joins on destruction.
struct RunningProvider {
  wrpc_http::Provider provider;
  std::thread thread;
  int exit_code = -1;
  explicit RunningProvider(wrpc_http::HostData h) : provider(std::move(h)) {}
  void start() {
    thread = std::thread([this] { exit_code = provider.run(); });
  }
  ~RunningProvider() {
    provider.request_shutdown();
    if (thread.joinable()) thread.join();
  }
};

}  // namespace

TEST_CASE("https: with tls_cert_file and tls_priv_key_file the listener serves HTTPS") {
  SelfSigned pair;
  testsupport::NatsServer nats;
  int port = testsupport::free_port();
  testsupport::ProviderProcess provider(testsupport::host_data(
      nats.url(),
      {{"address", testsupport::loopback(port)}, {"tls_cert_file", pair.cert}, {"tls_priv_key_file", pair.key}}));
  REQUIRE(testsupport::wait_for_port(port));
  auto body = shell("curl -s --cacert " + pair.cert + " https://127.0.0.1:" + std::to_string(port) + "/");
  CHECK(body == "Hello from the provider!");
  // Plain HTTP on the HTTPS port gets no HTTP answer.
  CHECK(shell("curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:" + std::to_string(port) +
              "/ || true") != "200");
}

TEST_CASE("https: a missing certificate file stops the provider with a clear error") {
  auto err = testsupport::refused_config({{"address", testsupport::loopback(testsupport::free_port())},
                                          {"tls_cert_file", "/nonexistent/cert.pem"},
                                          {"tls_priv_key_file", "/nonexistent/key.pem"}});
  CHECK(err.find("cannot load the TLS certificate") != std::string::npos);
}

TEST_CASE("link secrets: secrets in host data links are opened with the provider's xkey") {
  testsupport::NatsServer nats;
  XkeyHost keys;
  auto h = keys.host_data(nats, testsupport::free_port());
  h.link_definitions.push_back(wrpc_http::LinkDefinition::from_json(keys.link_with_secret("http-http_component")));
  wrpc_http::Provider provider(h);
  auto links = provider.source_links();
  REQUIRE(links.size() == 1);
  REQUIRE(links[0].secrets.count("api_token") == 1);
  CHECK(links[0].secrets.at("api_token").value == "t0p-s3cret");
  CHECK_FALSE(links[0].secrets.at("api_token").is_bytes);
  CHECK(links[0].secrets.at("raw").is_bytes);
  CHECK(links[0].secrets.at("raw").value == std::string("\x01\x02\xff", 3));
}

TEST_CASE("link secrets: a link put arrives on the xkey subject and its secrets reach the application") {
  testsupport::NatsServer nats;
  XkeyHost keys;
  int port = testsupport::free_port();
  RunningProvider running(keys.host_data(nats, port));
  std::mutex mu;
  std::vector<wrpc_http::LinkDefinition> seen;
  running.provider.on_source_link_put([&](const wrpc_http::LinkDefinition &link) {
    std::lock_guard<std::mutex> lk(mu);
    seen.push_back(link);
  });
  running.start();
  REQUIRE(testsupport::wait_for_port(port));

  wrpc_http::nats::Options o;
  o.url = nats.url();
  wrpc_http::nats::Client host(o);
  host.connect();
  auto link = keys.link_with_secret("http-http_component");
  // Hosts >= 1.1 send link puts to the provider's xkey, never to its id.
  host.publish("wasmbus.rpc.default." + std::string(kProviderKey) + ".linkdefs.put", link.dump());
  host.publish("wasmbus.rpc.default." + keys.provider.public_key + ".linkdefs.put", link.dump());
  host.flush(2s);
  for (int i = 0; i < 100; ++i) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (!seen.empty()) break;
    }
    std::this_thread::sleep_for(20ms);
  }
  std::this_thread::sleep_for(100ms);
  std::lock_guard<std::mutex> lk(mu);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].secrets.at("api_token").value == "t0p-s3cret");
}

TEST_CASE("link secrets: secrets sealed for another key are refused and the link is not added") {
  testsupport::NatsServer nats;
  XkeyHost keys, strangers;
  auto h = keys.host_data(nats, testsupport::free_port());
  h.link_definitions.push_back(
      wrpc_http::LinkDefinition::from_json(strangers.link_with_secret("http-http_component")));
  wrpc_http::Provider provider(h);
  CHECK(provider.source_links().empty());
}
