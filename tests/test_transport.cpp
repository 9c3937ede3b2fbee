// The wRPC transport's bounded body buffer, from the caller's side: a real nats-server, the
// demo component (build/demo-component) producing a body as fast as it can, and calls made
// in this process with wrpc::OutgoingCall and a small buffer bound, so that the component
// outruns a consumer that pauses.
#include <doctest/doctest.h>

#include "lattice.hpp"

using namespace std::chrono_literals;
using testsupport::Clock;
using testsupport::NatsServer;

namespace {

using wrpc_http::wrpc::CallError;
using wrpc_http::wrpc::CallLimits;
using wrpc_http::wrpc::OutgoingCall;

// nats-server, the demo component, and this process's own NATS connection.
struct ComponentOnNats {
  NatsServer nats;
  std::unique_ptr<testsupport::Process> component = testsupport::start_component(nats.url());
  wrpc_http::nats::Client client{[&] {
    wrpc_http::nats::Options o;
    o.url = nats.url();
    return o;
  }()};
  ComponentOnNats() {
    client.connect();
    testsupport::wait_for_component(client);
  }

  // Sends GET `path` to the component.
  std::unique_ptr<OutgoingCall> start(const std::string &path, CallLimits limits) {
    wrpc_http::RequestHead head;
    head.method.kind = wrpc_http::MethodKind::get;
    head.path_with_query = path;
    head.scheme = wrpc_http::Scheme{wrpc_http::SchemeKind::http, ""};
    auto call = std::make_unique<OutgoingCall>(client, wrpc_http::wrpc::handle_subject("default", testsupport::kComponent),
                                               head, nullptr, false, limits);
    call->send_whole_request("");
    return call;
  }
  // GET `path` from the component; the response head has arrived when it returns.
  std::unique_ptr<OutgoingCall> get(const std::string &path, CallLimits limits) {
    auto call = start(path, limits);
    auto response = call->await_response(Clock::now() + 5s);
    REQUIRE(response.status == 200);
    return call;
  }
};

// Reads the rest of the call's body; the bytes read, or the error that ended it.
struct BodyRead {
  size_t bytes = 0;
  std::string error;
};
BodyRead read_rest(OutgoingCall &call) {
  BodyRead read;
  std::string piece;
  try {
    while (call.read_body(piece, 5000ms)) read.bytes += piece.size();
  } catch (const CallError &e) {
    read.error = e.what();
  }
  return read;
}

// A 1 MiB bound: the component fills it within the consumer's pause.
CallLimits small_buffer(std::chrono::milliseconds stall_budget) {
  CallLimits limits;
  limits.max_buffered_body = 1024 * 1024;
  limits.max_borrowed_body = 0;  // the stall budget and the reader's allowance alone
  limits.body_stall_budget = stall_budget;
  return limits;
}

constexpr size_t kBodyBytes = 32 * 1024 * 1024;
const std::string kBodyPath = "/proxy/bytes/" + std::to_string(kBodyBytes);

}  // namespace

TEST_CASE("wRPC transport: a body consumer that pauses within the stall budget still receives every byte") {
  ComponentOnNats lattice;
  auto call = lattice.get(kBodyPath, small_buffer(2000ms));
  // The component fills the 1 MiB buffer meanwhile; the pause stays within the connection's
  // allowance too (WRPC_HTTP_NATS_READER_STALL_BURST_MS, 100 ms).
  std::this_thread::sleep_for(50ms);
  auto read = read_rest(*call);
  CHECK(read.error == "");
  CHECK(read.bytes == kBodyBytes);
}

TEST_CASE("wRPC transport: without a stall budget, a consumer that pauses loses the stream as outrun") {
  ComponentOnNats lattice;
  auto call = lattice.get(kBodyPath, small_buffer(0ms));
  std::this_thread::sleep_for(50ms);
  auto read = read_rest(*call);
  CHECK(read.error.find("outran its consumer") != std::string::npos);
  CHECK(read.bytes < kBodyBytes);
}

TEST_CASE("wRPC transport: a consumer that stops reading holds up the connection's other calls only for the stall budget") {
  ComponentOnNats lattice;
  auto stalled = lattice.get(kBodyPath, small_buffer(300ms));
  std::this_thread::sleep_for(100ms);  // the reader now waits for room in the stalled call
  auto started = Clock::now();
  auto other = lattice.get("/proxy", CallLimits{});
  auto other_read = read_rest(*other);
  auto waited = Clock::now() - started;
  CHECK(other_read.bytes == std::string("Hello from the component!").size());
  CHECK(waited < 2s);  // the stall budget (300 ms), not the body's idle timeout (5 s)
  auto stalled_read = read_rest(*stalled);
  CHECK(stalled_read.error.find("outran its consumer") != std::string::npos);
}

TEST_CASE("wRPC transport: many consumers that stop reading at once hold up the connection no longer than one") {
  ComponentOnNats lattice;
  // Each call's own budget would keep the reader waiting 400 ms, 2.4 s for the six; the
  // connection's allowance (a 100 ms burst, then 10% of the time) ends the waiting sooner.
  // All six are sent before any is read: waiting for one's head would wait out the one before.
  std::vector<std::unique_ptr<OutgoingCall>> stalled;
  for (int i = 0; i < 6; ++i) stalled.push_back(lattice.start(kBodyPath, small_buffer(400ms)));
  std::this_thread::sleep_for(50ms);
  auto started = Clock::now();
  auto other = lattice.get("/proxy", CallLimits{});
  auto other_read = read_rest(*other);
  auto waited = Clock::now() - started;
  CHECK(other_read.bytes == std::string("Hello from the component!").size());
  CHECK(waited < 1s);
  // Each stalled call was cut when its wait ran out, unless the component, slowed down (a
  // busy machine, a sanitizer), began its stream only after the reads below had started:
  // then it was never stalled and arrives whole. At least one was stalled and cut.
  int cut = 0;
  for (size_t i = 0; i < stalled.size(); ++i) {
    stalled[i]->await_response(Clock::now() + 5s);
    auto read = read_rest(*stalled[i]);
    bool was_cut = read.error.find("outran its consumer") != std::string::npos;
    bool whole = read.error.empty() && read.bytes == kBodyBytes;
    CHECK_MESSAGE((was_cut || whole), "call " << i << ": " << read.bytes << " bytes, error '" << read.error << "'");
    cut += was_cut;
  }
  CHECK(cut > 0);
}
