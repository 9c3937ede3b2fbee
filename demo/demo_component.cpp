// A native stand-in for a wasmCloud HTTP component: it serves
// `wrpc:http/incoming-handler@0.1.0.handle` over NATS with the same header the provider
// uses, so the whole flow runs where no wasmCloud host exists.
//
//   demo-component --nats URL --lattice default --id http-http_component
//
// GET answers like the hello-world component; POST/PUT/PATCH echo the body as it streams.
// A few paths exist for tests and benchmarks:
//   /proxy/bytes/N     N bytes of a repeating pattern, streamed
//   /proxy/count       consumes the request body, answers "N bytes"
//   /proxy/inspect     the request (head, body as text, trailers or null) as JSON; answers
//                      with x-multi: a, x-multi: b and x-body-bytes: <request body size>
//   /proxy/status/N    an empty response with status N
//   /proxy/cached      "cached" with its own cache-control: private, max-age=5
//   /proxy/trailers    a body followed by the trailer x-checksum
//   /proxy/sleep/MS    answers after MS milliseconds
//   /proxy/error       the wasi:http error-code internal-error("boom")
#include "../wrpc_http_provider.hpp"

#include <iostream>

namespace {

using wrpc_http::Fields;
using wrpc_http::ResponseHead;

std::string arg_after(const std::string &path, const std::string &prefix) {
  return path.compare(0, prefix.size(), prefix) == 0 ? path.substr(prefix.size()) : "";
}

uint64_t number_or(const std::string &text, uint64_t fallback) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) return fallback;
  return std::stoull(text);
}

std::string fields_json(const Fields &fields) {
  nlohmann::json out = nlohmann::json::array();
  for (auto &f : fields) out.push_back({f.first, f.second});
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// gRPC framing: a flag byte (0: not compressed), the length (4 bytes, big-endian), the message.
std::string grpc_frame(const std::string &message) {
  uint32_t n = static_cast<uint32_t>(message.size());
  std::string out = {'\0', static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                     static_cast<char>(n)};
  return out + message;
}

// The messages of a gRPC request body (uncompressed ones; the rest is left out).
std::vector<std::string> grpc_messages(const std::string &body) {
  std::vector<std::string> out;
  for (size_t at = 0; at + 5 <= body.size();) {
    size_t n = (static_cast<uint8_t>(body[at + 1]) << 24) | (static_cast<uint8_t>(body[at + 2]) << 16) |
               (static_cast<uint8_t>(body[at + 3]) << 8) | static_cast<uint8_t>(body[at + 4]);
    if (at + 5 + n > body.size()) break;
    if (body[at] == 0) out.push_back(body.substr(at + 5, n));
    at += 5 + n;
  }
  return out;
}

// /proxy/grpc/echo.Echo/Say answers "echo: <message>"; /proxy/grpc/echo.Echo/Count with message N
// streams "message 1" .. "message N"; other methods end with grpc-status 12 (UNIMPLEMENTED).
// gRPC's status travels in the trailers.
template <class Writer>
void grpc(wrpc_http::wrpc::IncomingRequest &req, Writer &res, const std::string &method) {
  std::string body, chunk;
  while (req.read_body(chunk, std::chrono::milliseconds(30000))) body += chunk;
  auto messages = grpc_messages(body);
  ResponseHead head;
  head.headers = {{"content-type", {"application/grpc"}}};
  res.send_head(head);
  std::string status = "0";
  if (method == "echo.Echo/Say" && !messages.empty()) {
    res.write_body(grpc_frame("echo: " + messages[0]));
  } else if (method == "echo.Echo/Count" && !messages.empty()) {
    for (uint64_t i = 1; i <= number_or(messages[0], 0); ++i) res.write_body(grpc_frame("message " + std::to_string(i)));
  } else {
    status = "12";
  }
  res.finish(Fields{{"grpc-status", {status}}, {"x-served-by", {"demo-component"}}});
}

void handle(wrpc_http::wrpc::IncomingRequest &req, wrpc_http::wrpc::ResponseWriter &writer, const std::string &id) {
  // Every response names the component that made it (routing tests tell components apart).
  struct Writer {
    wrpc_http::wrpc::ResponseWriter &out;
    const std::string &id;
    void send_head(ResponseHead head) {
      head.headers.push_back({"x-component-id", {id}});
      out.send_head(head);
    }
    void write_body(const char *d, size_t n) { out.write_body(d, n); }
    void write_body(const std::string &d) { out.write_body(d); }
    void finish(const std::optional<Fields> &trailers = std::nullopt) { out.finish(trailers); }
    void fail(const wrpc_http::ErrorCode &code) { out.fail(code); }
  } res{writer, id};
  const auto idle = std::chrono::milliseconds(30000);
  std::string path = req.head.path_with_query.value_or("/");
  path = path.substr(0, path.find('?'));
  ResponseHead head;
  head.headers = {{"content-type", {"text/plain"}}};
  std::string chunk;

  if (path == "/proxy/error") return res.fail(wrpc_http::ErrorCode::internal_error("boom"));
  if (auto ms = arg_after(path, "/proxy/sleep/"); !ms.empty())
    std::this_thread::sleep_for(std::chrono::milliseconds(number_or(ms, 0)));
  if (auto status = arg_after(path, "/proxy/status/"); !status.empty()) {
    head.status = static_cast<uint16_t>(number_or(status, 500));
    res.send_head(head);
    return res.finish();
  }
  if (path == "/proxy/cached") {
    head.headers.push_back({"cache-control", {"private, max-age=5"}});
    res.send_head(head);
    res.write_body("cached");
    return res.finish();
  }
  if (path == "/proxy/inspect") {
    std::string body;
    while (req.read_body(chunk, idle)) body += chunk;
    auto trailers = req.read_trailers(idle);
    nlohmann::json j = {{"method", wrpc_http::to_string(req.head.method)},
                        {"method_other", req.head.method.other},
                        {"path", req.head.path_with_query.value_or("")},
                        {"authority", req.head.authority.value_or("")},
                        {"scheme", req.head.scheme ? static_cast<int>(req.head.scheme->kind) : -1},
                        {"headers", nlohmann::json::parse(fields_json(req.head.headers))},
                        {"body", body},
                        {"trailers", trailers ? nlohmann::json::parse(fields_json(*trailers)) : nlohmann::json()}};
    // The body's size also in a header: the answer to HEAD has no body.
    head.headers = {{"content-type", {"application/json"}},
                    {"x-multi", {"a", "b"}},
                    {"x-body-bytes", {std::to_string(body.size())}}};
    res.send_head(head);
    res.write_body(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return res.finish();
  }
  if (auto size = arg_after(path, "/proxy/bytes/"); !size.empty()) {
    uint64_t left = number_or(size, 0);
    head.headers = {{"content-type", {"application/octet-stream"}}};
    res.send_head(head);
    std::string pattern(64 * 1024, '\0');
    for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>('a' + i % 26);
    while (left > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(left, pattern.size()));
      res.write_body(pattern.data(), n);
      left -= n;
    }
    return res.finish();
  }
  if (auto method = arg_after(path, "/proxy/grpc/"); !method.empty()) return grpc(req, res, method);
  if (path == "/proxy/digest") {
    // The body's SHA-256, hex (uploads checked byte for byte without echoing them).
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> sha(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr);
    while (req.read_body(chunk, idle)) EVP_DigestUpdate(sha.get(), chunk.data(), chunk.size());
    unsigned char digest[32];
    unsigned int size = 0;
    EVP_DigestFinal_ex(sha.get(), digest, &size);
    std::string hex;
    for (unsigned int i = 0; i < size; ++i) hex += "0123456789abcdef"[digest[i] >> 4], hex += "0123456789abcdef"[digest[i] & 15];
    res.send_head(head);
    res.write_body(hex);
    return res.finish();
  }
  if (path == "/proxy/count") {
    uint64_t total = 0;
    while (req.read_body(chunk, idle)) total += chunk.size();
    res.send_head(head);
    res.write_body(std::to_string(total) + " bytes");
    return res.finish();
  }
  if (path == "/proxy/trailers") {
    res.send_head(head);
    res.write_body("body before trailers\n");
    return res.finish(Fields{{"x-checksum", {"abc123"}}});
  }
  auto method = req.head.method.kind;
  if (method == wrpc_http::MethodKind::post || method == wrpc_http::MethodKind::put ||
      method == wrpc_http::MethodKind::patch) {
    for (auto &h : req.head.headers)
      if (h.first == "content-type") head.headers = {{"content-type", h.second}};
    res.send_head(head);
    while (req.read_body(chunk, idle)) res.write_body(chunk);
    return res.finish();
  }
  while (req.read_body(chunk, idle)) {
  }
  res.send_head(head);
  res.write_body("Hello from the component!");
  res.finish();
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
  wrpc_http::Logger logger;
  wrpc_http::nats::Options options;
  options.url = args.nats_url;
  options.name = args.id;
  options.log = logger.nats_sink();
  wrpc_http::nats::Client nc(options);
  try {
    nc.connect();
  } catch (const std::exception &e) {
    std::cerr << "demo-component: " << e.what() << "\n";
    return 1;
  }
  const std::string &id = args.id;
  wrpc_http::wrpc::Server server(nc, args.lattice, id, [&id](auto &req, auto &res) { handle(req, res, id); });
  server.start();
  nc.flush(std::chrono::milliseconds(5000));
  logger.info("demo component serving", {{"subject", wrpc_http::wrpc::handle_subject(args.lattice, id)}});
  int sig = 0;
  sigwait(&signals, &sig);
  server.stop();
  nc.close();
  return 0;
}
