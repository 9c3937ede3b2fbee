// The HTTP server provider of the wasmCloud Go example, in C++: `/proxy` (and everything
// below it) is forwarded over wRPC to the component `http-http_component`; every other
// path is answered by the provider itself.
//
// A wasmCloud host starts this binary and writes its host data on stdin.
#include "wrpc_http_provider.hpp"

#include <iostream>

int main() {
  wrpc_http::HostData host_data;
  try {
    host_data = wrpc_http::HostData::read();
  } catch (const std::exception &e) {
    std::cerr << "http-server: " << e.what() << "\n";
    return 1;
  }

  try {
    wrpc_http::Provider provider(host_data);
    auto proxy = provider.forwarder(wrpc_http::single_target("http-http_component"));

    provider.serve([&](httplib::Server &http) {
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
