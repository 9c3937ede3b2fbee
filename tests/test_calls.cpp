// Calls that hold no thread (issue 22): a forwarded request's response is written as the
// component's answer arrives, from the NATS reader and the edge loop, so thousands of calls
// waiting for a slow component, or streaming for a long time, cost no thread each and leave
// everyone else served at once. Real provider process, real nats-server, the fault component
// (its sleep/MS and drip/N/MS paths wait on one timer thread, so the component is not the
// limit), and plain sockets as clients, all driven from one thread.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>

#include <future>

#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::Clock;
using testsupport::Lattice;

namespace {

// `count` clients, each on its own connection, each sending `request` (which asks for
// `Connection: close`) and reading until the provider closes.
class ManyClients {
public:
  ManyClients(int port, const std::string &request, int count) : replies_(static_cast<size_t>(count)) {
    for (int i = 0; i < count; ++i) {
      int fd = testsupport::connect_loopback(port);
      REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      open_.push_back({fd, POLLIN, 0});
      index_.push_back(static_cast<size_t>(i));
    }
  }
  ~ManyClients() {
    for (auto &p : open_) ::close(p.fd);
  }

  // Reads until every client's connection closed or `deadline`; returns whether all closed.
  bool read_all(Clock::time_point deadline) {
    char buf[16 * 1024];
    while (!open_.empty() && Clock::now() < deadline) {
      if (::poll(open_.data(), open_.size(), 100) <= 0) continue;
      for (size_t i = 0; i < open_.size();) {
        bool closed = false;
        if (open_[i].revents) {
          ssize_t n;
          while ((n = ::recv(open_[i].fd, buf, sizeof(buf), 0)) > 0) replies_[index_[i]].append(buf, static_cast<size_t>(n));
          closed = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
        }
        if (closed) {
          ::close(open_[i].fd);
          open_[i] = open_.back();
          index_[i] = index_.back();
          open_.pop_back();
          index_.pop_back();
        } else {
          ++i;
        }
      }
    }
    return open_.empty();
  }

  const std::vector<std::string> &replies() const { return replies_; }

private:
  std::vector<pollfd> open_;
  std::vector<size_t> index_;  // open_[i] is client index_[i]
  std::vector<std::string> replies_;
};

// A 200 whose chunked body ended with its last chunk (the component sends no length).
bool whole_200(const std::string &reply) {
  return reply.compare(0, 12, "HTTP/1.1 200") == 0 && reply.find("\r\nTransfer-Encoding: chunked\r\n") != std::string::npos &&
         reply.size() >= 5 && reply.compare(reply.size() - 5, 5, "0\r\n\r\n") == 0;
}

std::string request_closing(const std::string &path) {
  return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
}

int raise_file_limit() {
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = files.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &files);
  return static_cast<int>(files.rlim_cur);
}

// What a fresh client meets while the crowd waits: the slowest of a few GETs of `path`
// spread over `span`, and whether each was answered 200.
struct FreshRequests {
  double slowest = 0;
  bool all_ok = true;
};
FreshRequests fresh_requests(Lattice &lattice, const std::string &path, int count, std::chrono::milliseconds span) {
  FreshRequests out;
  for (int i = 0; i < count; ++i) {
    auto http = lattice.http();
    auto start = Clock::now();
    auto res = http.Get(path.c_str());
    out.slowest = std::max(out.slowest, testsupport::seconds_since(start));
    out.all_ok = out.all_ok && res && res->status == 200;
    std::this_thread::sleep_for(span / count);
  }
  return out;
}

// `count` GETs each of `/` (the provider's) and `/proxy` (the component's fast path), spread
// over `span` each: every one answered 200 within 100 ms.
void check_fresh_requests_answered_at_once(Lattice &lattice, int count, std::chrono::milliseconds span) {
  auto own = fresh_requests(lattice, "/", count, span);
  auto forwarded = fresh_requests(lattice, "/proxy", count, span);
  MESSAGE("meanwhile: slowest / " << own.slowest * 1000 << " ms, slowest /proxy " << forwarded.slowest * 1000
                                  << " ms, threads " << testsupport::thread_count(lattice.provider->pid()));
  CHECK(own.all_ok);
  CHECK(forwarded.all_ok);
  CHECK(own.slowest < 0.1);
  CHECK(forwarded.slowest < 0.1);
}

// Samples the provider's thread count and RSS every 100 ms until stopped.
class Sampler {
public:
  explicit Sampler(pid_t pid) : thread_([this, pid] {
    while (!stop_) {
      int threads = testsupport::thread_count(pid);
      long rss = testsupport::proc_status_kib(pid, "VmRSS");
      {
        std::lock_guard<std::mutex> lk(mu_);
        peak_threads_ = std::max(peak_threads_, threads);
        peak_rss_kib_ = std::max(peak_rss_kib_, rss);
      }
      std::this_thread::sleep_for(100ms);
    }
  }) {}
  ~Sampler() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int peak_threads() {
    std::lock_guard<std::mutex> lk(mu_);
    return peak_threads_;
  }
  long peak_rss_kib() {
    std::lock_guard<std::mutex> lk(mu_);
    return peak_rss_kib_;
  }

private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  int peak_threads_ = 0;
  long peak_rss_kib_ = 0;
  std::thread thread_;
};

}  // namespace

TEST_SUITE("calls") {

TEST_CASE("calls: 3,000 calls waiting 5 s for their component hold no thread; / and /proxy are answered at once "
          "meanwhile, and every call is answered 200") {
  constexpr int kCalls = 3000;
  REQUIRE(raise_file_limit() > kCalls + 200);
  Lattice lattice("fault-component", {{"timeout_ms", "20000"}});
  pid_t pid = lattice.provider->pid();
  Sampler sampler(pid);

  auto sent = Clock::now();
  ManyClients crowd(lattice.http_port, request_closing("/proxy/fault/sleep/5000"), kCalls);
  MESSAGE(kCalls << " calls sent in " << testsupport::seconds_since(sent) << " s");
  auto reading = std::async(std::launch::async, [&] { return crowd.read_all(Clock::now() + 40s); });

  std::this_thread::sleep_for(1s);  // the calls are in flight: the component answers at 5 s
  check_fresh_requests_answered_at_once(lattice, 5, 1s);

  REQUIRE(reading.get());
  sampler.stop();
  int answered = 0;
  for (auto &reply : crowd.replies())
    if (whole_200(reply) && reply.find("\r\nslept 5000\r\n") != std::string::npos) ++answered;
  MESSAGE(answered << " of " << kCalls << " answered 200 \"slept 5000\" after " << testsupport::seconds_since(sent)
                   << " s; peak threads " << sampler.peak_threads());
  CHECK(answered == kCalls);
  CHECK(sampler.peak_threads() < 64);
}

TEST_CASE("calls: 2,000 responses streaming at once for 30 s each reach their client whole and in order; fresh "
          "requests are answered at once, threads stay under 64 and memory grows under 100 MiB") {
  constexpr int kStreams = 2000;
  constexpr int kChunks = 150;  // one every 200 ms: 30 s
  REQUIRE(raise_file_limit() > kStreams + 200);
  testsupport::WithoutAsanQuarantine no_quarantine;  // the memory bound is the provider's, not ASan's
  Lattice lattice("fault-component", {{"timeout_ms", "20000"}});
  pid_t pid = lattice.provider->pid();
  REQUIRE(lattice.http().Get("/proxy"));
  long rss_before = testsupport::proc_status_kib(pid, "VmRSS");
  Sampler sampler(pid);

  auto sent = Clock::now();
  ManyClients crowd(lattice.http_port,
                    request_closing("/proxy/fault/drip/" + std::to_string(kChunks) + "/200"), kStreams);
  auto reading = std::async(std::launch::async, [&] { return crowd.read_all(Clock::now() + 90s); });

  std::this_thread::sleep_for(2s);
  check_fresh_requests_answered_at_once(lattice, 10, 10s);

  REQUIRE(reading.get());
  sampler.stop();
  int whole = 0;
  for (auto &reply : crowd.replies()) {
    // Each chunk once, in order.
    bool ok = whole_200(reply);
    size_t at = 0;
    for (int i = 0; ok && i < kChunks; ++i) {
      at = reply.find("chunk " + std::to_string(i) + "\n", at);
      ok = at != std::string::npos;
    }
    if (ok) ++whole;
  }
  long growth_mib = (sampler.peak_rss_kib() - rss_before) / 1024;
  MESSAGE(whole << " of " << kStreams << " streams whole after " << testsupport::seconds_since(sent)
                << " s; peak threads " << sampler.peak_threads() << ", RSS growth " << growth_mib << " MiB");
  CHECK(whole == kStreams);
  CHECK(sampler.peak_threads() < 64);
  CHECK(growth_mib < 100);
}

TEST_CASE("calls: the provider's own answer to a waiting call (504 past timeout_ms) is framed by its Content-Length "
          "and closes the connection") {
  Lattice lattice("fault-component", {{"timeout_ms", "300"}});
  auto reply = testsupport::send_raw(lattice.http_port,
                                     "GET /proxy/fault/sleep/2000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 3000ms);
  CHECK(reply.bytes.compare(0, 12, "HTTP/1.1 504") == 0);
  // Complete by its length, not only by the close (HTTP/1.1 clients such as wrk count a body
  // that only the close ends as a read error).
  CHECK(testsupport::response_complete(reply.bytes));
  CHECK(reply.bytes.find("\r\nConnection: close\r\n") != std::string::npos);
}

TEST_CASE("calls: a client that stops reading its streamed response holds back only its own call, which is cut "
          "off while the others stream whole") {
  Lattice lattice;  // the demo component: /proxy/bytes/N streams N bytes as fast as it can
  pid_t pid = lattice.provider->pid();
  // The stalled client asks for far more than the socket buffers and the call's 16 MiB bound hold.
  int stalled = testsupport::connect_loopback(lattice.http_port);
  int small = 16 * 1024;
  ::setsockopt(stalled, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  auto ask = request_closing("/proxy/bytes/" + std::to_string(256u << 20));
  REQUIRE(::send(stalled, ask.data(), ask.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(ask.size()));
  std::this_thread::sleep_for(500ms);  // its buffers are full: the provider's writes to it wait

  // Others meanwhile: four 20 MiB downloads, one after the other, each byte-exact.
  const size_t size = 20u << 20;
  auto expected = testsupport::pattern_bytes(size);
  auto start = Clock::now();
  int exact = 0;
  for (int i = 0; i < 4; ++i) {
    auto res = lattice.http().Get("/proxy/bytes/" + std::to_string(size));
    if (res && res->status == 200 && res->body == expected) ++exact;
  }
  MESSAGE("4 x 20 MiB beside the stalled client in " << testsupport::seconds_since(start) << " s, threads "
                                                      << testsupport::thread_count(pid));
  CHECK(exact == 4);

  // The stalled client's response was cut: reading now ends (closed) short of what it asked for.
  ::fcntl(stalled, F_SETFL, ::fcntl(stalled, F_GETFL) | O_NONBLOCK);
  size_t got = 0;
  bool closed = false;
  auto deadline = Clock::now() + 15s;
  char buf[64 * 1024];
  while (!closed && Clock::now() < deadline) {
    pollfd p{stalled, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    ssize_t n = ::recv(stalled, buf, sizeof(buf), 0);
    if (n > 0) got += static_cast<size_t>(n);
    else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) closed = true;
  }
  ::close(stalled);
  MESSAGE("the stalled client got " << got / 1024 << " KiB of 256 MiB before its connection closed");
  CHECK(closed);
  CHECK(got < (256u << 20));
}

TEST_CASE("calls: a response the component writes far faster than its client reads arrives whole past the "
          "call's own 16 MiB (the shared overflow pool)") {
  Lattice lattice;  // the demo component: /proxy/bytes/N streams N bytes as fast as it can
  // A client on a fast network (at most 40 MB/s here) behind a component writing at memory
  // speed: 48 MiB leave it some 30 MiB behind, far more than the NATS reader's bounded waits
  // (100 ms at once, 10% of the time) can let it catch up on with the call's own 16 MiB.
  const size_t size = 48u << 20;
  std::string body;
  size_t since_pause = 0;
  auto start = Clock::now();
  auto res = lattice.http().Get("/proxy/bytes/" + std::to_string(size), [&](const char *data, size_t n) {
    body.append(data, n);
    since_pause += n;
    if (since_pause >= 40 * 1024) {
      std::this_thread::sleep_for(1ms);
      since_pause = 0;
    }
    return true;
  });
  MESSAGE((body.size() / 1024) << " KiB read in " << testsupport::seconds_since(start) << " s");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(body.size() == size);
  CHECK(body == testsupport::pattern_bytes(size));
}

}  // TEST_SUITE("calls")
