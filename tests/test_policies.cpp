// The Rust provider's config keys, per key, against build/http-server with curl: CORS,
// cache_control, readonly_mode, listen_address, case-insensitive keys.
#include "lattice.hpp"

using testsupport::curl;
using testsupport::kComponent;
using testsupport::link_to;
using testsupport::Lattice;
using testsupport::LatticeOptions;

namespace {

const std::string kApp = "http://app.example";

Lattice listed_origin_provider() {
  return Lattice(LatticeOptions{{{"cors_allowed_origins", R"(["http://app.example/"])"},
                                            {"cors_allowed_methods", R"(["GET", "PUT"])"},
                                            {"cors_allowed_headers", R"(["Content-Type", "X-Api-Key"])"},
                                            {"cors_exposed_headers", R"(["x-component-id"])"},
                                            {"cors_max_age_secs", "600"}}});
}

std::vector<std::string> preflight(const Lattice &p, const std::string &origin) {
  return {"-X",     "OPTIONS", p.url("/proxy"), "-H", "Origin: " + origin, "-H", "Access-Control-Request-Method: PUT",
          "-H", "Access-Control-Request-Headers: x-api-key"};
}

}  // namespace

TEST_CASE("cors: a preflight from a listed origin is answered by the provider with the configured lists") {
  auto p = listed_origin_provider();
  auto reply = curl(preflight(p, kApp));
  CHECK(reply.status == 200);
  CHECK(reply.body.empty());  // never forwarded: the component would answer with a body
  CHECK_FALSE(reply.has_header("x-component-id"));
  CHECK(reply.header("Access-Control-Allow-Origin") == kApp);
  CHECK(reply.header("Access-Control-Allow-Credentials") == "true");
  CHECK(reply.header("Access-Control-Allow-Methods") == "GET, PUT");
  CHECK(reply.header("Access-Control-Allow-Headers") == "content-type, x-api-key");
  CHECK(reply.header("Access-Control-Max-Age") == "600");
  CHECK(reply.header("Vary") == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
}

TEST_CASE("cors: a preflight from an origin not listed gets no Access-Control headers") {
  auto p = listed_origin_provider();
  auto reply = curl(preflight(p, "http://evil.example"));
  CHECK(reply.status == 200);
  CHECK_FALSE(reply.has_header("Access-Control-Allow-Origin"));
  CHECK_FALSE(reply.has_header("Access-Control-Allow-Methods"));
  CHECK_FALSE(reply.has_header("x-component-id"));
}

TEST_CASE("cors: a request from a listed origin is forwarded and gets the allow, credentials and expose headers") {
  auto p = listed_origin_provider();
  auto reply = curl({p.url("/proxy"), "-H", "Origin: " + kApp});
  CHECK(reply.status == 200);
  CHECK(reply.body == "Hello from the component!");
  CHECK(reply.header("Access-Control-Allow-Origin") == kApp);
  CHECK(reply.header("Access-Control-Allow-Credentials") == "true");
  CHECK(reply.header("Access-Control-Expose-Headers") == "x-component-id");
  CHECK(reply.header("Vary") == "Origin");
}

TEST_CASE("cors: a request from an origin not listed is answered without Access-Control headers, with Vary: Origin") {
  auto p = listed_origin_provider();
  auto reply = curl({p.url("/proxy"), "-H", "Origin: http://evil.example"});
  CHECK(reply.status == 200);
  CHECK_FALSE(reply.has_header("Access-Control-Allow-Origin"));
  CHECK(reply.header("Vary") == "Origin");
}

TEST_CASE("cors: by default every origin is allowed with *, the Rust provider's lists and max age 300, no credentials") {
  Lattice p(LatticeOptions{});
  auto reply = curl(preflight(p, "http://anywhere.example"));
  CHECK(reply.status == 200);
  CHECK(reply.header("Access-Control-Allow-Origin") == "*");
  CHECK_FALSE(reply.has_header("Access-Control-Allow-Credentials"));
  CHECK(reply.header("Access-Control-Allow-Methods") == "GET, POST, PUT, DELETE, HEAD, OPTIONS");
  CHECK(reply.header("Access-Control-Allow-Headers") == "accept, accept-language, content-type, content-language");
  CHECK(reply.header("Access-Control-Max-Age") == "300");
  auto simple = curl({p.url("/"), "-H", "Origin: http://anywhere.example"});
  CHECK(simple.header("Access-Control-Allow-Origin") == "*");
  CHECK(simple.header("Access-Control-Expose-Headers") == "*");
}

TEST_CASE("cors: empty method and header lists allow what the preflight asks for") {
  Lattice p(LatticeOptions{{{"cors_allowed_methods", "[]"}, {"cors_allowed_headers", "[]"}}});
  auto reply = curl(preflight(p, kApp));
  CHECK(reply.header("Access-Control-Allow-Methods") == "PUT");
  CHECK(reply.header("Access-Control-Allow-Headers") == "x-api-key");
}

TEST_CASE("cors: OPTIONS without Access-Control-Request-Method is not a preflight and reaches the component") {
  auto p = listed_origin_provider();
  auto reply = curl({"-X", "OPTIONS", p.url("/proxy"), "-H", "Origin: " + kApp});
  CHECK(reply.header("x-component-id") == kComponent);
  CHECK(reply.header("Access-Control-Allow-Origin") == kApp);
}

TEST_CASE("cors: bad values are refused at start with the key named") {
  CHECK(testsupport::refused_config({{"cors_allowed_origins", R"(["ftp://files.example"])"}}).find(
            "cors_allowed_origins") != std::string::npos);
  CHECK(testsupport::refused_config({{"cors_allowed_origins", "http://app.example"}}).find("JSON array") !=
        std::string::npos);
  CHECK(testsupport::refused_config({{"cors_allowed_methods", R"(["GET POST"])"}}).find("cors_allowed_methods") !=
        std::string::npos);
  CHECK(testsupport::refused_config({{"cors_max_age_secs", "-1"}}).find("cors_max_age_secs") != std::string::npos);
}

TEST_CASE("cors: a method or header name with a NUL byte is not a token and is refused at start") {
  CHECK(testsupport::refused_config({{"cors_allowed_methods", R"(["GET\u0000"])"}}).find("cors_allowed_methods") !=
        std::string::npos);
  CHECK(testsupport::refused_config({{"cors_allowed_headers", R"(["X-Api-Key\u0000"])"}}).find(
            "cors_allowed_headers") != std::string::npos);
  CHECK(testsupport::refused_config({{"cors_exposed_headers", R"(["\u0000"])"}}).find("cors_exposed_headers") !=
        std::string::npos);
}

TEST_CASE("cache_control: added to a component response that has none") {
  Lattice p(LatticeOptions{{{"cache_control", "public, max-age=60"}}});
  auto reply = curl({p.url("/proxy")});
  CHECK(reply.status == 200);
  CHECK(reply.header("Cache-Control") == "public, max-age=60");
}

TEST_CASE("cache_control: a component's own Cache-Control is kept") {
  Lattice p(LatticeOptions{{{"cache_control", "public, max-age=60"}}});
  auto reply = curl({p.url("/proxy/cached")});
  CHECK(reply.body == "cached");
  CHECK(reply.header("Cache-Control") == "private, max-age=5");
}

TEST_CASE("cache_control: error answers are not made cacheable") {
  Lattice p(LatticeOptions{{{"cache_control", "public, max-age=60"}}});
  CHECK_FALSE(curl({p.url("/proxy/status/500")}).has_header("Cache-Control"));
  CHECK_FALSE(curl({p.url("/proxy/error")}).has_header("Cache-Control"));
}

TEST_CASE("readonly_mode: GET and HEAD are forwarded") {
  Lattice p(LatticeOptions{{{"readonly_mode", "true"}}});
  CHECK(curl({p.url("/proxy")}).body == "Hello from the component!");
  CHECK(curl({"-I", p.url("/proxy")}).status == 200);
}

TEST_CASE("readonly_mode: other methods get 405 with Allow: GET, HEAD and never reach the component") {
  Lattice p(LatticeOptions{{{"readonly_mode", "true"}}});
  for (auto method : {"POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) {
    CAPTURE(method);
    auto reply = curl({"-X", method, p.url("/proxy"), "--data-binary", "payload"});
    CHECK(reply.status == 405);
    CHECK(reply.header("Allow") == "GET, HEAD");
    CHECK_FALSE(reply.has_header("x-component-id"));
  }
}

TEST_CASE("readonly_mode: a refused request's body is not read; the connection closes") {
  Lattice p(LatticeOptions{{{"readonly_mode", "true"}}});
  int fd = testsupport::connect_loopback(p.http_port);
  std::string request = "POST /proxy HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
  std::string reply;
  bool closed = false;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);  // keep-alive would hold 5 s
  while (!closed && std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) closed = true;
    else reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  CHECK(reply.rfind("HTTP/1.1 405", 0) == 0);
  CHECK(closed);
}

TEST_CASE("readonly_mode: a CORS preflight is still answered") {
  Lattice p(LatticeOptions{{{"readonly_mode", "true"}}});
  auto reply = curl(preflight(p, kApp));
  CHECK(reply.status == 200);
  CHECK(reply.header("Access-Control-Allow-Origin") == "*");
}

TEST_CASE("readonly_mode: only true or false is accepted") {
  CHECK(testsupport::refused_config({{"readonly_mode", "yes"}}).find("readonly_mode") != std::string::npos);
}

TEST_CASE("listen_address: the Rust provider's name for the listener's address") {
  int port = testsupport::free_port();
  LatticeOptions options{{{"listen_address", "127.0.0.1:" + std::to_string(port)}}};
  options.listen_port = port;
  Lattice p(options);
  CHECK(curl({p.url("/proxy")}).body == "Hello from the component!");
}

TEST_CASE("listen_address: routing_mode path listens there") {
  int port = testsupport::free_port();
  LatticeOptions options{{{"routing_mode", "path"}, {"listen_address", "127.0.0.1:" + std::to_string(port)}},
                          nlohmann::json::array({link_to(kComponent, {{"path", "/"}})})};
  options.listen_port = port;
  Lattice p(options);
  CHECK(curl({p.url("/anything")}).body == "Hello from the component!");
}

TEST_CASE("listen_address: disagreeing with default_address is refused at start") {
  auto err = testsupport::refused_config({{"listen_address", "127.0.0.1:1"}, {"default_address", "127.0.0.1:2"}});
  CHECK(err.find("disagree") != std::string::npos);
}

TEST_CASE("config keys: case-insensitive in the provider config and in a link's source_config") {
  Lattice p(LatticeOptions{{{"Cache_Control", "no-store"}},
                                      nlohmann::json::array({link_to(kComponent, {{"READONLY_MODE", "TRUE"}})})});
  CHECK(curl({p.url("/proxy")}).header("Cache-Control") == "no-store");
  CHECK(curl({"-X", "POST", p.url("/proxy"), "-d", "x"}).status == 405);
}

TEST_CASE("config keys: two keys that differ only in case are refused") {
  auto err = testsupport::refused_config({{"readonly_mode", "true"}, {"READONLY_MODE", "false"}});
  CHECK(err.find("case-insensitive") != std::string::npos);
}

TEST_CASE("cors: a config update changes the policy from the next request") {
  Lattice p(LatticeOptions{});
  CHECK(curl({p.url("/"), "-H", "Origin: " + kApp}).header("Access-Control-Allow-Origin") == "*");
  nlohmann::json update = {{"address", testsupport::loopback(p.http_port)},
                           {"cors_allowed_origins", R"(["http://other.example"])"}};
  p.client->publish(testsupport::provider_subject("config.update"), update.dump());
  p.client->flush(std::chrono::milliseconds(2000));
  CHECK(testsupport::eventually(
      [&] { return !curl({p.url("/"), "-H", "Origin: " + kApp}).has_header("Access-Control-Allow-Origin"); }));
  CHECK(curl({p.url("/"), "-H", "Origin: http://other.example"}).header("Access-Control-Allow-Origin") ==
        "http://other.example");
}
