// A misbehaving wasmCloud HTTP component, for the fault tests: it answers
// `wrpc:http/incoming-handler@0.1.0.handle` invocations on the wire directly (not through
// wrpc::Server, which only ever sends well-formed results), so that it can break the
// protocol in the ways a crashing or buggy component does.
//
//   fault-component --nats URL [--lattice default] [--id http-http_component]
//
// The request path picks the fault:
//   /proxy/fault/garbage        bytes that are no wRPC result, then the results channel closes
//   /proxy/fault/partial-head   the first bytes of a valid result head, then the channel closes
//   /proxy/fault/empty-result   the results channel closes without any value
//   /proxy/fault/status/N       a well-formed response head with status N (e.g. 999)
//   /proxy/fault/header-control a 200 whose header values hold control bytes (x-ctl-01, x-ctl-7f,
//                               x-ctl-nul, x-ctl-cr), beside x-tab: a<HTAB>b and x-ok: fine
//   /proxy/fault/unclosed       a 200 with body "unclosed" and trailer x-checksum: abc123, whose body
//                               and trailers channels are never closed by an empty message (as
//                               wasmCloud host 0.20.0 sends them: the values are complete)
//   /proxy/fault/die-mid-body   a 200 head and part of a streamed body, then the process exits
//   /proxy/fault/slow-body      a 200 head, then 600 ms later its body "late body" and its end
//   /proxy/fault/sleep/MS       a 200 "slept MS" after MS milliseconds
//   /proxy/fault/drip/N/MS      a 200 head at once, then N chunks "chunk I\n" (I from 0) one every
//                               MS milliseconds, then the body's end
//   /proxy/fault/paced/N/MS     a 200 head at once, then N bytes of the pattern a-z (from `a`
//                               again every 64 KiB) in pieces of 256 KiB, one every MS
//                               milliseconds: a large body no faster than a client takes it
// Any other path gets a well-formed 200 "fault component ok". Sleep and drip hold no thread
// while they wait (one timer thread serves them all), so thousands can run at once.
#include "../wrpc_http_provider.hpp"

#include <iostream>
#include <queue>

namespace {

using wrpc_http::nats::Client;
using wrpc_http::nats::Message;

const std::string kFaultPrefix = "/proxy/fault/";

std::string request_path(const Message &invocation) {
  auto params = wrpc_http::detail::decode_handle_params(invocation.data.data(), invocation.data.size());
  if (params.status != wrpc_http::detail::DecodeStatus::ok) return "";
  auto path = params.value.request.path_with_query.value_or("/");
  return path.substr(0, path.find('?'));
}

std::string result_head(uint16_t status, const wrpc_http::Fields &extra_headers = {}) {
  wrpc_http::ResponseHead head;
  head.status = status;
  head.headers = {{"content-type", {"text/plain"}}};
  head.headers.insert(head.headers.end(), extra_headers.begin(), extra_headers.end());
  std::string value;
  wrpc_http::detail::encode_handle_result_ok(head, value);
  return value;
}

// Publishes a response's whole body, its end and no trailers.
void publish_body(wrpc_http::nats::Batch &batch, const std::string &reply, const std::string &body) {
  std::string chunk, end, trailers;
  wrpc_http::detail::encode_stream_chunk(body.data(), body.size(), chunk);
  wrpc_http::detail::encode_stream_end(end);
  wrpc_http::detail::encode_trailers(std::nullopt, trailers);
  batch.publish(reply + ".results.0.0", chunk + end);
  batch.publish(reply + ".results.0.0", "");
  batch.publish(reply + ".results.0.1", trailers);
  batch.publish(reply + ".results.0.1", "");
}

// Publishes a complete, well-formed response: head, body, end of body, no trailers.
void publish_response(wrpc_http::nats::Batch &batch, const std::string &reply, uint16_t status,
                      const std::string &body, const wrpc_http::Fields &extra_headers = {}) {
  batch.publish(reply + ".results", result_head(status, extra_headers));
  batch.publish(reply + ".results", "");
  publish_body(batch, reply, body);
}

// Runs jobs at their due time on one thread.
class Timers {
public:
  Timers() : thread_([this] { run(); }) {}
  ~Timers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void at(std::chrono::steady_clock::time_point due, std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      jobs_.push(Job{due, sequence_++, std::move(job)});
    }
    cv_.notify_all();
  }

private:
  struct Job {
    std::chrono::steady_clock::time_point due;
    uint64_t sequence;  // same due time: first come, first run
    std::function<void()> run;
    bool operator>(const Job &o) const { return due != o.due ? due > o.due : sequence > o.sequence; }
  };
  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stopping_) {
      if (jobs_.empty()) {
        cv_.wait(lk);
        continue;
      }
      auto due = jobs_.top().due;
      if (std::chrono::steady_clock::now() < due) {
        cv_.wait_until(lk, due);
        continue;
      }
      auto job = jobs_.top().run;
      jobs_.pop();
      lk.unlock();
      try {
        job();
      } catch (const wrpc_http::nats::Error &) {
        // The connection closed (the component is stopping): nobody waits for the answer.
      }
      lk.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Job, std::vector<Job>, std::greater<Job>> jobs_;
  uint64_t sequence_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

using Piece = std::function<std::string(int index)>;

// drip/N/MS and paced/N/MS: piece `index` of `count`, and the next one MS later (the end after
// the last).
void drip(Client &nc, Timers &timers, const std::string &reply, int index, int count, std::chrono::milliseconds every,
          Piece piece) {
  auto batch = nc.batch();
  if (index == count) {
    std::string end, trailers;
    wrpc_http::detail::encode_stream_end(end);
    wrpc_http::detail::encode_trailers(std::nullopt, trailers);
    batch.publish(reply + ".results.0.0", end);
    batch.publish(reply + ".results.0.0", "");
    batch.publish(reply + ".results.0.1", trailers);
    batch.publish(reply + ".results.0.1", "");
    nc.send(batch);
    return;
  }
  std::string text = piece(index), chunk;
  wrpc_http::detail::encode_stream_chunk(text.data(), text.size(), chunk);
  batch.publish(reply + ".results.0.0", chunk);
  nc.send(batch);
  timers.at(std::chrono::steady_clock::now() + every, [&nc, &timers, reply, index, count, every, piece] {
    drip(nc, timers, reply, index + 1, count, every, piece);
  });
}

// The a-z pattern of /proxy/bytes/N, `size` bytes from a 64 KiB boundary on.
std::string pattern_piece(size_t size) {
  std::string out(size, '\0');
  for (size_t i = 0; i < size; ++i) out[i] = static_cast<char>('a' + (i % (64 * 1024)) % 26);
  return out;
}

// The waiting faults, answered from the timer thread; false for any other path.
bool answer_later(Client &nc, Timers &timers, const std::string &reply, const std::string &path) {
  auto fault = path.compare(0, kFaultPrefix.size(), kFaultPrefix) == 0 ? path.substr(kFaultPrefix.size()) : "";
  auto now = std::chrono::steady_clock::now();
  if (fault.compare(0, 6, "sleep/") == 0) {
    auto ms = std::stoi(fault.substr(6));
    timers.at(now + std::chrono::milliseconds(ms), [&nc, reply, ms] {
      auto batch = nc.batch();
      publish_response(batch, reply, 200, "slept " + std::to_string(ms));
      nc.send(batch);
    });
    return true;
  }
  bool paced = fault.compare(0, 6, "paced/") == 0;
  if (fault.compare(0, 5, "drip/") == 0 || paced) {
    auto rest = fault.substr(paced ? 6 : 5);
    uint64_t n = std::stoull(rest.substr(0, rest.find('/')));
    std::chrono::milliseconds every(std::stoi(rest.substr(rest.find('/') + 1)));
    const size_t piece_bytes = 256 * 1024;
    int count = static_cast<int>(paced ? (n + piece_bytes - 1) / piece_bytes : n);
    Piece piece = [](int index) { return "chunk " + std::to_string(index) + "\n"; };
    if (paced)
      piece = [n, piece_bytes, whole = pattern_piece(piece_bytes)](int index) {
        uint64_t left = n - static_cast<uint64_t>(index) * piece_bytes;
        return left >= piece_bytes ? whole : whole.substr(0, static_cast<size_t>(left));
      };
    auto batch = nc.batch();
    batch.publish(reply + ".results", result_head(200));
    batch.publish(reply + ".results", "");
    nc.send(batch);
    timers.at(now + every, [&nc, &timers, reply, count, every, piece] { drip(nc, timers, reply, 0, count, every, piece); });
    return true;
  }
  return false;
}

// Answers one invocation. Runs on its own thread: die-mid-body waits for the NATS server
// to have its bytes (a flush), which the client's reader thread cannot do for itself.
void answer(Client &nc, const std::string &reply, const std::string &path) {
  auto batch = nc.batch();
  auto fault = path.compare(0, kFaultPrefix.size(), kFaultPrefix) == 0 ? path.substr(kFaultPrefix.size()) : "";
  if (fault == "garbage") {
    const char garbage[] = "\x07\xff\xfe garbage, not a wRPC value \xff";
    batch.publish(reply + ".results", std::string(garbage, sizeof(garbage) - 1));
    batch.publish(reply + ".results", "");
  } else if (fault == "partial-head") {
    batch.publish(reply + ".results", result_head(200).substr(0, 3));
    batch.publish(reply + ".results", "");
  } else if (fault == "empty-result") {
    batch.publish(reply + ".results", "");
  } else if (fault.compare(0, 7, "status/") == 0) {
    publish_response(batch, reply, static_cast<uint16_t>(std::stoul(fault.substr(7))), "");
  } else if (fault == "header-control") {
    // Values with bytes no HTTP field may carry (wasi:http field values are any bytes).
    publish_response(batch, reply, 200, "control bytes in header values",
                     {{"x-ctl-01", {std::string("a\x01" "b")}},
                      {"x-ctl-7f", {std::string("a\x7f" "b")}},
                      {"x-ctl-nul", {std::string("a\0b", 3)}},
                      {"x-ctl-cr", {std::string("a\rb")}},
                      {"x-tab", {std::string("a\tb")}},
                      {"x-ok", {std::string("fine")}}});
  } else if (fault == "unclosed") {
    std::string chunk, end, trailers;
    std::string body = "unclosed";
    wrpc_http::detail::encode_stream_chunk(body.data(), body.size(), chunk);
    wrpc_http::detail::encode_stream_end(end);
    wrpc_http::detail::encode_trailers(wrpc_http::Fields{{"x-checksum", {"abc123"}}}, trailers);
    batch.publish(reply + ".results", result_head(200));
    batch.publish(reply + ".results", "");
    batch.publish(reply + ".results.0.0", chunk + end);
    batch.publish(reply + ".results.0.1", trailers);
  } else if (fault == "die-mid-body") {
    batch.publish(reply + ".results", result_head(200));
    batch.publish(reply + ".results", "");
    std::string chunk;
    std::string half = "the first half of the body, and then the component dies\n";
    wrpc_http::detail::encode_stream_chunk(half.data(), half.size(), chunk);
    batch.publish(reply + ".results.0.0", chunk);
    nc.send(batch);
    nc.flush(std::chrono::milliseconds(5000));
    ::_exit(3);  // no close, no end of stream: as a crash leaves it
  } else if (fault == "slow-body") {
    batch.publish(reply + ".results", result_head(200));
    batch.publish(reply + ".results", "");
    nc.send(batch);
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    batch = nc.batch();
    publish_body(batch, reply, "late body");
  } else {
    publish_response(batch, reply, 200, "fault component ok");
  }
  nc.send(batch);
}

}  // namespace

int main(int argc, char **argv) {
  auto signals = wrpc_http::block_termination_signals();
  wrpc_http::wrpc::ComponentArgs args;
  try {
    args = wrpc_http::wrpc::ComponentArgs::parse(argc, argv);
  } catch (const std::invalid_argument &e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  wrpc_http::nats::Options options;
  options.url = args.nats_url;
  options.name = args.id;
  Client nc(options);
  try {
    nc.connect();
  } catch (const std::exception &e) {
    std::cerr << "fault-component: " << e.what() << "\n";
    return 1;
  }
  // Answers run on their own threads (some sleep); the pool joins them on the way out.
  wrpc_http::detail::ElasticTaskQueue answers(256);
  Timers timers;
  // The handshake's reply subject is where the caller streams the request body; nothing
  // here reads it, so it is a subject nobody subscribes to.
  nc.subscribe(wrpc_http::wrpc::handle_subject(args.lattice, args.id), [&nc, &answers, &timers](Message &m) {
    if (m.reply.empty()) return;
    nc.publish(m.reply, "", "_INBOX.fault-component." + nc.next_inbox_token());
    auto path = request_path(m);
    if (!answer_later(nc, timers, m.reply, path))
      answers.enqueue([&nc, reply = m.reply, path] { answer(nc, reply, path); });
  });
  nc.flush(std::chrono::milliseconds(5000));
  int sig = 0;
  sigwait(&signals, &sig);
  answers.shutdown();  // running answers still publish
  nc.close();
  return 0;
}
