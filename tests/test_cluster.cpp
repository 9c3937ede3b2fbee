// NATS as the distributed engine: clusters (discovery from INFO connect_urls, failover,
// lame duck mode) and leaf nodes, with real nats-server processes on loopback, the provider
// binary with host data on stdin, the demo component and real HTTP clients.
#include <doctest/doctest.h>

#include "lattice.hpp"

#include <set>

using namespace std::chrono_literals;
using testsupport::Clock;
using testsupport::ConfiguredNatsServer;
using testsupport::NatsCluster;
using testsupport::NatsLeafNodes;
using testsupport::Process;
using testsupport::start_component;
using wrpc_http::nats::Client;
using wrpc_http::nats::Options;

namespace {

// build/http-server started as a host starts it, connected to `nats_urls` only, serving HTTP
// on a free port.
struct ServingProvider {
  int http_port = testsupport::free_port();
  testsupport::ProviderProcess process;

  explicit ServingProvider(const std::string &nats_urls)
      : process(testsupport::host_data(nats_urls,
                                       {{"address", testsupport::loopback(http_port)}, {"timeout_ms", "5000"}})) {
    REQUIRE(testsupport::wait_for_port(http_port));
  }

  // The status of GET `path`, 0 when no response came (within `timeout`).
  int get(const std::string &path, std::chrono::seconds timeout = 10s) const {
    httplib::Client http("127.0.0.1", http_port);
    http.set_read_timeout(timeout);
    auto res = http.Get(path.c_str());
    return res ? res->status : 0;
  }

  // Asks GET /proxy until it answers 200; returns how long that took, or nullopt.
  std::optional<Clock::duration> until_proxy_works(std::chrono::milliseconds timeout, Clock::time_point since) const {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (get("/proxy", 2s) == 200) return Clock::now() - since;
      std::this_thread::sleep_for(10ms);
    }
    return std::nullopt;
  }
};

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// HTTP clients sending GET /proxy in a loop on keep-alive connections until stopped,
// counting answers that are not 200.
class LoadClients {
public:
  LoadClients(int port, int count) {
    for (int i = 0; i < count; ++i)
      threads_.emplace_back([this, port] {
        httplib::Client http("127.0.0.1", port);
        http.set_keep_alive(true);
        http.set_read_timeout(10, 0);
        while (!stop_) {
          auto res = http.Get("/proxy");
          (res && res->status == 200 ? ok_ : failed_)++;
        }
      });
  }
  ~LoadClients() { stop(); }
  void stop() {
    stop_ = true;
    for (auto &t : threads_)
      if (t.joinable()) t.join();
  }
  int ok() const { return ok_; }
  int failed() const { return failed_; }

private:
  std::atomic<bool> stop_{false};
  std::atomic<int> ok_{0}, failed_{0};
  std::vector<std::thread> threads_;
};

// A 3-node cluster, the provider given only node A's URL, the component only node B's
// (both learn the other members), and /proxy working across them.
struct ProxyAcrossNodes {
  NatsCluster cluster;
  ServingProvider provider{cluster.node(0).url()};
  std::unique_ptr<Process> component = start_component(cluster.node(1).url());
  ProxyAcrossNodes() { REQUIRE(provider.until_proxy_works(10s, Clock::now())); }
};

Options client_options(const std::string &url) {
  Options o;
  o.url = url;
  o.no_randomize = true;
  return o;
}

}  // namespace

TEST_CASE("cluster: a URL learned from INFO gets the scheme and credentials of the configured URL") {
  using wrpc_http::detail::learned_server_url;
  CHECK(learned_server_url("nats://127.0.0.1:4222", "10.0.0.2:4222") == "nats://10.0.0.2:4222");
  CHECK(learned_server_url("tls://user:pass@nats.example:4443", "10.0.0.2:4443") == "tls://user:pass@10.0.0.2:4443");
  CHECK(learned_server_url("nats://s3cr3t@a:1,b:2", "[::1]:4222") == "nats://s3cr3t@[::1]:4222");
  CHECK(learned_server_url("127.0.0.1:4222", "10.0.0.2:4222") == "nats://10.0.0.2:4222");
}

TEST_CASE("cluster: servers are tried in random order unless no_randomize") {
  const std::string urls = "nats://127.0.0.1:1001,nats://127.0.0.1:1002,nats://127.0.0.1:1003";
  Options ordered;
  ordered.url = urls;
  ordered.no_randomize = true;
  CHECK(Client(ordered).known_servers() ==
        std::vector<std::string>{"127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"});
  Options shuffled;
  shuffled.url = urls;
  std::set<std::vector<std::string>> orders;
  for (int i = 0; i < 30; ++i) orders.insert(Client(shuffled).known_servers());
  CHECK(orders.size() > 1);  // 30 equal shuffles of 3 servers: chance 6^-29
}

TEST_CASE("cluster: a client given one member learns the others from INFO connect_urls") {
  NatsCluster cluster;
  Client nc(client_options(cluster.node(0).url()));
  nc.connect();
  CHECK(nc.connected_server() == cluster.node(0).address());
  std::vector<std::string> all = {cluster.node(0).address(), cluster.node(1).address(), cluster.node(2).address()};
  CHECK(testsupport::eventually([&] {
    auto known = nc.known_servers();
    std::sort(known.begin(), known.end());
    std::sort(all.begin(), all.end());
    return known == all;
  }));
  nc.close();
}

TEST_CASE("cluster: a client fails over to a learned member with the configured credentials, subscriptions restored") {
  NatsCluster cluster("authorization { user: wrpc, password: s3cr3t }\n");
  Client subscriber(client_options("nats://wrpc:s3cr3t@" + cluster.node(0).address()));
  subscriber.connect();
  std::atomic<int> received{0};
  subscriber.subscribe("cluster.test", [&](wrpc_http::nats::Message &m) {
    received++;
    if (!m.reply.empty()) subscriber.publish(m.reply, "pong");
  });
  subscriber.flush(2s);
  REQUIRE(testsupport::eventually([&] { return subscriber.known_servers().size() == 3; }));
  Client requester(client_options("nats://wrpc:s3cr3t@" + cluster.node(2).address()));
  requester.connect();
  CHECK(requester.request("cluster.test", "ping", 2s).data == "pong");

  auto killed = Clock::now();
  cluster.node(0).kill();
  REQUIRE(testsupport::eventually(
      [&] { return subscriber.connected() && subscriber.connected_server() != cluster.node(0).address(); }, 2s));
  bool answered = testsupport::eventually(
      [&] {
        try {
          return requester.request("cluster.test", "ping", 200ms).data == "pong";
        } catch (const wrpc_http::nats::Error &) {
          return false;
        }
      },
      2s);
  CHECK(answered);
  CHECK(ms(Clock::now() - killed) < 1000);
  requester.close();
  subscriber.close();
}

TEST_CASE("cluster: in lame duck mode a client moves to another member and no request fails") {
  NatsCluster cluster;
  Client server_side(client_options(cluster.node(0).url()));
  server_side.connect();
  server_side.subscribe("cluster.echo", [&](wrpc_http::nats::Message &m) { server_side.publish(m.reply, m.data); });
  server_side.flush(2s);
  REQUIRE(testsupport::eventually([&] { return server_side.known_servers().size() == 3; }));
  Client requester(client_options(cluster.node(2).url()));
  requester.connect();

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::thread load([&] {
    for (int i = 0; !stop; ++i) {
      try {
        (requester.request("cluster.echo", std::to_string(i), 2s).data == std::to_string(i) ? ok : failed)++;
      } catch (const wrpc_http::nats::Error &) {
        failed++;
      }
    }
  });
  std::this_thread::sleep_for(300ms);
  auto result = testsupport::run_capture({"nats-server", "--signal", "ldm=" + std::to_string(cluster.node(0).pid())});
  CHECK(result.exit_code == 0);  // not REQUIRE: the load thread has to be joined
  // Moved before the grace period (1 s) ends, while the old server still accepts traffic.
  CHECK(testsupport::eventually([&] { return server_side.connected_server() != cluster.node(0).address(); }, 900ms));
  // The lame duck server exits once its last client has left.
  CHECK(testsupport::eventually([&] { return !cluster.node(0).running(); }, 10s));
  int ok_at_exit = ok;
  std::this_thread::sleep_for(500ms);
  stop = true;
  load.join();
  CHECK(failed.load() == 0);
  CHECK(ok.load() > ok_at_exit);  // still served after the old server is gone
  requester.close();
  server_side.close();
}

TEST_CASE("cluster: a lame duck move completes while a publisher keeps the connection writing") {
  NatsCluster cluster;
  Client mover(client_options(cluster.node(0).url()));
  mover.connect();
  REQUIRE(testsupport::eventually([&] { return mover.known_servers().size() == 3; }));
  // One thread publishing large messages back to back: nearly always a write is under way,
  // and each ends with nothing gathered behind it, so nothing else wakes a thread waiting
  // for the writes to pause. The move has to wait for one write to end, then switch.
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    const std::string payload(512 * 1024, 'x');
    while (!stop) {
      try {
        mover.publish("cluster.sink", payload);
      } catch (const wrpc_http::nats::Error &) {
      }
    }
  });
  std::this_thread::sleep_for(200ms);
  auto result = testsupport::run_capture({"nats-server", "--signal", "ldm=" + std::to_string(cluster.node(0).pid())});
  CHECK(result.exit_code == 0);  // not REQUIRE: the publisher has to be joined
  CHECK(testsupport::eventually([&] { return mover.connected_server() != cluster.node(0).address(); }, 900ms));
  stop = true;
  publisher.join();
  mover.close();
}

TEST_CASE_FIXTURE(ProxyAcrossNodes, "cluster: /proxy works with the provider and the component on different nodes") {
  CHECK(provider.get("/proxy") == 200);
  CHECK(provider.get("/proxy/status/201") == 201);
}

TEST_CASE_FIXTURE(ProxyAcrossNodes, "cluster: killing the provider's node ends in-flight requests with 503 at once; new requests work within 1 s") {

  std::vector<int> statuses(4, -1);
  std::vector<Clock::time_point> ended(4);
  std::vector<std::thread> in_flight;
  for (size_t i = 0; i < statuses.size(); ++i)
    in_flight.emplace_back([&, i] {
      statuses[i] = provider.get("/proxy/sleep/4000");
      ended[i] = Clock::now();
    });
  std::this_thread::sleep_for(300ms);  // the calls have reached the component
  auto killed = Clock::now();
  cluster.node(0).kill();
  for (auto &t : in_flight) t.join();
  for (size_t i = 0; i < statuses.size(); ++i) {
    CHECK(statuses[i] == 503);
    CHECK(ms(ended[i] - killed) < 1000);
  }
  auto recovered = provider.until_proxy_works(3s, killed);
  REQUIRE(recovered);
  CHECK(ms(*recovered) < 1000);

  Client observer(client_options(cluster.node(2).url()));
  observer.connect();
  auto health = observer.request("wasmbus.rpc.default.http-http_provider.health", "", 2s);
  CHECK(nlohmann::json::parse(health.data)["healthy"] == true);
  observer.close();
}

TEST_CASE_FIXTURE(ProxyAcrossNodes, "cluster: with the provider's node back, killing the component's node fails the component over") {
  cluster.node(0).kill();
  REQUIRE(provider.until_proxy_works(3s, Clock::now()));
  cluster.node(0).start();
  REQUIRE(cluster.wait_until_routed(0));

  auto killed = Clock::now();
  cluster.node(1).kill();
  auto recovered = provider.until_proxy_works(5s, killed);
  REQUIRE(recovered);
  CHECK(ms(*recovered) < 2000);
}

TEST_CASE_FIXTURE(ProxyAcrossNodes, "cluster: lame duck mode on the provider's node fails no request of 8 busy clients") {

  LoadClients clients(provider.http_port, 8);
  std::this_thread::sleep_for(500ms);
  auto result = testsupport::run_capture({"nats-server", "--signal", "ldm=" + std::to_string(cluster.node(0).pid())});
  REQUIRE(result.exit_code == 0);
  int ok_at_signal = clients.ok();
  // Without a move, the server evicts the provider after its grace period (1 s) and exits.
  CHECK(testsupport::eventually([&] { return !cluster.node(0).running(); }, 10s));
  int ok_at_exit = clients.ok();
  std::this_thread::sleep_for(1s);
  clients.stop();
  CHECK_MESSAGE(clients.failed() == 0, "the provider's log:\n" << provider.process.log());
  CHECK(ok_at_exit > ok_at_signal);
  CHECK(clients.ok() > ok_at_exit);
}

TEST_CASE("cluster: leaf nodes: provider and component on two leaves of a hub; a restarted leaf serves again within 2 s") {
  NatsLeafNodes leaves;
  ServingProvider provider(leaves.leaf(0).url());
  auto component = start_component(leaves.leaf(1).url());
  REQUIRE(provider.until_proxy_works(10s, Clock::now()));

  leaves.leaf(1).kill();
  leaves.leaf(1).start();
  auto restarted = Clock::now();
  auto recovered = provider.until_proxy_works(5s, restarted);
  REQUIRE(recovered);
  CHECK(ms(*recovered) < 2000);
}

TEST_CASE("cluster: a client whose first configured server is down at start connects to the next") {
  NatsCluster cluster;
  std::string down = "nats://127.0.0.1:" + std::to_string(testsupport::free_port());
  Client nc(client_options(down + "," + cluster.node(1).url()));  // tried in this order
  nc.connect();
  CHECK(nc.connected_server() == cluster.node(1).address());
  nc.close();
}

TEST_CASE("cluster: a URL list whose first server is down at start: the provider starts and serves") {
  NatsCluster cluster;
  std::string down = "nats://127.0.0.1:" + std::to_string(testsupport::free_port());
  ServingProvider provider(down + "," + cluster.node(0).url());
  auto component = start_component(cluster.node(1).url());
  CHECK(provider.until_proxy_works(10s, Clock::now()));
}
