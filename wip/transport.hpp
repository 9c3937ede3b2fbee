// ---- wRPC transport over NATS ----
//
// One `handle` call, both sides. The client side publishes the invocation with a reply
// inbox R_c, waits for the server's handshake (an empty message whose reply subject is the
// server's inbox R_s), streams the request body to R_s.params.0.0 and reads the result from
// R_c.results, the response body from R_c.results.0.0 and the trailers from R_c.results.0.1.
// All of R_c lives under the client connection's single wildcard inbox subscription.

namespace wrpc_http {
namespace wrpc {

constexpr const char *kHttpInstance = "wrpc:http/incoming-handler@0.1.0";
constexpr const char *kHandleFunction = "handle";

// `<lattice>.<component>.wrpc.0.0.1.wrpc:http/incoming-handler@0.1.0.handle`
inline std::string handle_subject(const std::string &lattice, const std::string &component) {
  return lattice + "." + component + ".wrpc.0.0.1." + kHttpInstance + "." + kHandleFunction;
}

// Why a call failed, and the HTTP status a gateway answers with.
class CallError : public std::runtime_error {
public:
  enum class Kind { no_responders, timeout, disconnected, bad_reply, component_error, too_large };
  CallError(Kind kind, const std::string &what, std::optional<ErrorCode> code = std::nullopt)
      : std::runtime_error(what), kind_(kind), code_(std::move(code)) {}
  Kind kind() const { return kind_; }
  const std::optional<ErrorCode> &error_code() const { return code_; }
  int http_status() const {
    switch (kind_) {
    case Kind::no_responders:
    case Kind::disconnected: return 503;
    case Kind::timeout: return 504;
    case Kind::too_large: return 413;
    case Kind::component_error: return code_ ? code_->http_status() : 500;
    case Kind::bad_reply: return 502;
    }
    return 500;
  }

private:
  Kind kind_;
  std::optional<ErrorCode> code_;
};

}  // namespace wrpc

namespace detail {

using Clock = std::chrono::steady_clock;

// Bytes of a pending stream<u8> as they arrive from NATS, waiting for a consumer. Bounded:
// NATS has no flow control, so a producer that outruns the consumer fails the stream
// instead of growing memory without limit.
class ChunkQueue {
public:
  explicit ChunkQueue(size_t max_bytes) : max_bytes_(max_bytes) {}

  // Called with the owner's mutex held. Returns false when the bound is exceeded.
  bool push(const char *data, size_t size) {
    if (buffered_ + size > max_bytes_) return false;
    if (!chunks_.empty() && chunks_.back().size() + size <= kCoalesce) {
      chunks_.back().append(data, size);
    } else {
      chunks_.emplace_back(data, size);
    }
    buffered_ += size;
    return true;
  }
  bool empty() const { return chunks_.empty(); }
  std::string pop() {
    std::string out = std::move(chunks_.front());
    chunks_.pop_front();
    buffered_ -= out.size();
    return out;
  }

private:
  static constexpr size_t kCoalesce = 64 * 1024;
  size_t max_bytes_;
  size_t buffered_ = 0;
  std::deque<std::string> chunks_;
};

// The receiving half of a channel that carries a pending stream<u8> followed by the
// channel's close (an empty NATS message). Shared by both sides of a call.
struct StreamInbox {
  explicit StreamInbox(size_t max_bytes) : queue(max_bytes) {}
  StreamChunkDecoder decoder;
  ChunkQueue queue;
  bool ended = false;  // the end chunk arrived
  std::string error;

  // Called with the owner's mutex held.
  void on_message(const std::string &data) {
    if (!error.empty() || ended) return;
    if (data.empty()) {  // the channel closed before the end chunk: the sender gave up
      error = "stream closed before its end";
      return;
    }
    auto status = decoder.feed(data.data(), data.size(), [&](const char *d, size_t n) {
      if (!queue.push(d, n) && error.empty()) error = "stream outran its consumer (buffer bound reached)";
    });
    if (status == DecodeStatus::error) error = "malformed stream: " + decoder.error_message();
    if (status == DecodeStatus::ok) ended = true;
  }
  void set_ready(std::string bytes) {
    if (!bytes.empty()) queue.push(bytes.data(), bytes.size());
    ended = true;
  }
};

// What both sides of a call receive asynchronously: a body stream and a trailers future,
// filled by the NATS reader thread and read by the call's own thread.
struct AsyncChannels {
  AsyncChannels(size_t max_body, size_t max_trailers) : body(max_body), max_trailer_bytes(max_trailers) {}
  std::mutex mu;
  std::condition_variable cv;
  bool lost = false;  // the NATS connection dropped
  StreamInbox body;
  std::string trailer_bytes;
  size_t max_trailer_bytes;
  bool trailers_closed = false;

  // With mu held.
  void on_trailer_message(const std::string &data) {
    if (data.empty()) {
      trailers_closed = true;
    } else if (trailer_bytes.size() + data.size() <= max_trailer_bytes) {
      trailer_bytes += data;
    }
  }

  // Next piece of the body; false at its end. Throws CallError when the stream breaks
  // (malformed, connection lost, nothing for `idle_timeout`).
  bool read_body(std::string &out, std::chrono::milliseconds idle_timeout) {
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_for(lk, idle_timeout, [&] { return !body.queue.empty() || body.ended || !body.error.empty() || lost; }))
      throw wrpc::CallError(wrpc::CallError::Kind::timeout, "body stalled");
    if (!body.error.empty()) throw wrpc::CallError(wrpc::CallError::Kind::bad_reply, body.error);
    if (!body.queue.empty()) {
      out = body.queue.pop();
      return true;
    }
    if (body.ended) return false;
    throw wrpc::CallError(wrpc::CallError::Kind::disconnected, "NATS connection lost mid-body");
  }

  // The pending trailers' value, once their channel closed.
  std::optional<Fields> read_trailers(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_for(lk, timeout, [&] { return trailers_closed || lost; }))
      throw wrpc::CallError(wrpc::CallError::Kind::timeout, "trailers did not arrive");
    if (!trailers_closed) throw wrpc::CallError(wrpc::CallError::Kind::disconnected, "NATS connection lost");
    auto decoded = decode_trailers(trailer_bytes.data(), trailer_bytes.size(), max_trailer_bytes);
    if (decoded.status != DecodeStatus::ok)
      throw wrpc::CallError(wrpc::CallError::Kind::bad_reply, "malformed trailers: " + decoded.error);
    return decoded.value;
  }
};

// Splits `data` into stream chunks of at most `max_payload` bytes per NATS message.
inline void publish_stream_chunks(nats::Batch &batch, const std::string &subject, const char *data, size_t size) {
  const size_t max_chunk = batch.max_payload() > 16 ? batch.max_payload() - 10 : 1;
  std::string msg;
  while (size > 0) {
    size_t n = std::min(size, max_chunk);
    msg.clear();
    encode_stream_chunk(data, n, msg);
    batch.publish(subject, msg);
    data += n;
    size -= n;
  }
}

// Publishes a value encoded on a channel and then the channel's close.
inline void publish_and_close(nats::Batch &batch, const std::string &subject, const std::string &value) {
  for (size_t at = 0; at < value.size(); at += batch.max_payload())
    batch.publish(subject, value.data() + at, std::min(batch.max_payload(), value.size() - at));
  batch.publish(subject, "");
}

inline wrpc::CallError nats_failure(const nats::Error &e) {
  return wrpc::CallError(e.kind() == nats::Error::Kind::timeout ? wrpc::CallError::Kind::timeout
                                                                 : wrpc::CallError::Kind::disconnected,
                         std::string("NATS: ") + e.what());
}

}  // namespace detail

namespace detail {

// A task queue that starts a thread whenever none is idle, up to `max_threads`, and keeps it
// for reuse. Both the HTTP listener and the wRPC server run work that blocks for as long as
// a client or caller takes (cpp-httplib keeps a thread per open connection), so a fixed pool
// would let slow peers starve everyone else.
class ElasticTaskQueue : public httplib::TaskQueue {
public:
  explicit ElasticTaskQueue(size_t max_threads) : max_threads_(max_threads) {}
  ~ElasticTaskQueue() override { shutdown(); }

  // After shutdown() a job is dropped: nothing would be left to join its thread.
  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> lk(mu_);
    if (stopping_) return;
    jobs_.push_back(std::move(fn));
    // Idle threads may already be spoken for by jobs queued just before this one.
    if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { work(); });
    } else {
      cv_.notify_one();  // past the cap, jobs wait for a thread to come free
    }
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto &t : threads_) t.join();
  }

private:
  void work() {
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
      ++idle_;
      cv_.wait(lk, [&] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping, and every job is done
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lk.unlock();
      job();
      lk.lock();
    }
  }

  size_t max_threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace detail

namespace wrpc {

struct CallLimits {
  size_t max_head_bytes = WRPC_HTTP_MAX_HEAD_BYTES;
  size_t max_buffered_body = WRPC_HTTP_MAX_BUFFERED_BODY;
  // Request body bytes gathered before they go out as one NATS message.
  size_t body_flush_bytes = WRPC_HTTP_BODY_FLUSH_BYTES;
};

// The client side of one `handle` invocation. Not thread-safe: one thread drives a call.
class OutgoingCall {
public:
  OutgoingCall(nats::Client &nc, const std::string &subject, const RequestHead &head,
               const nats::Headers *nats_headers = nullptr, CallLimits limits = {})
      : nc_(nc), limits_(limits), state_(std::make_shared<State>(limits)) {
    token_ = nc_.next_inbox_token();
    std::weak_ptr<State> weak = state_;
    nats::InboxHandler handler;
    handler.on_message = [weak](const std::string &suffix, nats::Message &m) {
      if (auto s = weak.lock()) s->on_message(suffix, m);
    };
    handler.on_disconnected = [weak] {
      if (auto s = weak.lock()) s->on_disconnected();
    };
    reply_inbox_ = nc_.register_inbox(token_, std::move(handler));
    std::string params;
    // Request trailers: cpp-httplib reads and drops them, so they are known to be absent
    // and go as a ready future (`01 00`), saving two messages per call.
    detail::encode_handle_params(head, params, true);
    try {
      auto batch = nc_.batch();
      batch.publish(subject, params, reply_inbox_, nats_headers);
      nc_.send(batch);
    } catch (const nats::Error &e) {
      nc_.release_inbox(token_);
      throw detail::nats_failure(e);
    }
  }
  ~OutgoingCall() { nc_.release_inbox(token_); }
  OutgoingCall(const OutgoingCall &) = delete;
  OutgoingCall &operator=(const OutgoingCall &) = delete;

  // Waits for the server's handshake; throws CallError (no responders, timeout, lost).
  void await_handshake(detail::Clock::time_point deadline) {
    std::unique_lock<std::mutex> lk(state_->mu);
    if (!state_->cv.wait_until(lk, deadline, [&] { return state_->handshaken() || state_->lost; }))
      throw CallError(CallError::Kind::timeout, "no answer from the component in time");
    if (state_->no_responders) throw CallError(CallError::Kind::no_responders, "no component is serving this target");
    if (state_->server_inbox.empty()) throw CallError(CallError::Kind::disconnected, "NATS connection lost");
    server_inbox_ = state_->server_inbox;
  }

  // Streams request body bytes; they leave in messages of body_flush_bytes.
  void write_body(const char *data, size_t size) {
    body_buf_.append(data, size);
    if (body_buf_.size() >= limits_.body_flush_bytes) flush_body(false);
  }

  // Sends the rest of the body, its end, and closes the parameter channels.
  void finish_request() { flush_body(true); }

  // The request body broke: close its channel without the end chunk, so the component
  // sees a cut-off stream at once instead of waiting out its own timeout.
  void abort_request() {
    body_buf_.clear();
    try {
      nc_.publish(server_inbox_ + ".params.0.0", "");
    } catch (const nats::Error &) {
      // Lost connection: the component's idle timeout ends its side.
    }
  }

  // Waits for the result head; throws CallError for every failure, including the
  // component's own error-code.
  ResponseHead await_response(detail::Clock::time_point deadline) {
    std::unique_lock<std::mutex> lk(state_->mu);
    if (!state_->cv.wait_until(lk, deadline, [&] { return state_->result_known() || state_->lost; }))
      throw CallError(CallError::Kind::timeout, "the component did not answer in time");
    if (!state_->failure.empty()) throw CallError(CallError::Kind::bad_reply, state_->failure);
    if (!state_->result) throw CallError(CallError::Kind::disconnected, "NATS connection lost");
    if (state_->result->error)
      throw CallError(CallError::Kind::component_error, "component error: " + state_->result->error->message(),
                      state_->result->error);
    return state_->result->response;
  }

  // Next piece of the response body; false at its end. Throws CallError when the stream
  // breaks (malformed, connection lost, nothing for `idle_timeout`).
  bool read_body(std::string &out, std::chrono::milliseconds idle_timeout) {
    return state_->read_body(out, idle_timeout);
  }

  // The response trailers, once the body has ended.
  std::optional<Fields> read_trailers(std::chrono::milliseconds timeout) {
    {
      std::lock_guard<std::mutex> lk(state_->mu);
      if (state_->result && !state_->result->trailers.pending) return state_->result->trailers.ready_value;
    }
    return state_->read_trailers(timeout);
  }

private:
  struct State : detail::AsyncChannels {
    explicit State(const CallLimits &l) : AsyncChannels(l.max_buffered_body, l.max_head_bytes), limits(l) {}
    CallLimits limits;
    std::string server_inbox;
    bool no_responders = false;
    std::string head_bytes;
    std::optional<detail::HandleResult> result;
    std::string failure;

    bool handshaken() const { return !server_inbox.empty() || no_responders; }
    bool result_known() const { return result.has_value() || !failure.empty(); }

    void on_message(const std::string &suffix, nats::Message &m) {
      std::lock_guard<std::mutex> lk(mu);
      if (suffix.empty()) {
        if (m.no_responders()) {
          no_responders = true;
        } else if (!m.reply.empty()) {
          server_inbox = m.reply;
        }
      } else if (suffix == ".results") {
        on_result_bytes(m.data);
      } else if (suffix == ".results.0.0") {
        body.on_message(m.data);
      } else if (suffix == ".results.0.1") {
        on_trailer_message(m.data);
      }
      cv.notify_all();
    }

    void on_result_bytes(const std::string &data) {
      if (result_known()) return;
      if (data.empty()) {  // the results channel closed before a whole value arrived
        failure = head_bytes.empty() ? "the component failed (empty result)" : "truncated result from the component";
        return;
      }
      head_bytes += data;
      auto decoded = detail::decode_handle_result(head_bytes.data(), head_bytes.size(), limits.max_head_bytes);
      if (decoded.status == detail::DecodeStatus::error) {
        failure = "malformed result from the component: " + decoded.error;
      } else if (decoded.status == detail::DecodeStatus::ok) {
        result = std::move(decoded.value);
        if (!result->error && !result->body.pending) body.set_ready(std::move(result->body.ready_bytes));
      }
    }

    void on_disconnected() {
      std::lock_guard<std::mutex> lk(mu);
      lost = true;
      cv.notify_all();
    }
  };

  void flush_body(bool last) {
    std::string subject = server_inbox_ + ".params.0.0";
    try {
      auto batch = nc_.batch();
      detail::publish_stream_chunks(batch, subject, body_buf_.data(), body_buf_.size());
      body_buf_.clear();
      if (last) {
        std::string end;
        detail::encode_stream_end(end);
        batch.publish(subject, end);
        batch.publish(subject, "");                         // close the body channel
        batch.publish(server_inbox_ + ".params", "");       // close the root parameters
      }
      nc_.send(batch);
    } catch (const nats::Error &e) {
      throw detail::nats_failure(e);
    }
  }

  nats::Client &nc_;
  CallLimits limits_;
  std::shared_ptr<State> state_;
  std::string token_, reply_inbox_, server_inbox_;
  std::string body_buf_;
};

// ---- server side ----

// What a served call receives: the request head and its streamed body.
class IncomingRequest {
public:
  RequestHead head;
  // Next piece of the request body; false at its end. Throws CallError.
  bool read_body(std::string &out, std::chrono::milliseconds idle_timeout);
  // The request trailers (after the body).
  std::optional<Fields> read_trailers(std::chrono::milliseconds timeout);

private:
  friend class Server;
  struct State;
  std::shared_ptr<State> state_;
};

// Writes one call's result. Small responses leave in one write: the head waits in the
// batch until the body fills a message or the response finishes.
class ResponseWriter {
public:
  void send_head(const ResponseHead &head);
  void write_body(const char *data, size_t size);
  void write_body(const std::string &data) { write_body(data.data(), data.size()); }
  void finish(const std::optional<Fields> &trailers = std::nullopt);
  // Answers with an error-code instead of a response; only before send_head.
  void fail(const ErrorCode &code);
  // Ends the call after a failure: an error-code before the head, else a cut-off body.
  void abort(const std::string &why);
  bool finished() const { return finished_; }

private:
  friend class Server;
  ResponseWriter(nats::Client &nc, std::string reply, size_t flush_bytes)
      : nc_(nc), reply_(std::move(reply)), flush_bytes_(flush_bytes), batch_(nc.batch()) {}
  void flush_body();
  nats::Client &nc_;
  std::string reply_;
  size_t flush_bytes_;
  nats::Batch batch_;
  std::string body_buf_;
  bool head_sent_ = false, finished_ = false;
};

using Handler = std::function<void(IncomingRequest &, ResponseWriter &)>;

// Serves `wrpc:http/incoming-handler@0.1.0.handle` for one component id on a lattice.
// Each call runs on a worker thread (started on demand, up to `workers`); the NATS reader
// thread only routes bytes.
class Server {
public:
  Server(nats::Client &nc, std::string lattice, std::string component, Handler handler,
         size_t workers = WRPC_HTTP_SERVER_WORKERS, CallLimits limits = {})
      : nc_(nc), lattice_(std::move(lattice)), component_(std::move(component)), handler_(std::move(handler)),
        worker_count_(workers), limits_(limits) {}
  ~Server() { stop(); }

  void start();
  // Stops taking calls, lets running ones finish, joins the workers.
  void stop();
  std::chrono::milliseconds body_timeout{WRPC_HTTP_BODY_IDLE_TIMEOUT_MS};

private:
  void on_invocation(nats::Message &m);
  void run(std::shared_ptr<IncomingRequest::State> state, std::string reply);

  nats::Client &nc_;
  std::string lattice_, component_;
  Handler handler_;
  size_t worker_count_;
  CallLimits limits_;
  uint64_t sid_ = 0;
  std::mutex workers_mu_;
  std::unique_ptr<detail::ElasticTaskQueue> workers_;
  // Calls still waiting for their parameters; stop() ends them instead of waiting.
  std::mutex calls_mu_;
  std::unordered_map<std::string, std::weak_ptr<IncomingRequest::State>> calls_;
};

struct IncomingRequest::State : detail::AsyncChannels {
  explicit State(const CallLimits &l) : AsyncChannels(l.max_buffered_body, l.max_head_bytes), limits(l) {}
  CallLimits limits;
  std::string token;
  std::string param_bytes;
  std::optional<detail::HandleParams> params;
  std::string failure;

  // With mu held.
  void on_param_bytes(const std::string &data) {
    if (params || !failure.empty() || data.empty()) return;
    param_bytes += data;
    auto decoded = detail::decode_handle_params(param_bytes.data(), param_bytes.size(), limits.max_head_bytes);
    if (decoded.status == detail::DecodeStatus::error) {
      failure = "malformed parameters: " + decoded.error;
    } else if (decoded.status == detail::DecodeStatus::ok) {
      params = std::move(decoded.value);
      if (!params->body.pending) body.set_ready(std::move(params->body.ready_bytes));
      if (!params->trailers.pending) trailers_closed = true;
    }
  }

  void on_message(const std::string &suffix, nats::Message &m) {
    std::lock_guard<std::mutex> lk(mu);
    if (suffix == ".params") {
      on_param_bytes(m.data);
    } else if (suffix == ".params.0.0") {
      body.on_message(m.data);
    } else if (suffix == ".params.0.1") {
      on_trailer_message(m.data);
    }
    cv.notify_all();
  }
};

inline bool IncomingRequest::read_body(std::string &out, std::chrono::milliseconds idle_timeout) {
  return state_->read_body(out, idle_timeout);
}

inline std::optional<Fields> IncomingRequest::read_trailers(std::chrono::milliseconds timeout) {
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (!state_->params->trailers.pending) return state_->params->trailers.ready_value;
  }
  return state_->read_trailers(timeout);
}

inline void ResponseWriter::send_head(const ResponseHead &head) {
  std::string value;
  detail::encode_handle_result_ok(head, value);
  detail::publish_and_close(batch_, reply_ + ".results", value);
  head_sent_ = true;
}

inline void ResponseWriter::fail(const ErrorCode &code) {
  std::string value;
  detail::encode_handle_result_err(code, value);
  detail::publish_and_close(batch_, reply_ + ".results", value);
  head_sent_ = finished_ = true;
  nc_.send(batch_);
}

inline void ResponseWriter::abort(const std::string &why) {
  if (finished_) return;
  if (!head_sent_) return fail(ErrorCode::internal_error(why));
  body_buf_.clear();
  batch_.publish(reply_ + ".results.0.0", "");  // close without the end chunk
  finished_ = true;
  nc_.send(batch_);
}

inline void ResponseWriter::write_body(const char *data, size_t size) {
  body_buf_.append(data, size);
  if (body_buf_.size() >= flush_bytes_) flush_body();
}

inline void ResponseWriter::flush_body() {
  detail::publish_stream_chunks(batch_, reply_ + ".results.0.0", body_buf_.data(), body_buf_.size());
  body_buf_.clear();
  nc_.send(batch_);
}

inline void ResponseWriter::finish(const std::optional<Fields> &trailers) {
  if (finished_) return;
  if (!head_sent_) send_head(ResponseHead{});
  std::string body_subject = reply_ + ".results.0.0";
  detail::publish_stream_chunks(batch_, body_subject, body_buf_.data(), body_buf_.size());
  body_buf_.clear();
  std::string end;
  detail::encode_stream_end(end);
  batch_.publish(body_subject, end);
  batch_.publish(body_subject, "");
  std::string trailer_value;
  detail::encode_trailers(trailers, trailer_value);
  detail::publish_and_close(batch_, reply_ + ".results.0.1", trailer_value);
  finished_ = true;
  nc_.send(batch_);
}

inline void Server::start() {
  {
    std::lock_guard<std::mutex> lk(workers_mu_);
    workers_ = std::make_unique<detail::ElasticTaskQueue>(worker_count_);
  }
  // The queue group spreads calls over every instance of the component.
  sid_ = nc_.subscribe(
      handle_subject(lattice_, component_), [this](nats::Message &m) { on_invocation(m); },
      lattice_ + "." + component_);
}

inline void Server::stop() {
  {
    std::lock_guard<std::mutex> lk(workers_mu_);
    if (!workers_) return;
  }
  if (sid_) {
    try {
      nc_.unsubscribe(sid_);
    } catch (const nats::Error &) {
    }
    sid_ = 0;
  }
  {
    std::lock_guard<std::mutex> lk(calls_mu_);
    for (auto &call : calls_) {
      if (auto state = call.second.lock()) {
        std::lock_guard<std::mutex> state_lock(state->mu);
        if (!state->params) state->failure = "server stopping";
        state->cv.notify_all();
      }
    }
  }
  std::unique_ptr<detail::ElasticTaskQueue> workers;
  {
    std::lock_guard<std::mutex> lk(workers_mu_);
    workers = std::move(workers_);
  }
  workers->shutdown();  // running calls finish first
}

// Runs on the NATS reader thread: set up the call's inbox, answer the handshake, and
// queue the call for a worker.
inline void Server::on_invocation(nats::Message &m) {
  if (m.reply.empty()) return;  // not a wRPC invocation
  auto state = std::make_shared<IncomingRequest::State>(limits_);
  state->token = nc_.next_inbox_token();
  std::weak_ptr<IncomingRequest::State> weak = state;
  nats::InboxHandler handler;
  handler.on_message = [weak](const std::string &suffix, nats::Message &msg) {
    if (auto s = weak.lock()) s->on_message(suffix, msg);
  };
  handler.on_disconnected = [weak] {
    if (auto s = weak.lock()) {
      std::lock_guard<std::mutex> lk(s->mu);
      s->lost = true;
      s->cv.notify_all();
    }
  };
  std::string server_inbox = nc_.register_inbox(state->token, std::move(handler));
  {
    std::lock_guard<std::mutex> lk(state->mu);
    state->on_param_bytes(m.data);
  }
  try {
    auto batch = nc_.batch();
    batch.publish(m.reply, "", server_inbox);
    nc_.send(batch);
  } catch (const nats::Error &) {
    nc_.release_inbox(state->token);
    return;
  }
  std::string reply = m.reply;
  {
    std::lock_guard<std::mutex> lk(calls_mu_);
    calls_[state->token] = state;
  }
  std::lock_guard<std::mutex> lk(workers_mu_);
  if (workers_) return workers_->enqueue([this, state, reply] { run(state, reply); });
  nc_.release_inbox(state->token);  // stopped meanwhile: the caller times out
  std::lock_guard<std::mutex> calls_lock(calls_mu_);
  calls_.erase(state->token);
}

inline void Server::run(std::shared_ptr<IncomingRequest::State> state, std::string reply) {
  struct Release {
    Server &server;
    std::string token;
    ~Release() {
      server.nc_.release_inbox(token);
      std::lock_guard<std::mutex> lk(server.calls_mu_);
      server.calls_.erase(token);
    }
  } release{*this, state->token};
  ResponseWriter writer(nc_, reply, limits_.body_flush_bytes);
  try {
    {
      std::unique_lock<std::mutex> lk(state->mu);
      if (!state->cv.wait_for(lk, body_timeout,
                              [&] { return state->params.has_value() || !state->failure.empty() || state->lost; }))
        return;  // the caller never sent its parameters
      if (!state->params) return;
    }
    IncomingRequest request;
    request.head = state->params->request;
    request.state_ = state;
    handler_(request, writer);
    writer.finish();
  } catch (const std::exception &e) {
    try {
      writer.abort(e.what());
    } catch (const std::exception &) {
      // The connection is gone too: the caller's own timeout or disconnect handling ends it.
    }
  }
}

}  // namespace wrpc
}  // namespace wrpc_http
