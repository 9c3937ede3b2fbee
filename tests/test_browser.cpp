// CORS as a browser sees it: headless Chromium (Debian's) loads a page from one origin whose
// script fetches /proxy from the provider on another origin; the outcome is written into the
// page and read back with --dump-dom.
#include "lattice.hpp"

using namespace std::chrono_literals;

namespace {

// Serves the test page on a free loopback port, from a thread it owns and joins.
class PageServer {
public:
  PageServer(int port, std::string html) : port_(port) {
    server_.Get("/page", [html](const httplib::Request &, httplib::Response &res) { res.set_content(html, "text/html"); });
    REQUIRE(server_.bind_to_port("127.0.0.1", port_));
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~PageServer() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }

private:
  httplib::Server server_;
  int port_;
  std::thread thread_;
};

// The page's script: a preflighted PUT (JSON body, a custom header), then what came back.
std::string page_fetching(const std::string &url) {
  return R"(<html><body><div id="outcome">pending</div><script>
const out = text => { document.getElementById('outcome').textContent = text; };
fetch(')" + url + R"(', {method: 'PUT', headers: {'Content-Type': 'application/json', 'X-Api-Key': 'k'},
                          body: '{"from": "browser"}'})
  .then(async r => out('allowed ' + r.status + ' component=' + r.headers.get('x-component-id') +
                       ' echoed=' + (await r.text())))
  .catch(e => out('refused ' + e.name));
</script></body></html>)";
}

// What the page says once its script ran, loaded in a fresh headless Chromium profile.
std::string outcome_in_chromium(const std::string &page_url) {
  testsupport::TempDir profile;
  auto result = testsupport::run_capture(
      {"chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
       "--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=" + profile.path(),
       "--virtual-time-budget=5000", "--dump-dom", page_url},
      60000ms);
  REQUIRE(result.exit_code == 0);
  auto start = result.out.find("<div id=\"outcome\">"), end = result.out.find("</div>");
  REQUIRE(start != std::string::npos);
  start += std::strlen("<div id=\"outcome\">");
  return result.out.substr(start, end - start);
}

}  // namespace

// The provider, allowing only the origin http://127.0.0.1:<page port>, and the page on it.
struct CrossOrigin {
  int page_port = testsupport::free_port(), provider_port = testsupport::free_port();
  std::string provider_url = "http://127.0.0.1:" + std::to_string(provider_port);
  testsupport::Lattice lattice{[&] {
    testsupport::LatticeOptions options;
    options.config = {{"address", "127.0.0.1:" + std::to_string(provider_port)},
                      {"cors_allowed_origins", nlohmann::json::array({"http://127.0.0.1:" + std::to_string(page_port)}).dump()},
                      {"cors_allowed_headers", R"(["content-type", "x-api-key"])"},
                      {"cors_exposed_headers", R"(["x-component-id"])"}};
    options.listen_port = provider_port;
    return options;
  }()};
  PageServer page{page_port, page_fetching(provider_url + "/proxy")};
};

TEST_CASE("browser cors: a page on the listed origin reads the component's answer to its preflighted PUT") {
  CrossOrigin setup;
  auto outcome = outcome_in_chromium("http://127.0.0.1:" + std::to_string(setup.page_port) + "/page");
  CHECK(outcome == std::string("allowed 200 component=") + testsupport::kComponent +
                       " echoed={\"from\": \"browser\"}");
  auto log = setup.lattice.provider->log();
  CHECK(log.find("method=PUT path=/proxy") != std::string::npos);
}

TEST_CASE("browser cors: the same page from an origin not listed is refused, and its PUT never sent") {
  CrossOrigin setup;
  // localhost and 127.0.0.1 are different origins to the browser.
  auto outcome = outcome_in_chromium("http://localhost:" + std::to_string(setup.page_port) + "/page");
  CHECK(outcome == "refused TypeError");
  auto log = setup.lattice.provider->log();
  CHECK(log.find("method=PUT") == std::string::npos);
}
