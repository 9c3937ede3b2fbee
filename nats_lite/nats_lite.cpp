// nats_lite: poke a lattice with the header's own NATS client.
//
//   nats_lite [--server URL] pub SUBJECT DATA
//   nats_lite [--server URL] sub SUBJECT [--count N]
//   nats_lite [--server URL] req SUBJECT DATA [--timeout-ms N]
//   nats_lite [--server URL] reply SUBJECT DATA
//
// Errors (no server, timeout, no responders) exit non-zero with one line on stderr.
#include "../wrpc_http_provider.hpp"

#include <iostream>

namespace {

int usage() {
  std::cerr << "usage: nats_lite [--server URL] pub SUBJECT DATA | sub SUBJECT [--count N] |\n"
               "                 req SUBJECT DATA [--timeout-ms N] | reply SUBJECT DATA\n";
  return 2;
}

}  // namespace

int main(int argc, char **argv) {
  std::vector<std::string> words;
  std::string server = "nats://127.0.0.1:4222";
  long count = 0, timeout_ms = 2000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    bool has_value = i + 1 < argc;
    try {
      if (a == "--server" && has_value) server = argv[++i];
      else if (a == "--count" && has_value) count = std::stol(argv[++i]);
      else if (a == "--timeout-ms" && has_value) timeout_ms = std::stol(argv[++i]);
      else if (a.rfind("--", 0) == 0) return usage();
      else words.push_back(a);
    } catch (const std::exception &) {
      return usage();
    }
  }
  if (words.empty()) return usage();
  const std::string &cmd = words[0];
  bool needs_data = cmd == "pub" || cmd == "req" || cmd == "reply";
  if (words.size() != (needs_data ? 3u : 2u) || (!needs_data && cmd != "sub")) return usage();
  const std::string &subject = words[1];
  const std::string data = needs_data ? words[2] : "";

  auto signals = wrpc_http::block_termination_signals();
  wrpc_http::nats::Options options;
  options.url = server;
  options.name = "nats_lite";
  options.max_reconnect_attempts = 0;  // a tool reports a lost server instead of waiting
  // Declared before the client: its reader thread runs on_message until the client is gone.
  std::mutex mu;
  std::condition_variable cv;
  long seen = 0;
  wrpc_http::nats::Client nc(options);
  try {
    nc.connect();
    if (cmd == "pub") {
      nc.publish(subject, data);
      nc.flush(std::chrono::milliseconds(timeout_ms));
      return 0;
    }
    if (cmd == "req") {
      auto reply = nc.request(subject, data, std::chrono::milliseconds(timeout_ms));
      std::cout << reply.data << std::endl;
      return 0;
    }
    auto on_message = [&](wrpc_http::nats::Message &m) {
      if (cmd == "reply") {
        if (!m.reply.empty()) nc.publish(m.reply, data);
      } else {
        std::lock_guard<std::mutex> lk(mu);
        std::cout << m.data << std::endl;
      }
      std::lock_guard<std::mutex> lk(mu);
      ++seen;
      cv.notify_all();
    };
    nc.subscribe(subject, on_message);
    nc.flush(std::chrono::milliseconds(timeout_ms));
    std::cerr << "listening on " << subject << std::endl;
    // Stop after --count messages, on SIGTERM/SIGINT, or when the server goes away.
    while (true) {
      timespec tick{0, 100 * 1000 * 1000};
      if (sigtimedwait(&signals, nullptr, &tick) > 0) return 0;
      std::lock_guard<std::mutex> lk(mu);
      if (count > 0 && seen >= count) break;
      if (!nc.connected()) throw wrpc_http::nats::Error(wrpc_http::nats::Error::Kind::disconnected, "lost the NATS server");
    }
    nc.close();
    return 0;
  } catch (const std::exception &e) {
    std::cerr << "nats_lite: " << e.what() << std::endl;
    return 1;
  }
}
