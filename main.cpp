// The HTTP server provider of the wasmCloud Go example, in C++: `/proxy` (and everything
// below it) is forwarded over wRPC to the component `http-http_component`; every other
// path is answered by the provider itself. With `routing_mode` in the provider config,
// links route every request instead (see the README).
//
// A wasmCloud host starts this binary and writes its host data on stdin; for local
// development, `--nats URL --lattice NAME --address HOST:PORT --target COMPONENT` replace it.
#include "wrpc_http_provider.hpp"

#include <iostream>

int main(int argc, char **argv) {
  try {
    auto launch = wrpc_http::Launch::from(argc, argv, "http-http_component");
    wrpc_http::Provider provider(launch.host_data);
    auto proxy = provider.forwarder(wrpc_http::single_target(launch.target));

    provider.serve([&](wrpc_http::Router &http) {
      proxy.mount(http, "/proxy");
      wrpc_http::route_all(http, ".*", [](const httplib::Request &, httplib::Response &res) {
        res.set_content("Hello from the provider!", "text/plain");
      });
    });

    provider.on_source_link_put([&](const wrpc_http::LinkDefinition &link) {
      provider.logger().info("linked to component " + link.target);
    });

    return provider.run();
  } catch (const std::exception &e) {
    std::cerr << "http-server: " << e.what() << "\n";
    return 1;
  }
}
