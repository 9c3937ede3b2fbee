// What Provider::serve hands a user's routes: wrpc_http::Router registers routes by method and
// pattern and reaches nothing else of the listener's server, so no route of a user can replace
// the edge's own error, pre- and post-routing handlers or its limits.
#include <doctest/doctest.h>

#include "../wrpc_http_provider.hpp"

#include <type_traits>
#include <utility>

namespace {

using Router = wrpc_http::Router;

template <class T, class = void> struct can_set_error_handler : std::false_type {};
template <class T>
struct can_set_error_handler<T, std::void_t<decltype(std::declval<T &>().set_error_handler(
                                    std::declval<httplib::Server::Handler>()))>> : std::true_type {};

template <class T, class = void> struct can_set_pre_routing_handler : std::false_type {};
template <class T>
struct can_set_pre_routing_handler<T, std::void_t<decltype(std::declval<T &>().set_pre_routing_handler(
                                          std::declval<httplib::Server::HandlerWithResponse>()))>> : std::true_type {};

template <class T, class = void> struct can_set_post_routing_handler : std::false_type {};
template <class T>
struct can_set_post_routing_handler<T, std::void_t<decltype(std::declval<T &>().set_post_routing_handler(
                                           std::declval<httplib::Server::Handler>()))>> : std::true_type {};

template <class T, class = void> struct can_set_payload_max_length : std::false_type {};
template <class T>
struct can_set_payload_max_length<T, std::void_t<decltype(std::declval<T &>().set_payload_max_length(size_t{1}))>>
    : std::true_type {};

template <class T, class = void> struct can_reach_server : std::false_type {};
template <class T>
struct can_reach_server<T, std::void_t<decltype(static_cast<httplib::Server &>(std::declval<T &>()))>>
    : std::true_type {};

}  // namespace

TEST_CASE("router: the routes a provider hands out cannot set the edge's error, pre- or post-routing handlers") {
  // The detectors see these members on the server itself...
  CHECK(can_set_error_handler<httplib::Server>::value);
  CHECK(can_set_pre_routing_handler<httplib::Server>::value);
  CHECK(can_set_post_routing_handler<httplib::Server>::value);
  // ...and none of them on what Provider::serve passes to the user's routes.
  CHECK(std::is_same_v<wrpc_http::Provider::Routes, std::function<void(Router &)>>);
  CHECK_FALSE(can_set_error_handler<Router>::value);
  CHECK_FALSE(can_set_pre_routing_handler<Router>::value);
  CHECK_FALSE(can_set_post_routing_handler<Router>::value);
}

TEST_CASE("router: the routes a provider hands out cannot change the listener's limits or reach its server") {
  CHECK(can_set_payload_max_length<httplib::Server>::value);
  CHECK_FALSE(can_set_payload_max_length<Router>::value);
  CHECK_FALSE(can_reach_server<Router>::value);
}

TEST_CASE("router: a route registered through the router answers on the server") {
  httplib::Server server;
  Router routes(server);
  routes.Get("/hello", [](const httplib::Request &, httplib::Response &res) { res.set_content("hi", "text/plain"); });
  int port = server.bind_to_any_port("127.0.0.1");
  REQUIRE(port > 0);
  std::thread serving([&] { server.listen_after_bind(); });
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/hello");
  server.stop();
  serving.join();
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "hi");
}
