// TLS to NATS: a private CA made with the openssl CLI, and a real nats-server that
// requires TLS with a certificate from it.
#include <doctest/doctest.h>

#include "../wrpc_http_provider.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using testsupport::eventually;
using wrpc_http::nats::Client;
using wrpc_http::nats::Error;
using wrpc_http::nats::Message;
using wrpc_http::nats::Options;

namespace {

struct CertFiles {
  std::string cert, key;
};

// Certificate authorities and the certificates they sign, in a temporary directory.
class Pki {
public:
  // A new self-signed CA called `name`; returns the path of its certificate.
  std::string make_ca(const std::string &name) {
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-subj", "/CN=" + name, "-keyout", dir_.file(name + ".key"), "-out", dir_.file(name + ".pem")});
    return dir_.file(name + ".pem");
  }

  // A certificate called `name` signed by the CA `ca`, for `alt_names` such as
  // "IP:127.0.0.1,DNS:localhost".
  CertFiles issue(const std::string &ca, const std::string &name, const std::string &alt_names) {
    CertFiles files{dir_.file(name + ".pem"), dir_.file(name + ".key")};
    openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=" + name,
             "-keyout", files.key, "-out", dir_.file(name + ".csr")});
    std::ofstream(dir_.file(name + ".ext")) << "subjectAltName=" << alt_names << "\n";
    openssl({"x509", "-req", "-in", dir_.file(name + ".csr"), "-CA", dir_.file(ca + ".pem"), "-CAkey",
             dir_.file(ca + ".key"), "-CAcreateserial", "-days", "1", "-extfile", dir_.file(name + ".ext"), "-out",
             files.cert});
    return files;
  }

  // Writes a file into the directory and returns its path.
  std::string write(const std::string &name, const std::string &content) {
    std::ofstream(dir_.file(name)) << content;
    return dir_.file(name);
  }

private:
  static void openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    auto result = testsupport::run_capture(args, 20s);
    if (result.exit_code != 0) throw std::runtime_error("openssl " + args[1] + " failed: " + result.err);
  }

  testsupport::TempDir dir_;
};

// nats-server on loopback that requires TLS with `cert`; `more_tls` goes into its tls block.
testsupport::NatsServer tls_server(Pki &pki, const CertFiles &cert, const std::string &more_tls = "") {
  // The handshake timeout is generous for sanitizer builds (the default is half a second).
  std::string config = "tls {\n  cert_file: \"" + cert.cert + "\"\n  key_file: \"" + cert.key +
                       "\"\n  timeout: 5\n" + more_tls + "}\n";
  return testsupport::NatsServer(0, {"-c", pki.write("nats-tls.conf", config)});
}

std::string tls_url(const testsupport::NatsServer &server, const std::string &host = "127.0.0.1") {
  return "tls://" + host + ":" + std::to_string(server.port());
}

Options options_for(const std::string &url, const std::string &ca_file) {
  Options o;
  o.url = url;
  o.tls_ca_file = ca_file;
  o.connect_timeout = 5000ms;  // a TLS handshake under a sanitizer is slow
  o.reconnect_wait_min = 20ms;
  o.reconnect_wait_max = 200ms;
  return o;
}

// The message of the connect error, or "" when the connect succeeds.
std::string connect_error(const Options &o) {
  Client c(o);
  try {
    c.connect();
  } catch (const Error &e) {
    CHECK(e.kind() == Error::Kind::connect);
    return e.what();
  }
  return "";
}

bool contains(const std::string &text, const std::string &part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("nats tls: a tls:// URL with the private CA connects; pub/sub and request/reply work") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "IP:127.0.0.1,DNS:localhost"));
  Client a(options_for(tls_url(server), ca)), b(options_for(tls_url(server), ca));
  a.connect();
  b.connect();
  std::mutex mu;
  std::vector<std::string> got;
  b.subscribe("greet", [&](Message &m) {
    std::lock_guard<std::mutex> lk(mu);
    got.push_back(m.data);
  });
  b.subscribe("echo", [&](Message &m) { b.publish(m.reply, "re:" + m.data); });
  b.flush(2s);
  a.publish("greet", "hello over TLS");
  REQUIRE(eventually([&] {
    std::lock_guard<std::mutex> lk(mu);
    return got.size() == 1;
  }));
  CHECK(got[0] == "hello over TLS");
  for (int i = 0; i < 20; ++i) CHECK(a.request("echo", std::to_string(i), 2s).data == "re:" + std::to_string(i));
}

TEST_CASE("nats tls: a host name in the URL is checked against the certificate's DNS names") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "DNS:localhost"));
  Client c(options_for(tls_url(server, "localhost"), ca));
  c.connect();
  c.flush(2s);
}

TEST_CASE("nats tls: a server certificate from another CA is refused with a verification error") {
  Pki pki;
  auto trusted = pki.make_ca("trusted");
  pki.make_ca("other");
  auto server = tls_server(pki, pki.issue("other", "server", "IP:127.0.0.1"));
  auto error = connect_error(options_for(tls_url(server), trusted));
  CHECK(contains(error, "server certificate verification failed: unable to get local issuer certificate"));
}

TEST_CASE("nats tls: a certificate for another host is refused") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "DNS:example.com"));
  CHECK(contains(connect_error(options_for(tls_url(server, "127.0.0.1"), ca)),
                 "server certificate verification failed: IP address mismatch"));
  CHECK(contains(connect_error(options_for(tls_url(server, "localhost"), ca)),
                 "server certificate verification failed: hostname mismatch"));
}

// The client follows the server's tls_required (as the Go client does) and verifies the
// certificate exactly as for a tls:// URL.
TEST_CASE("nats tls: a nats:// URL to a server that requires TLS is upgraded to TLS") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "IP:127.0.0.1"));
  Client c(options_for(server.url(), ca));
  c.connect();
  c.subscribe("echo", [&](Message &m) { c.publish(m.reply, m.data); });
  c.flush(2s);
  CHECK(c.request("echo", "upgraded", 2s).data == "upgraded");
}

TEST_CASE("nats tls: the upgrade of a nats:// URL without the private CA is refused by verification") {
  Pki pki;
  pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "IP:127.0.0.1"));
  CHECK(contains(connect_error(options_for(server.url(), "")), "server certificate verification failed"));
}

TEST_CASE("nats tls: a tls:// URL to a server without TLS fails clearly") {
  testsupport::NatsServer server;
  CHECK(contains(connect_error(options_for(tls_url(server), "")),
                 "the URL asks for TLS (tls://) but the server does not offer it"));
}

TEST_CASE("nats tls: an unreadable tls_ca_file fails the connect and names the file") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "IP:127.0.0.1"));
  CHECK(contains(connect_error(options_for(tls_url(server), ca + ".missing")), "cannot load tls_ca_file '" + ca));
}

TEST_CASE("nats tls: a client certificate satisfies a server that verifies clients") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "IP:127.0.0.1"), "  verify: true\n  ca_file: \"" + ca + "\"\n");
  auto client_cert = pki.issue("ca", "client", "DNS:client");
  Options o = options_for(tls_url(server), ca);
  o.tls_cert_file = client_cert.cert;
  o.tls_key_file = client_cert.key;
  Client c(o);
  c.connect();
  c.flush(2s);
  CHECK_FALSE(connect_error(options_for(tls_url(server), ca)).empty());
}

TEST_CASE("nats tls: reconnects after the TLS server restarts and restores subscriptions") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "IP:127.0.0.1"));
  Client pub(options_for(tls_url(server), ca)), sub(options_for(tls_url(server), ca));
  pub.connect();
  sub.connect();
  std::atomic<int> got{0};
  sub.subscribe("after.restart", [&](Message &) { got++; });
  sub.subscribe("svc", [&](Message &m) { sub.publish(m.reply, "pong"); });
  sub.flush(2s);
  server.kill();
  REQUIRE(eventually([&] { return !pub.connected() && !sub.connected(); }));
  server.start();
  REQUIRE(eventually([&] { return pub.connected() && sub.connected(); }, 10s));
  sub.flush(2s);
  pub.publish("after.restart", "x");
  REQUIRE(eventually([&] { return got == 1; }));
  CHECK(pub.request("svc", "ping", 2s).data == "pong");
}

// Replies are written by the responder while its reader is busy with the next requests,
// so both directions of each TLS connection are in use at the same time.
TEST_CASE("nats tls: large messages flow both ways at once on one connection") {
  Pki pki;
  auto ca = pki.make_ca("ca");
  auto server = tls_server(pki, pki.issue("ca", "server", "IP:127.0.0.1"));
  Client requester(options_for(tls_url(server), ca)), responder(options_for(tls_url(server), ca));
  requester.connect();
  responder.connect();
  responder.subscribe("echo", [&](Message &m) { responder.publish(m.reply, m.data); });
  responder.flush(2s);
  std::atomic<int> correct{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < 8; ++i) {
        std::string payload(200 * 1024, static_cast<char>('a' + t));
        payload += std::to_string(i);
        try {
          if (requester.request("echo", payload, 10s).data == payload) correct++;
        } catch (const Error &e) {
          MESSAGE("request failed: " << e.what());
        }
      }
    });
  }
  for (auto &c : callers) c.join();
  CHECK(correct == 32);
}
