// The lattice of the end-to-end tests: a real nats-server, a component (build/demo-component,
// or build/fault-component for faults the demo cannot produce) and build/http-server started
// with host data on stdin, as a wasmCloud host starts it; the test holds its own NATS
// connection, which can count the component's invocations. curl() sends requests with their
// headers exactly as a test writes them (CORS, cache_control).
#pragma once

#include <doctest/doctest.h>

#include "../wrpc_http_provider.hpp"
#include "support.hpp"

#include <sstream>

namespace testsupport {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline const char *const kProviderKey = "http-http_provider";
inline const char *const kComponent = "http-http_component";
inline const char *const kHostId = "NHOSTFORTESTS";

// The subject of the provider's lattice requests and link puts: `suffix` is "health",
// "linkdefs.put", "default.shutdown", ...
inline std::string provider_subject(const std::string &suffix) {
  return "wasmbus.rpc.default." + std::string(kProviderKey) + "." + suffix;
}

// The subject the provider invokes `component` on.
inline std::string invocation_subject(const std::string &component = kComponent) {
  return wrpc_http::wrpc::handle_subject("default", component);
}

// The host data a wasmCloud host writes on the provider's stdin, for the lattice at
// `nats_urls` (comma-separated); callers add fields (credentials, xkeys) as a host would.
inline nlohmann::json host_data(const std::string &nats_urls, const nlohmann::json &config,
                                const nlohmann::json &links = nlohmann::json::array(),
                                const nlohmann::json &otel_config = nlohmann::json::object()) {
  return {{"host_id", kHostId},         {"lattice_rpc_prefix", "default"}, {"lattice_rpc_url", nats_urls},
          {"provider_key", kProviderKey}, {"instance_id", "test-instance"},  {"link_definitions", links},
          {"config", config},             {"otel_config", otel_config},      {"log_level", "debug"}};
}

// Host data as a host writes it on the provider's stdin: base64 on one line.
inline std::string host_data_line(const nlohmann::json &host_data) {
  return wrpc_http::detail::base64_encode(host_data.dump()) + "\n";
}

// A source link from the provider to `target` (wasi:http/incoming-handler).
inline nlohmann::json link_to(const std::string &target,
                              const nlohmann::json &source_config = nlohmann::json::object()) {
  return {{"source_id", kProviderKey}, {"target", target},       {"name", "default"},
          {"wit_namespace", "wasi"},   {"wit_package", "http"},  {"interfaces", {"incoming-handler"}},
          {"source_config", source_config}, {"target_config", nlohmann::json::object()}};
}

inline std::string loopback(int port) { return "127.0.0.1:" + std::to_string(port); }

// A test's own NATS client options for the server at `url`.
inline wrpc_http::nats::Options client_options(const std::string &url) {
  wrpc_http::nats::Options o;
  o.url = url;
  return o;
}

// build/http-server started as a wasmCloud host starts it: `host_data`, base64 on one line,
// on its stdin. Its log (stderr) goes to a temporary file, removed with it.
class ProviderProcess : public Process {
public:
  explicit ProviderProcess(const nlohmann::json &host_data)
      : ProviderProcess(host_data, temp_file("", ".log")) {}
  ~ProviderProcess() { ::unlink(log_path_.c_str()); }

  std::string log() const { return read_file(log_path_); }

private:
  ProviderProcess(const nlohmann::json &host_data, std::string log_path)
      : Process({build_path("http-server")}, host_data_line(host_data), true, log_path),
        log_path_(std::move(log_path)) {}

  std::string log_path_;
};

// build/`binary` ("demo-component" or "fault-component") serving as component `id` on the
// lattice at `nats_url`.
inline std::unique_ptr<Process> start_component(const std::string &nats_url,
                                                const std::string &binary = "demo-component",
                                                const std::string &id = kComponent) {
  return std::make_unique<Process>(std::vector<std::string>{build_path(binary), "--nats", nats_url, "--id", id}, "",
                                   true, "/dev/null");
}

// Waits until component `id` answers on its subscription (no "no responders").
inline void wait_for_component(wrpc_http::nats::Client &client, const std::string &id = kComponent) {
  auto deadline = Clock::now() + 5s;
  while (Clock::now() < deadline) {
    try {
      client.request(invocation_subject(id), "", 100ms);
      return;  // the handshake came back
    } catch (const wrpc_http::nats::Error &) {
      std::this_thread::sleep_for(20ms);
    }
  }
  FAIL("component " << id << " did not come up");
}

struct LatticeOptions {
  nlohmann::json config = nlohmann::json::object();  // adds to or overrides address and timeout_ms
  nlohmann::json links = nlohmann::json::array();
  nlohmann::json otel_config = nlohmann::json::object();
  // Where the provider listens when `config` or `links` say so; 0: a free port, which
  // becomes config.address.
  int listen_port = 0;
  std::string component = "demo-component";  // or "fault-component"
};

// nats-server, a component and the provider, all on free loopback ports. The test also
// holds its own NATS connection, which counts every invocation of the component.
struct Lattice {
  NatsServer nats;
  int http_port;
  std::unique_ptr<Process> component;
  std::unique_ptr<ProviderProcess> provider;
  std::unique_ptr<wrpc_http::nats::Client> client;
  std::atomic<int> invocation_count{0};

  explicit Lattice(LatticeOptions options = {})
      : http_port(options.listen_port ? options.listen_port : free_port()) {
    client = std::make_unique<wrpc_http::nats::Client>(client_options(nats.url()));
    client->connect();
    start_component(options.component);
    nlohmann::json config = {{"timeout_ms", "2000"}};
    if (!options.listen_port) config["address"] = loopback(http_port);
    for (auto &item : options.config.items()) config[item.key()] = item.value();  // a config of {} is null: no items
    provider = std::make_unique<ProviderProcess>(host_data(nats.url(), config, options.links, options.otel_config));
    REQUIRE(wait_for_port(http_port));
  }
  // `component_binary` with `config` added to the provider config.
  explicit Lattice(const std::string &component_binary, const nlohmann::json &config = nlohmann::json::object())
      : Lattice([&] {
          LatticeOptions options;
          options.config = config;
          options.component = component_binary;
          return options;
        }()) {}
  ~Lattice() {
    provider.reset();
    component.reset();
    client->close();
  }

  // Starts the component (again) and waits until it answers.
  void start_component(const std::string &binary) {
    component = testsupport::start_component(nats.url(), binary);
    wait_for_component(*client);
  }

  // Counts the invocations of the component from now on. The extra subscriber means that
  // a missing component is no longer "no responders" but a timeout.
  void count_invocations() {
    client->subscribe(invocation_subject(), [this](wrpc_http::nats::Message &m) {
      if (!m.data.empty()) invocation_count++;  // wait_for_component's probes carry no parameters
    });
    client->flush(2s);
  }

  // Invocations of the component since count_invocations().
  int invocations() {
    client->flush(2s);  // every invocation published before now has reached our counter
    return invocation_count;
  }

  std::string url(const std::string &path) const { return "http://" + loopback(http_port) + path; }

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
        auto reply = client->request(provider_subject("health"), "", 500ms);
        return nlohmann::json::parse(reply.data)["healthy"] == true;
      } catch (const wrpc_http::nats::Error &) {
        std::this_thread::sleep_for(50ms);
      }
    }
    return false;
  }
};

// Under AddressSanitizer freed memory waits in a quarantine (256 MiB, plus 1 MiB per thread)
// before it is reused, which counts against a test's memory bound: the processes a test starts
// while this lives run without one (the later flags win over any ASAN_OPTIONS already set).
// The bound stays the same for every build.
class WithoutAsanQuarantine {
public:
  WithoutAsanQuarantine() {
    const char *before = std::getenv("ASAN_OPTIONS");
    had_ = before != nullptr;
    if (had_) saved_ = before;
    std::string flags = saved_ + (saved_.empty() ? "" : ":") + "quarantine_size_mb=0:thread_local_quarantine_size_kb=0";
    setenv("ASAN_OPTIONS", flags.c_str(), 1);
  }
  ~WithoutAsanQuarantine() {
    if (had_) setenv("ASAN_OPTIONS", saved_.c_str(), 1);
    else unsetenv("ASAN_OPTIONS");
  }
  WithoutAsanQuarantine(const WithoutAsanQuarantine &) = delete;
  WithoutAsanQuarantine &operator=(const WithoutAsanQuarantine &) = delete;

private:
  bool had_ = false;
  std::string saved_;
};

// Runs a shell command; its standard output.
inline std::string shell(const std::string &command) {
  std::string out;
  FILE *p = ::popen(command.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  CHECK(::pclose(p) == 0);
  return out;
}

// A self-signed certificate for localhost and 127.0.0.1, made with the openssl tool.
struct SelfSigned {
  std::string dir = shell("mktemp -d");
  std::string cert, key;
  SelfSigned() {
    dir.erase(dir.find_last_not_of("\n") + 1);
    cert = dir + "/cert.pem";
    key = dir + "/key.pem";
    shell("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
          "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + key + " -out " + cert + " 2>/dev/null");
  }
  ~SelfSigned() { shell("rm -rf " + dir); }
};

// What the demo component's /proxy/bytes/N sends: a-z over and over, from `a` again every 64 KiB.
inline std::string pattern_bytes(size_t n) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>('a' + (i % (64 * 1024)) % 26);
  return out;
}

// The provider started with `config` must refuse it: exits 1 within 5 s. Returns its stderr.
inline std::string refused_config(const nlohmann::json &config) {
  NatsServer nats;
  auto result = run_capture({build_path("http-server")}, 5000ms, host_data_line(host_data(nats.url(), config)));
  CHECK(result.exit_code == 1);
  return result.err;
}

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The status code of a raw HTTP response, or 0 when nothing (or no status line) came back.
inline int raw_status(const std::string &response) {
  if (response.compare(0, 9, "HTTP/1.1 ") != 0 || response.size() < 12) return 0;
  return std::atoi(response.substr(9, 3).c_str());
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
  auto result = run_capture(argv, 8000ms);
  CurlReply reply;
  auto split = result.out.find("\r\n\r\n");
  reply.head = result.out.substr(0, split == std::string::npos ? result.out.size() : split + 2);
  reply.body = split == std::string::npos ? "" : result.out.substr(split + 4);
  if (reply.head.size() > 12) reply.status = std::atoi(reply.head.c_str() + 9);
  return reply;
}

// The OpenTelemetry Collector of tests/otel (make builds it into build/otel; the path is in
// WRPC_HTTP_OTEL_COLLECTOR), listening on `port` (0: a free one) and writing every batch it
// receives as one OTLP/JSON line. It can be stopped and started again on the same port (a
// collector that goes away and comes back); each start writes a file of its own.
class OtelCollector {
public:
  explicit OtelCollector(int port = 0, bool start_now = true) : port_(port ? port : free_port()) {
    if (start_now) start();
  }

  void start() {
    ++run_;
    std::ofstream config(dir_.file("config.yaml"));
    config << "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:" << port_ << "\n"
           << "exporters:\n  file:\n    path: " << received_file(run_) << "\n    flush_interval: 50ms\n"
           << "service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n"
           << "    traces: {receivers: [otlp], exporters: [file]}\n"
           << "    metrics: {receivers: [otlp], exporters: [file]}\n"
           << "    logs: {receivers: [otlp], exporters: [file]}\n";
    config.close();
    const char *binary = std::getenv("WRPC_HTTP_OTEL_COLLECTOR");
    process_ = std::make_unique<Process>(
        std::vector<std::string>{binary && *binary ? binary : "build/otel/otel-file-collector", "--config",
                                 dir_.file("config.yaml")},
        "", true, dir_.file("collector-" + std::to_string(run_) + ".log"));
    REQUIRE(wait_for_port(port_, std::chrono::milliseconds(20000)));
  }
  // SIGTERM (the collector flushes what it received), then waits until the port is free.
  void stop() {
    process_.reset();
    REQUIRE(eventually([&] { return !port_open(port_); }, std::chrono::milliseconds(5000)));
  }

  int port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Every item of `kind` received so far, over all runs: "spans" (resourceSpans/scopeSpans),
  // "logRecords" (resourceLogs/scopeLogs) or "metrics" (resourceMetrics/scopeMetrics).
  std::vector<nlohmann::json> items(const std::string &kind) const {
    std::vector<nlohmann::json> out;
    for (int run = 1; run <= run_; ++run) {
      auto more = items_of_run(kind, run);
      out.insert(out.end(), more.begin(), more.end());
    }
    return out;
  }
  // The items of `kind` received since the last start().
  std::vector<nlohmann::json> items_since_start(const std::string &kind) const { return items_of_run(kind, run_); }

private:
  std::string received_file(int run) const { return dir_.file("received-" + std::to_string(run) + ".jsonl"); }

  std::vector<nlohmann::json> items_of_run(const std::string &kind, int run) const {
    static const std::map<std::string, std::pair<std::string, std::string>> paths = {
        {"spans", {"resourceSpans", "scopeSpans"}},
        {"logRecords", {"resourceLogs", "scopeLogs"}},
        {"metrics", {"resourceMetrics", "scopeMetrics"}}};
    auto &path = paths.at(kind);
    std::vector<nlohmann::json> out;
    std::istringstream lines(read_file(received_file(run)));
    std::string line;
    while (std::getline(lines, line)) {
      auto batch = nlohmann::json::parse(line, nullptr, false);
      if (batch.is_discarded() || !batch.contains(path.first)) continue;
      for (auto &resource : batch[path.first])
        for (auto &scope : resource.value(path.second, nlohmann::json::array()))
          for (auto &item : scope.value(kind, nlohmann::json::array())) out.push_back(item);
    }
    return out;
  }

  TempDir dir_;
  int port_;
  int run_ = 0;
  std::unique_ptr<Process> process_;
};

// The otel_config of a provider exporting traces, metrics and logs to `endpoint` (OTLP/HTTP).
inline nlohmann::json otel_to(const std::string &endpoint) {
  return {{"enable_observability", true}, {"observability_endpoint", endpoint}, {"protocol", "Http"}};
}

}  // namespace testsupport
