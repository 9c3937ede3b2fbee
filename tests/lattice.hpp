// The lattice of the end-to-end tests: a real nats-server, a component (build/demo-component,
// or build/fault-component for faults the demo cannot produce) and build/http-server started
// with host data on stdin, as a wasmCloud host starts it; the test holds its own NATS
// connection, which can count the component's invocations.
#pragma once

#include <doctest/doctest.h>

#include "../wrpc_http_provider.hpp"
#include "support.hpp"

namespace testsupport {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline const char *kProviderKey = "http-http_provider";
inline const char *kComponent = "http-http_component";
inline const char *kHostId = "NHOSTFORTESTS";

inline std::string invocation_subject() { return wrpc_http::wrpc::handle_subject("default", kComponent); }

// nats-server, a component and the provider, all on free loopback ports. The test also
// holds its own NATS connection, which counts every invocation of the component.
struct Lattice {
  NatsServer nats;
  int http_port = free_port();
  std::string provider_log = temp_file("", ".log");
  std::unique_ptr<Process> component;
  std::unique_ptr<Process> provider;
  std::unique_ptr<wrpc_http::nats::Client> client;
  std::atomic<int> invocation_count{0};

  // `component_binary` is "demo-component" or "fault-component"; `config` adds to or
  // overrides the provider config (address and timeout_ms).
  explicit Lattice(const std::string &component_binary = "demo-component",
                   const wrpc_http::StringMap &config = {}) {
    wrpc_http::nats::Options o;
    o.url = nats.url();
    client = std::make_unique<wrpc_http::nats::Client>(o);
    client->connect();
    start_component(component_binary);
    nlohmann::json provider_config = {{"address", "127.0.0.1:" + std::to_string(http_port)}, {"timeout_ms", "2000"}};
    for (auto &kv : config) provider_config[kv.first] = kv.second;
    nlohmann::json host_data = {{"host_id", kHostId},
                                {"lattice_rpc_prefix", "default"},
                                {"lattice_rpc_url", nats.url()},
                                {"provider_key", kProviderKey},
                                {"instance_id", "test-instance"},
                                {"link_definitions", nlohmann::json::array()},
                                {"config", provider_config},
                                {"log_level", "debug"}};
    provider = std::make_unique<Process>(std::vector<std::string>{build_path("http-server")},
                                         wrpc_http::detail::base64_encode(host_data.dump()) + "\r\n", true,
                                         provider_log);
    REQUIRE(wait_for_port(http_port));
  }
  ~Lattice() {
    provider.reset();
    component.reset();
    client->close();
    ::unlink(provider_log.c_str());
  }

  // Starts the component and waits until its subscription answers (no "no responders").
  void start_component(const std::string &binary) {
    component = std::make_unique<Process>(
        std::vector<std::string>{build_path(binary), "--nats", nats.url(), "--id", kComponent}, "",
        true, "/dev/null");
    auto deadline = Clock::now() + 5s;
    while (Clock::now() < deadline) {
      try {
        client->request(invocation_subject(), "", 100ms);
        return;  // the handshake came back
      } catch (const wrpc_http::nats::Error &) {
        std::this_thread::sleep_for(20ms);
      }
    }
    FAIL(binary << " did not come up");
  }

  // Counts the invocations of the component from now on. The extra subscriber means that
  // a missing component is no longer "no responders" but a timeout.
  void count_invocations() {
    client->subscribe(invocation_subject(), [this](wrpc_http::nats::Message &m) {
      if (!m.data.empty()) invocation_count++;  // start_component's probes carry no parameters
    });
    client->flush(2s);
  }

  // Invocations of the component since count_invocations().
  int invocations() {
    client->flush(2s);  // every invocation published before now has reached our counter
    return invocation_count;
  }

  httplib::Client http() const {
    httplib::Client c("127.0.0.1", http_port);
    c.set_read_timeout(10, 0);
    return c;
  }

  // Waits until GET /proxy is answered by the component again (after a NATS outage).
  bool wait_until_proxy_works(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto res = http().Get("/proxy");
      if (res && res->status == 200) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // Asks the provider's health subject until it answers healthy (our own connection may
  // still be reconnecting after an outage).
  bool healthy_within(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      try {
        auto reply = client->request("wasmbus.rpc.default." + std::string(kProviderKey) + ".health", "", 500ms);
        return nlohmann::json::parse(reply.data)["healthy"] == true;
      } catch (const wrpc_http::nats::Error &) {
        std::this_thread::sleep_for(50ms);
      }
    }
    return false;
  }
};

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The status code of a raw HTTP response, or 0 when nothing (or no status line) came back.
inline int raw_status(const std::string &response) {
  if (response.compare(0, 9, "HTTP/1.1 ") != 0 || response.size() < 12) return 0;
  return std::atoi(response.substr(9, 3).c_str());
}

}  // namespace testsupport
