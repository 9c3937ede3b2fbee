// OpenTelemetry export against a real OpenTelemetry Collector (tests/otel: OTLP/HTTP receiver,
// file exporter): spans with their parent/child ids and attributes, logs, metrics, and a
// collector that is down or stalled costing requests nothing.
#include "lattice.hpp"

#include <sys/socket.h>

#include <atomic>
#include <mutex>

using namespace std::chrono_literals;
using testsupport::curl;
using testsupport::LatticeOptions;
using testsupport::Lattice;

namespace {

// The collector of tests/otel (make builds it into build/otel), listening on a free port and
// writing every batch it receives as one OTLP/JSON line.
using Collector = testsupport::OtelCollector;
using testsupport::otel_to;

// The value of attribute `key` as text ("" when absent).
std::string attribute(const nlohmann::json &item, const std::string &key) {
  for (auto &a : item.value("attributes", nlohmann::json::array())) {
    if (a["key"] != key) continue;
    auto &v = a["value"];
    if (v.contains("stringValue")) return v["stringValue"];
    if (v.contains("intValue")) return v["intValue"].is_string() ? v["intValue"].get<std::string>()
                                                                 : v["intValue"].dump();
  }
  return "";
}

std::vector<nlohmann::json> spans_of_trace(const Collector &collector, const std::string &trace_id) {
  std::vector<nlohmann::json> out;
  for (auto &span : collector.items("spans"))
    if (span["traceId"] == trace_id) out.push_back(span);
  return out;
}

// A span's status code (2: error), 0 when it has none.
int status_code(const nlohmann::json &span) {
  return span.value("status", nlohmann::json::object()).value("code", 0);
}

const nlohmann::json *find_kind(const std::vector<nlohmann::json> &spans, int kind) {
  for (auto &s : spans)
    if (s["kind"] == kind) return &s;
  return nullptr;
}

// Records the traceparent of each invocation of the fixture's component (NATS delivers it to
// every subscriber; the demo component answers).
struct InvocationRecorder {
  explicit InvocationRecorder(const Lattice &p) {
    wrpc_http::nats::Options o;
    o.url = p.nats.url();
    client = std::make_unique<wrpc_http::nats::Client>(o);
    client->connect();
    client->subscribe(testsupport::invocation_subject(),
                      [this](wrpc_http::nats::Message &m) {
                        std::lock_guard<std::mutex> lk(mu);
                        traceparents.push_back(m.header("traceparent"));
                      });
    client->flush(2000ms);
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lk(mu);
    return traceparents;
  }
  std::unique_ptr<wrpc_http::nats::Client> client;
  std::mutex mu;
  std::vector<std::string> traceparents;
};

const std::string kTraceId = "0af7651916cd43dd8448eb211c80319c";
const std::string kParentSpan = "b7ad6b7169203331";
const std::string kTraceparent = "00-" + kTraceId + "-" + kParentSpan + "-01";

// A collector, and a provider whose otel_config exports everything to it.
struct Exporting {
  Collector collector;
  Lattice lattice{LatticeOptions{{}, nlohmann::json::array(), otel_to(collector.endpoint())}};

  // GETs `path` with kTraceparent, expecting `status`; returns the trace's spans once both
  // (server and client) arrived.
  std::vector<nlohmann::json> traced_request(const std::string &path, int status) {
    REQUIRE(curl({lattice.url(path), "-H", "traceparent: " + kTraceparent}).status == status);
    REQUIRE(testsupport::eventually([&] { return spans_of_trace(collector, kTraceId).size() == 2; }, 10000ms));
    return spans_of_trace(collector, kTraceId);
  }
};

}  // namespace

TEST_CASE("telemetry: the server span is a child of the incoming traceparent, the client span a child of it") {
  Exporting e;
  auto spans = e.traced_request("/proxy/inspect?q=1", 200);
  auto server = find_kind(spans, 2), client = find_kind(spans, 3);
  REQUIRE(server);
  REQUIRE(client);
  CHECK((*server)["parentSpanId"] == kParentSpan);
  CHECK((*client)["parentSpanId"] == (*server)["spanId"]);
  CHECK((*server)["name"] == "GET /proxy/*");
  CHECK(std::stoull((*server)["startTimeUnixNano"].get<std::string>()) <=
        std::stoull((*client)["startTimeUnixNano"].get<std::string>()));
}

TEST_CASE("telemetry: the traceparent the component receives carries the client span's id") {
  Exporting e;
  InvocationRecorder recorder(e.lattice);
  auto spans = e.traced_request("/proxy", 200);
  auto client = find_kind(spans, 3);
  REQUIRE(client);
  REQUIRE(recorder.seen().size() == 1);
  CHECK(recorder.seen()[0] == "00-" + kTraceId + "-" + (*client)["spanId"].get<std::string>() + "-01");
}

TEST_CASE("telemetry: spans carry the semantic-convention attributes and the target component") {
  Exporting e;
  auto spans = e.traced_request("/proxy/status/404", 404);
  auto &server = *find_kind(spans, 2);
  CHECK(attribute(server, "http.request.method") == "GET");
  CHECK(attribute(server, "http.route") == "/proxy/*");
  CHECK(attribute(server, "http.response.status_code") == "404");
  CHECK(attribute(server, "url.path") == "/proxy/status/404");
  CHECK(attribute(server, "url.scheme") == "http");
  CHECK(attribute(server, "server.address") == "127.0.0.1");
  CHECK(attribute(server, "server.port") == std::to_string(e.lattice.http_port));
  CHECK(attribute(server, "wasmcloud.component.id") == testsupport::kComponent);
  auto &client = *find_kind(spans, 3);
  CHECK(client["name"] == "wrpc:http/incoming-handler@0.1.0.handle");
  CHECK(attribute(client, "rpc.system") == "wrpc");
  CHECK(attribute(client, "wasmcloud.component.id") == testsupport::kComponent);
}

TEST_CASE("telemetry: a request without traceparent starts a trace: its server span is a root") {
  Exporting e;
  REQUIRE(curl({e.lattice.url("/")}).status == 200);
  REQUIRE(testsupport::eventually([&] { return !e.collector.items("spans").empty(); }, 10000ms));
  auto span = e.collector.items("spans").front();
  CHECK_FALSE(span.contains("parentSpanId"));
  CHECK(span["name"] == "GET /*");
  CHECK(span["traceId"].get<std::string>().size() == 32);
}

TEST_CASE("telemetry: a failed call marks both spans as errors") {
  Exporting e;
  for (auto &span : e.traced_request("/proxy/error", 500)) CHECK(span["status"]["code"] == 2);
}

// The server span ends when the edge has written the response whole (EdgeServer's
// on_response_done), not when the route returned: for a streamed body, with its last byte.
TEST_CASE("telemetry: a streamed response's server span ends with its last body byte, not with its head") {
  Collector collector;
  LatticeOptions options{{}, nlohmann::json::array(), otel_to(collector.endpoint())};
  options.component = "fault-component";  // slow-body: the head at once, the body 600 ms later
  Lattice lattice(options);
  auto reply = curl({lattice.url("/proxy/fault/slow-body"), "-H", "traceparent: " + kTraceparent});
  REQUIRE(reply.status == 200);
  CHECK(reply.body == "late body");
  REQUIRE(testsupport::eventually([&] { return spans_of_trace(collector, kTraceId).size() == 2; }, 10000ms));
  auto spans = spans_of_trace(collector, kTraceId);
  auto server = find_kind(spans, 2), client = find_kind(spans, 3);
  REQUIRE(server);
  REQUIRE(client);
  auto nanos = [](const nlohmann::json &span, const char *key) { return std::stoull(span[key].get<std::string>()); };
  // The call's span ends with the component's response head, the request's with the body.
  CHECK(nanos(*server, "endTimeUnixNano") >= nanos(*client, "endTimeUnixNano") + 400'000'000ull);
  CHECK(nanos(*server, "endTimeUnixNano") - nanos(*server, "startTimeUnixNano") >= 600'000'000ull);
  CHECK(status_code(*server) != 2);
}

TEST_CASE("telemetry: a streamed response cut off mid-body marks the server span as an error") {
  Collector collector;
  LatticeOptions options{{}, nlohmann::json::array(), otel_to(collector.endpoint())};
  options.config = {{"body_idle_timeout_ms", "1000"}};
  options.component = "fault-component";  // die-mid-body: a 200 head, half a body, then it exits
  Lattice lattice(options);
  auto reply = curl({lattice.url("/proxy/fault/die-mid-body"), "-H", "traceparent: " + kTraceparent});
  CHECK(reply.status == 200);
  REQUIRE(testsupport::eventually([&] { return spans_of_trace(collector, kTraceId).size() == 2; }, 10000ms));
  auto spans = spans_of_trace(collector, kTraceId);
  auto server = find_kind(spans, 2), client = find_kind(spans, 3);
  REQUIRE(server);
  REQUIRE(client);
  CHECK(attribute(*server, "http.response.status_code") == "200");
  CHECK(status_code(*server) == 2);  // the body never ended
  CHECK(status_code(*client) != 2);  // the call did answer 200
}

TEST_CASE("telemetry: the provider's log lines arrive as OTLP logs, a request's with its trace and span ids") {
  Exporting e;
  auto spans = e.traced_request("/proxy", 200);
  auto find_log = [&](const std::string &body) -> std::optional<nlohmann::json> {
    for (auto &record : e.collector.items("logRecords"))
      if (record["body"]["stringValue"] == body) return record;
    return std::nullopt;
  };
  REQUIRE(testsupport::eventually([&] { return find_log("forwarded") && find_log("provider started"); }, 10000ms));
  auto started = *find_log("provider started");
  CHECK(started["severityNumber"] == 9);
  CHECK(attribute(started, "provider_key") == testsupport::kProviderKey);
  auto forwarded = *find_log("forwarded");
  CHECK(forwarded["severityNumber"] == 5);  // debug
  CHECK(forwarded["traceId"] == kTraceId);
  CHECK(attribute(forwarded, "status") == "200");
  auto client = find_kind(spans, 3);
  REQUIRE(client);
  CHECK(forwarded["spanId"] == (*client)["spanId"]);
}

TEST_CASE("telemetry: metrics count requests by status and target, with a duration histogram and requests in flight") {
  Collector collector;
  setenv("OTEL_METRIC_EXPORT_INTERVAL", "200", 1);
  Lattice p(LatticeOptions{{}, nlohmann::json::array(), otel_to(collector.endpoint())});
  unsetenv("OTEL_METRIC_EXPORT_INTERVAL");
  for (int i = 0; i < 3; ++i) REQUIRE(curl({p.url("/proxy")}).status == 200);
  REQUIRE(curl({p.url("/proxy/status/404")}).status == 404);
  std::thread slow([&] { curl({p.url("/proxy/sleep/1500")}); });
  auto latest = [&](const std::string &name) {
    nlohmann::json found;
    for (auto &m : collector.items("metrics"))
      if (m["name"] == name) found = m;
    return found;
  };
  auto in_flight = [&] {
    auto m = latest("http.server.active_requests");
    return m.is_null() ? -1 : std::stoi(m["sum"]["dataPoints"][0]["asInt"].get<std::string>());
  };
  CHECK(testsupport::eventually([&] { return in_flight() == 1; }, 5000ms));
  slow.join();
  CHECK(testsupport::eventually([&] { return in_flight() == 0; }, 5000ms));
  auto count_for = [&](const std::string &status) -> uint64_t {
    auto counts = latest("http.server.request.count");
    for (auto &point : counts["sum"]["dataPoints"])
      if (attribute(point, "http.response.status_code") == status &&
          attribute(point, "wasmcloud.component.id") == testsupport::kComponent)
        return std::stoull(point["asInt"].get<std::string>());
    return 0;
  };
  CHECK(count_for("200") == 4);  // three, and the slow one
  CHECK(count_for("404") == 1);
  auto histogram = latest("http.server.request.duration");
  CHECK(histogram["unit"] == "s");
  for (auto &point : histogram["histogram"]["dataPoints"]) {
    if (attribute(point, "http.response.status_code") != "200") continue;
    CHECK(point["count"] == "4");
    CHECK(point["sum"].get<double>() >= 1.5);  // the slow request took 1.5 s
    CHECK(point["bucketCounts"].size() == point["explicitBounds"].size() + 1);
  }
}

TEST_CASE("telemetry: stopping the provider sends what is still queued") {
  Exporting e;
  REQUIRE(curl({e.lattice.url("/proxy"), "-H", "traceparent: " + kTraceparent}).status == 200);
  e.lattice.provider->signal(SIGTERM);
  CHECK(e.lattice.provider->wait(5000ms) == 0);
  // Sent before the exit; the collector writes its file every 50 ms.
  CHECK(testsupport::eventually([&] { return spans_of_trace(e.collector, kTraceId).size() == 2; }, 1000ms));
}

TEST_CASE("telemetry: with the collector down, requests are answered at once and the failure is logged once") {
  int closed_port = testsupport::free_port();
  Lattice p(
      LatticeOptions{{}, nlohmann::json::array(), otel_to("http://127.0.0.1:" + std::to_string(closed_port))});
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 25; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(curl({p.url("/proxy")}).status == 200);
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    std::this_thread::sleep_for(100ms);
  }
  REQUIRE(std::chrono::steady_clock::now() - started > 2500ms);  // several export rounds failed
  auto log = p.provider->log();
  auto count = [&](const std::string &text) {
    size_t n = 0;
    for (auto at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++n;
    return n;
  };
  CHECK(count("dropping traces until the collector answers") == 1);
  CHECK(count("dropping logs until the collector answers") == 1);
}

TEST_CASE("telemetry: a collector that accepts connections but never answers does not slow requests") {
  int port = testsupport::free_port();
  int stalled = ::socket(AF_INET, SOCK_STREAM, 0);
  auto addr = testsupport::loopback_address(port);
  REQUIRE(::bind(stalled, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(stalled, 64) == 0);  // connections complete in the backlog; nothing is read
  {
    Lattice p(LatticeOptions{{}, nlohmann::json::array(), otel_to("http://127.0.0.1:" + std::to_string(port))});
    for (int i = 0; i < 20; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      REQUIRE(curl({p.url("/proxy")}).status == 200);
      CHECK(std::chrono::steady_clock::now() - t0 < 1s);
      std::this_thread::sleep_for(150ms);
    }
    p.provider->signal(SIGTERM);
    CHECK(p.provider->wait(10000ms) == 0);  // the last export round is bounded too
  }
  ::close(stalled);
}

TEST_CASE("otel_config: endpoints resolve as a wasmCloud host resolves them") {
  auto config = wrpc_http::OtelConfig::from_json(nlohmann::json::object());
  CHECK(config.endpoint("traces") == "http://localhost:4318/v1/traces");
  config = wrpc_http::OtelConfig::from_json({{"observability_endpoint", "http://collector:4318"}});
  CHECK(config.endpoint("metrics") == "http://collector:4318/v1/metrics");
  config = wrpc_http::OtelConfig::from_json({{"observability_endpoint", "http://collector:4318/custom"},
                                            {"logs_endpoint", "http://logs:9000/in"}});
  CHECK(config.endpoint("traces") == "http://collector:4318/custom");
  CHECK(config.endpoint("logs") == "http://logs:9000/in");
}

TEST_CASE("otel_config: enable flags default to enable_observability, each signal may differ") {
  auto config = wrpc_http::OtelConfig::from_json({{"enable_observability", true}, {"enable_logs", false}});
  CHECK(config.traces_enabled());
  CHECK(config.metrics_enabled());
  CHECK_FALSE(config.logs_enabled());
  CHECK(wrpc_http::OtelConfig::from_json({{"enable_traces", true}}).traces_enabled());
  CHECK_FALSE(wrpc_http::OtelConfig::from_json(nlohmann::json::object()).metrics_enabled());
  CHECK_THROWS_AS(wrpc_http::OtelConfig::from_json({{"protocol", "udp"}}), std::invalid_argument);
  CHECK_THROWS_AS(wrpc_http::OtelConfig::from_json({{"enable_traces", "yes"}}), std::invalid_argument);
}

TEST_CASE("otel_config: only traces enabled sends spans and no logs") {
  Collector collector;
  Lattice p(LatticeOptions{{},
                                      nlohmann::json::array(),
                                      {{"enable_traces", true}, {"traces_endpoint", collector.endpoint() + "/v1/traces"}}});
  REQUIRE(curl({p.url("/proxy"), "-H", "traceparent: " + kTraceparent}).status == 200);
  REQUIRE(testsupport::eventually([&] { return spans_of_trace(collector, kTraceId).size() == 2; }, 10000ms));
  p.provider->signal(SIGTERM);
  CHECK(p.provider->wait(5000ms) == 0);
  CHECK(collector.items("logRecords").empty());
  CHECK(collector.items("metrics").empty());
}

TEST_CASE("otel_config: protocol grpc is refused with a warning, and requests still work") {
  Lattice p(LatticeOptions{{}, nlohmann::json::array(), {{"enable_observability", true}, {"protocol", "Grpc"}}});
  CHECK(curl({p.url("/proxy")}).status == 200);
  CHECK(p.provider->log().find("exports OTLP/HTTP only") != std::string::npos);
}

// cpp-httplib 0.11 refuses other methods before routing, so this is checked on the function.
TEST_CASE("telemetry: methods outside the semantic conventions' list count as _OTHER (bounded metric series)") {
  CHECK(wrpc_http::detail::known_method("PATCH") == "PATCH");
  CHECK(wrpc_http::detail::known_method("BREW") == "_OTHER");
  CHECK(wrpc_http::detail::known_method("get") == "_OTHER");
}

TEST_CASE("telemetry: routes are named by path templates, never by regular expressions") {
  using wrpc_http::detail::route_template;
  CHECK(route_template("/proxy(/.*)?") == "/proxy/*");  // Forwarder::mount(http, "/proxy")
  CHECK(route_template("(/.*)?") == "/*");              // mount(http, ""): every path
  CHECK(route_template("/(/.*)?") == "/*");             // routing_mode path, link path "/"
  CHECK(route_template(".*") == "/*");                  // route_all(http, ".*", ...)
  CHECK(route_template("/items/(\\d+)") == "/items/*");
  CHECK(route_template("/health") == "/health");
  CHECK(route_template("/") == "/");
}
