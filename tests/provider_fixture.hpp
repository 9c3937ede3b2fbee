// build/http-server under test with the host data a test asks for (config, links,
// otel_config), next to a real nats-server and the demo component, and curl as its client.
#pragma once

#include <doctest/doctest.h>

#include "../wrpc_http_provider.hpp"
#include "support.hpp"

namespace testsupport {

inline const char *const kFixtureProvider = "http-http_provider";
inline const char *const kFixtureComponent = "http-http_component";

// The host data line a wasmCloud host writes on the provider's stdin.
inline std::string host_data_line(const std::string &nats_url, const nlohmann::json &config,
                                  const nlohmann::json &links = nlohmann::json::array(),
                                  const nlohmann::json &otel_config = nlohmann::json::object()) {
  nlohmann::json j = {{"host_id", "NHOSTFORTESTS"},       {"lattice_rpc_prefix", "default"},
                      {"lattice_rpc_url", nats_url},       {"provider_key", kFixtureProvider},
                      {"instance_id", "fixture-instance"}, {"link_definitions", links},
                      {"config", config},                  {"otel_config", otel_config},
                      {"log_level", "debug"}};
  return wrpc_http::detail::base64_encode(j.dump()) + "\n";
}

inline nlohmann::json link_with(const nlohmann::json &source_config) {
  return {{"source_id", kFixtureProvider}, {"target", kFixtureComponent}, {"name", "default"},
          {"wit_namespace", "wasi"},       {"wit_package", "http"},       {"interfaces", {"incoming-handler"}},
          {"source_config", source_config}, {"target_config", nlohmann::json::object()}};
}

struct ProviderOptions {
  nlohmann::json config = nlohmann::json::object();
  nlohmann::json links = nlohmann::json::array();
  nlohmann::json otel_config = nlohmann::json::object();
  int listen_port = 0;  // 0: a free port, written to config.address
};

class ProviderUnderTest {
public:
  explicit ProviderUnderTest(ProviderOptions options)
      : component_({build_path("demo-component"), "--nats", nats_.url(), "--id", kFixtureComponent}, "", true,
                   "/dev/null"),
        port_(options.listen_port ? options.listen_port : free_port()) {
    if (!options.listen_port) options.config["address"] = "127.0.0.1:" + std::to_string(port_);
    wait_for_component();
    provider_ = std::make_unique<Process>(std::vector<std::string>{build_path("http-server")},
                                          host_data_line(nats_.url(), options.config, options.links,
                                                         options.otel_config),
                                          true, log_.file("provider.log"));
    REQUIRE(wait_for_port(port_));
  }

  int port() const { return port_; }
  std::string url(const std::string &path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  std::string log() const { return read_file(log_.file("provider.log")); }
  const NatsServer &nats() const { return nats_; }
  Process &process() { return *provider_; }

private:
  // The component is ready once its handle subject has a responder.
  void wait_for_component() {
    wrpc_http::nats::Options o;
    o.url = nats_.url();
    wrpc_http::nats::Client client(o);
    client.connect();
    auto ready = eventually([&] {
      try {
        client.request(wrpc_http::wrpc::handle_subject("default", kFixtureComponent), "",
                       std::chrono::milliseconds(50));
        return true;
      } catch (const wrpc_http::nats::Error &e) {
        return e.kind() != wrpc_http::nats::Error::Kind::no_responders;
      }
    });
    REQUIRE(ready);
  }

  NatsServer nats_;
  Process component_;
  int port_;
  TempDir log_;
  std::unique_ptr<Process> provider_;
};

// The provider started with `config` must refuse it: exits 1 within 5 s. Returns its stderr.
inline std::string refused_config(const nlohmann::json &config) {
  NatsServer nats;
  auto result = run_capture({build_path("http-server")}, std::chrono::milliseconds(5000),
                            host_data_line(nats.url(), config));
  CHECK(result.exit_code == 1);
  return result.err;
}

// What curl got: status, head (status line and fields) and body.
struct CurlReply {
  int status = 0;
  std::string head, body;

  // The value of the first field `name` (case-insensitive), "" when absent.
  std::string header(const std::string &name) const {
    std::string lower_head = wrpc_http::detail::lower(head), key = "\r\n" + wrpc_http::detail::lower(name) + ":";
    auto at = lower_head.find(key);
    if (at == std::string::npos) return "";
    auto start = head.find_first_not_of(' ', at + key.size());
    return head.substr(start, head.find("\r\n", start) - start);
  }
  bool has_header(const std::string &name) const {
    return wrpc_http::detail::lower(head).find("\r\n" + wrpc_http::detail::lower(name) + ":") != std::string::npos;
  }
};

// Runs `curl -si --max-time 5 ARGS...`.
inline CurlReply curl(std::vector<std::string> args) {
  std::vector<std::string> argv = {"curl", "-si", "--max-time", "5"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto result = run_capture(argv, std::chrono::milliseconds(8000));
  CurlReply reply;
  auto split = result.out.find("\r\n\r\n");
  reply.head = result.out.substr(0, split == std::string::npos ? result.out.size() : split + 2);
  reply.body = split == std::string::npos ? "" : result.out.substr(split + 4);
  if (reply.head.size() > 12) reply.status = std::atoi(reply.head.c_str() + 9);
  return reply;
}

}  // namespace testsupport
