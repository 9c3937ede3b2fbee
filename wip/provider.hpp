// ---- provider runtime ----
//
// What a wasmCloud 1.x host expects of a capability provider: host data on stdin, the
// lattice's health/link/shutdown/config subjects, and logs on stderr.

namespace wrpc_http {

using StringMap = std::map<std::string, std::string>;

// Logs to stderr: plain lines, or JSON lines when the host asks for structured logging.
class Logger {
public:
  enum class Level { trace, debug, info, warn, error, critical, off };

  static Level parse_level(const std::string &name) {
    static const std::pair<const char *, Level> names[] = {
        {"trace", Level::trace}, {"debug", Level::debug}, {"info", Level::info},
        {"warn", Level::warn},   {"warning", Level::warn}, {"error", Level::error},
        {"critical", Level::critical}};
    std::string lower = name;
    for (auto &c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (auto &n : names)
      if (lower == n.first) return n.second;
    return Level::info;
  }
  static const char *level_name(Level level) {
    static const char *names[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
    return names[static_cast<int>(level)];
  }

  void configure(Level level, bool structured) {
    level_ = level;
    structured_ = structured;
  }
  bool enabled(Level level) const { return level >= level_; }

  void log(Level level, const std::string &message, const StringMap &fields = {}) const {
    if (!enabled(level)) return;
    std::string line;
    if (structured_) {
      nlohmann::json j = {{"timestamp", timestamp()}, {"level", level_name(level)}, {"message", message}};
      for (auto &f : fields) j[f.first] = f.second;
      line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
      line = timestamp() + " " + level_name(level) + " " + message;
      for (auto &f : fields) line += " " + f.first + "=" + f.second;
    }
    line += "\n";
    std::lock_guard<std::mutex> lk(mu_);
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  void trace(const std::string &m, const StringMap &f = {}) const { log(Level::trace, m, f); }
  void debug(const std::string &m, const StringMap &f = {}) const { log(Level::debug, m, f); }
  void info(const std::string &m, const StringMap &f = {}) const { log(Level::info, m, f); }
  void warn(const std::string &m, const StringMap &f = {}) const { log(Level::warn, m, f); }
  void error(const std::string &m, const StringMap &f = {}) const { log(Level::error, m, f); }

  // Adapts this logger for the NATS client.
  nats::LogSink nats_sink() const {
    return [this](nats::LogLevel level, const std::string &text) {
      static const Level map[] = {Level::trace, Level::debug, Level::info, Level::warn, Level::error};
      log(map[static_cast<int>(level)], text);
    };
  }

private:
  static std::string timestamp() {
    auto now = std::chrono::system_clock::now();
    auto secs = std::chrono::system_clock::to_time_t(now);
    auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[64];  // roomy: the compiler cannot see that the fields are small
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
    return buf;
  }

  std::atomic<Level> level_{Level::info};
  std::atomic<bool> structured_{false};
  mutable std::mutex mu_;
};

// A secret from the host: text or bytes. Never logged.
struct SecretValue {
  bool is_bytes = false;
  std::string value;
};
using Secrets = std::map<std::string, SecretValue>;

// An `InterfaceLinkDefinition` as the host sends it.
struct LinkDefinition {
  std::string source_id, target, name = "default", wit_namespace, wit_package;
  std::vector<std::string> interfaces;
  StringMap source_config, target_config;
  std::string source_secrets, target_secrets;  // sealed bytes, as received
  // This provider's side of the link's secrets, opened with its xkey (see Provider).
  Secrets secrets;

  // Throws std::invalid_argument naming the bad field.
  static LinkDefinition from_json(const nlohmann::json &j);
  // Links repeat (the host re-sends them): this identifies one.
  std::string key(const std::string &peer) const {
    return peer + "\n" + name + "\n" + wit_namespace + "\n" + wit_package;
  }
};

// The one line a wasmCloud host writes on the provider's stdin (base64 JSON).
struct HostData {
  std::string host_id, lattice_rpc_prefix = "default", lattice_rpc_url = "nats://127.0.0.1:4222";
  std::string lattice_rpc_user_jwt, lattice_rpc_user_seed, provider_key, instance_id;
  std::string host_xkey_public_key, provider_xkey_private_key;
  StringMap env_values, config;
  Secrets secrets;
  nlohmann::json otel_config = nlohmann::json::object();
  std::vector<std::string> cluster_issuers;
  std::vector<LinkDefinition> link_definitions;
  std::optional<uint64_t> default_rpc_timeout_ms;
  bool structured_logging = false;
  std::string log_level = "info";

  // Throws std::invalid_argument with a one-line reason.
  static HostData parse_json(const std::string &json);
  static HostData parse_base64(const std::string &line);
  // Reads one line from `fd` (stdin), waiting at most `timeout`, as the Go SDK does.
  static HostData read(int fd = 0, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
};

namespace detail {

inline std::string json_string(const nlohmann::json &j, const char *key, const std::string &fallback = "") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) throw std::invalid_argument(std::string("host data field '") + key + "' must be a string");
  return it->get<std::string>();
}

// Config maps are string to string; numbers and booleans are taken as their text.
inline StringMap json_string_map(const nlohmann::json &j, const char *key) {
  StringMap out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_object()) throw std::invalid_argument(std::string("field '") + key + "' must be an object");
  for (auto &kv : it->items()) {
    if (kv.value().is_string()) {
      out[kv.key()] = kv.value().get<std::string>();
    } else if (kv.value().is_number() || kv.value().is_boolean()) {
      out[kv.key()] = kv.value().dump();
    } else {
      throw std::invalid_argument(std::string("field '") + key + "." + kv.key() + "' must be a string");
    }
  }
  return out;
}

// Sealed secrets arrive as a JSON array of byte values.
inline std::string json_bytes(const nlohmann::json &j, const char *key) {
  std::string out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) throw std::invalid_argument(std::string("field '") + key + "' must be an array of bytes");
  for (auto &b : *it) {
    if (!b.is_number_unsigned() || b.get<uint64_t>() > 255)
      throw std::invalid_argument(std::string("field '") + key + "' must be an array of bytes");
    out.push_back(static_cast<char>(b.get<uint64_t>()));
  }
  return out;
}

// `{"name": {"kind": "String"|"Bytes", "value": "..."|[bytes]}}`, as the host serializes
// SecretValue. Error messages name the secret, never its value.
inline Secrets parse_secrets(const nlohmann::json &j) {
  Secrets out;
  if (j.is_null()) return out;
  if (!j.is_object()) throw std::invalid_argument("secrets must be a JSON object");
  for (auto &kv : j.items()) {
    auto &v = kv.value();
    if (!v.is_object()) throw std::invalid_argument("secret '" + kv.key() + "' must be an object");
    SecretValue secret;
    auto kind = json_string(v, "kind");
    if (kind == "String") {
      secret.value = json_string(v, "value");
    } else if (kind == "Bytes") {
      secret.is_bytes = true;
      secret.value = json_bytes(v, "value");
    } else {
      throw std::invalid_argument("secret '" + kv.key() + "' has unknown kind '" + kind + "'");
    }
    out[kv.key()] = std::move(secret);
  }
  return out;
}

}  // namespace detail

inline LinkDefinition LinkDefinition::from_json(const nlohmann::json &j) {
  if (!j.is_object()) throw std::invalid_argument("link definition must be a JSON object");
  LinkDefinition link;
  link.source_id = detail::json_string(j, "source_id");
  link.target = detail::json_string(j, "target");
  link.name = detail::json_string(j, "name", "default");
  link.wit_namespace = detail::json_string(j, "wit_namespace");
  link.wit_package = detail::json_string(j, "wit_package");
  if (j.contains("interfaces") && !j["interfaces"].is_null()) {
    if (!j["interfaces"].is_array()) throw std::invalid_argument("link field 'interfaces' must be an array");
    for (auto &i : j["interfaces"]) {
      if (!i.is_string()) throw std::invalid_argument("link field 'interfaces' must hold strings");
      link.interfaces.push_back(i.get<std::string>());
    }
  }
  link.source_config = detail::json_string_map(j, "source_config");
  link.target_config = detail::json_string_map(j, "target_config");
  link.source_secrets = detail::json_bytes(j, "source_secrets");
  link.target_secrets = detail::json_bytes(j, "target_secrets");
  if (link.source_id.empty() || link.target.empty())
    throw std::invalid_argument("link definition needs 'source_id' and 'target'");
  return link;
}

inline HostData HostData::parse_json(const std::string &text) {
  // Real host data is a few levels deep. Copying a JSON value recurses once per level, so
  // hostile nesting would overflow the stack: refuse it while parsing.
  constexpr int max_depth = 32;
  auto limit_depth = [](int depth, nlohmann::json::parse_event_t, nlohmann::json &) {
    if (depth > max_depth)
      throw std::invalid_argument("host data nests deeper than " + std::to_string(max_depth) + " levels");
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, limit_depth);
  } catch (const nlohmann::json::exception &e) {
    throw std::invalid_argument(std::string("host data is not JSON: ") + e.what());
  }
  if (!j.is_object()) throw std::invalid_argument("host data must be a JSON object");
  HostData h;
  try {
    h.host_id = detail::json_string(j, "host_id");
    h.lattice_rpc_prefix = detail::json_string(j, "lattice_rpc_prefix", "default");
    h.lattice_rpc_url = detail::json_string(j, "lattice_rpc_url");
    if (h.lattice_rpc_url.empty()) h.lattice_rpc_url = "nats://127.0.0.1:4222";
    h.lattice_rpc_user_jwt = detail::json_string(j, "lattice_rpc_user_jwt");
    h.lattice_rpc_user_seed = detail::json_string(j, "lattice_rpc_user_seed");
    h.provider_key = detail::json_string(j, "provider_key");
    h.instance_id = detail::json_string(j, "instance_id");
    h.host_xkey_public_key = detail::json_string(j, "host_xkey_public_key");
    h.provider_xkey_private_key = detail::json_string(j, "provider_xkey_private_key");
    h.env_values = detail::json_string_map(j, "env_values");
    h.config = detail::json_string_map(j, "config");
    if (j.contains("secrets")) h.secrets = detail::parse_secrets(j["secrets"]);
    if (j.contains("otel_config") && j["otel_config"].is_object()) h.otel_config = j["otel_config"];
    if (j.contains("cluster_issuers") && j["cluster_issuers"].is_array())
      for (auto &i : j["cluster_issuers"])
        if (i.is_string()) h.cluster_issuers.push_back(i.get<std::string>());
    if (j.contains("link_definitions") && !j["link_definitions"].is_null()) {
      if (!j["link_definitions"].is_array()) throw std::invalid_argument("'link_definitions' must be an array");
      for (auto &l : j["link_definitions"]) h.link_definitions.push_back(LinkDefinition::from_json(l));
    }
    if (j.contains("default_rpc_timeout_ms") && j["default_rpc_timeout_ms"].is_number_unsigned())
      h.default_rpc_timeout_ms = j["default_rpc_timeout_ms"].get<uint64_t>();
    if (j.contains("structured_logging") && j["structured_logging"].is_boolean())
      h.structured_logging = j["structured_logging"].get<bool>();
    h.log_level = detail::json_string(j, "log_level", "info");
  } catch (const nlohmann::json::exception &e) {
    throw std::invalid_argument(std::string("bad host data: ") + e.what());
  }
  if (h.provider_key.empty()) throw std::invalid_argument("host data has no 'provider_key'");
  return h;
}

inline HostData HostData::parse_base64(const std::string &line) {
  std::string trimmed = line;
  while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.back()))) trimmed.pop_back();
  if (trimmed.empty()) throw std::invalid_argument("host data is empty");
  std::string json;
  try {
    json = detail::base64_decode(trimmed);
  } catch (const std::exception &e) {
    throw std::invalid_argument(std::string("host data is not base64: ") + e.what());
  }
  return parse_json(json);
}

inline HostData HostData::read(int fd, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string line;
  char c;
  // Byte by byte up to the newline: whatever follows on stdin is not ours to consume.
  while (line.size() < WRPC_HTTP_MAX_HOST_DATA_BYTES) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw std::invalid_argument("no host data on stdin within the timeout");
    pollfd pfd{fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
    line.push_back(c);
  }
  if (line.size() >= WRPC_HTTP_MAX_HOST_DATA_BYTES) throw std::invalid_argument("host data line too long");
  return parse_base64(line);
}

// How the provider binary was started: by a host (host data on stdin), or by hand for local
// development with `--nats URL --lattice NAME --address HOST:PORT --target COMPONENT` or the
// environment variables WRPC_HTTP_NATS_URL, WRPC_HTTP_LATTICE, WRPC_HTTP_ADDRESS,
// WRPC_HTTP_TARGET (a host clears the environment, so these never leak into a deployment).
struct Launch {
  HostData host_data;
  std::string target;

  // Throws std::invalid_argument with a one-line reason (bad flag, bad host data).
  static Launch from(int argc, char **argv, const std::string &default_target) {
    static const std::pair<const char *, const char *> options[] = {{"--nats", "WRPC_HTTP_NATS_URL"},
                                                                    {"--lattice", "WRPC_HTTP_LATTICE"},
                                                                    {"--address", "WRPC_HTTP_ADDRESS"},
                                                                    {"--target", "WRPC_HTTP_TARGET"}};
    StringMap given;
    for (auto &o : options)
      if (const char *env = std::getenv(o.second)) given[o.first] = env;
    for (int i = 1; i < argc; i += 2) {
      std::string flag = argv[i];
      bool known = std::any_of(std::begin(options), std::end(options), [&](auto &o) { return flag == o.first; });
      if (!known || i + 1 >= argc)
        throw std::invalid_argument("usage: " + std::string(argv[0]) +
                                    " [--nats URL] [--lattice NAME] [--address HOST:PORT] [--target COMPONENT]");
      given[flag] = argv[i + 1];
    }
    Launch launch;
    launch.target = given.count("--target") ? given["--target"] : default_target;
    if (given.empty()) {
      launch.host_data = HostData::read();
      return launch;
    }
    auto &h = launch.host_data;
    h.host_id = "local";
    h.provider_key = "http-server";
    h.instance_id = "local";
    if (given.count("--nats")) h.lattice_rpc_url = given["--nats"];
    if (given.count("--lattice")) h.lattice_rpc_prefix = given["--lattice"];
    if (given.count("--address")) h.config["address"] = given["--address"];
    return launch;
  }
};

}  // namespace wrpc_http

// ---- HTTP bridge ----
//
// HTTP requests in (cpp-httplib's blocking thread pool), wRPC `handle` calls out.

namespace wrpc_http {

// Settings of one HTTP listener, from the provider config and a source link's
// source_config (which wins). Keys are documented in the README.
struct HttpSettings {
  std::string address = "0.0.0.0:8080";
  std::chrono::milliseconds timeout{5000};  // until the component's response head
  size_t max_content_len = WRPC_HTTP_DEFAULT_MAX_CONTENT_LEN;
  std::chrono::milliseconds body_idle_timeout{WRPC_HTTP_BODY_IDLE_TIMEOUT_MS};
  // Both set: the listener serves HTTPS with this certificate chain and key (PEM files).
  std::string tls_cert_file, tls_priv_key_file;

  // Throws std::invalid_argument naming the bad key.
  static HttpSettings from_config(const StringMap &config, const StringMap &overrides = {});
};

namespace detail {

inline uint64_t parse_unsigned(const std::string &key, const std::string &text) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("config '" + key + "' must be a whole number, got '" + text + "'");
  return std::stoull(text);
}

// "1048576", "512K", "100M", "1G" (binary multiples; a trailing "B"/"iB" is allowed).
inline size_t parse_size(const std::string &key, std::string text) {
  for (auto &c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (text.size() > 2 && text.compare(text.size() - 2, 2, "IB") == 0) text.resize(text.size() - 2);
  else if (text.size() > 1 && text.back() == 'B') text.pop_back();
  uint64_t multiplier = 1;
  if (!text.empty()) {
    switch (text.back()) {
    case 'K': multiplier = 1ull << 10; break;
    case 'M': multiplier = 1ull << 20; break;
    case 'G': multiplier = 1ull << 30; break;
    default: break;
    }
    if (multiplier != 1) text.pop_back();
  }
  return static_cast<size_t>(parse_unsigned(key, text) * multiplier);
}

// "host:port", "[v6]:port" or ":port". Returns {host, port}.
inline std::pair<std::string, int> parse_address(const std::string &address) {
  std::string host, port;
  if (!address.empty() && address[0] == '[') {
    auto close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':')
      throw std::invalid_argument("bad address '" + address + "'");
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    auto colon = address.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("address '" + address + "' has no port");
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  if (host.empty()) host = "0.0.0.0";
  auto number = parse_unsigned("address", port);
  if (number > 65535) throw std::invalid_argument("bad port in address '" + address + "'");
  return {host, static_cast<int>(number)};
}

}  // namespace detail

inline HttpSettings HttpSettings::from_config(const StringMap &config, const StringMap &overrides) {
  StringMap merged = config;
  for (auto &kv : overrides) merged[kv.first] = kv.second;
  HttpSettings s;
  auto get = [&](const char *key) -> const std::string * {
    auto it = merged.find(key);
    return it == merged.end() ? nullptr : &it->second;
  };
  if (auto v = get("address")) {
    detail::parse_address(*v);  // validate now, not at bind time
    s.address = *v;
  }
  if (auto v = get("timeout_ms")) s.timeout = std::chrono::milliseconds(detail::parse_unsigned("timeout_ms", *v));
  if (auto v = get("max_content_len")) s.max_content_len = detail::parse_size("max_content_len", *v);
  if (auto v = get("body_idle_timeout_ms"))
    s.body_idle_timeout = std::chrono::milliseconds(detail::parse_unsigned("body_idle_timeout_ms", *v));
  if (auto v = get("tls_cert_file")) s.tls_cert_file = *v;
  if (auto v = get("tls_priv_key_file")) s.tls_priv_key_file = *v;
  if (s.tls_cert_file.empty() != s.tls_priv_key_file.empty())
    throw std::invalid_argument("config 'tls_cert_file' and 'tls_priv_key_file' go together");
  return s;
}

// Picks the component for a request (the Go example's WithDirector).
using Director = std::function<std::string(const httplib::Request &)>;

// The Go example's WithSingleTarget.
inline Director single_target(std::string target) {
  return [target](const httplib::Request &) { return target; };
}

// Registers `handler` for every method cpp-httplib routes (GET, HEAD, POST, PUT, DELETE,
// OPTIONS, PATCH) under `pattern`.
inline void route_all(httplib::Server &server, const std::string &pattern, const httplib::Server::Handler &handler) {
  server.Get(pattern, handler);
  server.Post(pattern, handler);
  server.Put(pattern, handler);
  server.Delete(pattern, handler);
  server.Options(pattern, handler);
  server.Patch(pattern, handler);
}

namespace detail {

// Hop-by-hop headers (RFC 9110 7.6.1) and those wasi:http forbids: they describe this
// connection, not the message, so they are never forwarded in either direction.
inline bool is_hop_by_hop(const std::string &lower_name) {
  static const char *names[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                "te",         "trailer",    "upgrade",          "http2-settings",
                                "host",       "content-length"};
  for (auto n : names)
    if (lower_name == n) return true;
  return false;
}

inline std::string lower(std::string s) {
  for (auto &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// cpp-httplib adds the peer's address as pseudo headers; they did not come from the client.
inline bool is_httplib_pseudo_header(const std::string &name) {
  return name == "REMOTE_ADDR" || name == "REMOTE_PORT" || name == "LOCAL_ADDR" || name == "LOCAL_PORT";
}

// httplib keeps headers in a case-insensitive multimap, so one name's values are adjacent
// and in arrival order: each name goes once, lower-cased, with all its values.
inline Fields request_fields(const httplib::Headers &headers) {
  Fields fields;
  for (auto &h : headers) {
    if (is_httplib_pseudo_header(h.first)) continue;
    std::string name = lower(h.first);
    if (is_hop_by_hop(name)) continue;
    if (!fields.empty() && fields.back().first == name) {
      fields.back().second.push_back(h.second);
    } else {
      fields.push_back({name, {h.second}});
    }
  }
  return fields;
}

inline bool valid_header_name(const std::string &name) {
  if (name.empty()) return false;
  for (unsigned char c : name)
    if (c <= ' ' || c >= 0x7f || c == ':') return false;
  return true;
}

inline bool valid_header_value(const std::string &value) {
  return value.find_first_of("\r\n", 0) == std::string::npos && value.find('\0') == std::string::npos;
}

inline void write_text(httplib::Response &res, int status, const std::string &text) {
  res.status = status;
  res.set_content(text + "\n", "text/plain; charset=utf-8");
}

// `<hex size>\r\n<data>\r\n`: the chunked framing written by hand, because cpp-httplib 0.11
// cannot write trailers after the last chunk.
inline void frame_chunk(const std::string &data, std::string &out) {
  char size[20];
  int n = std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  out.clear();
  out.reserve(data.size() + static_cast<size_t>(n) + 2);
  out.append(size, static_cast<size_t>(n));
  out += data;
  out += "\r\n";
}

inline std::string last_chunk_with_trailers(const std::optional<Fields> &trailers) {
  std::string out = "0\r\n";
  if (trailers)
    for (auto &f : *trailers)
      if (valid_header_name(f.first) && !is_hop_by_hop(lower(f.first)))
        for (auto &v : f.second)
          if (valid_header_value(v)) out += f.first + ": " + v + "\r\n";
  out += "\r\n";
  return out;
}

}  // namespace detail

namespace detail {

// A component id becomes one token of a NATS subject: printable, no dots or wildcards, and
// short enough for the server's control line.
inline bool valid_target(const std::string &target) {
  if (target.empty() || target.size() > WRPC_HTTP_MAX_TARGET_BYTES) return false;
  for (unsigned char c : target)
    if (c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>') return false;
  return true;
}

}  // namespace detail

// Forwards HTTP requests to components over wRPC: the Go example's incoming round tripper.
class Forwarder {
public:
  using SettingsSource = std::function<HttpSettings()>;

  // `source_id` (this provider's id) goes with each invocation, as the Rust SDK sends it.
  Forwarder(nats::Client &nc, std::string lattice, Director director, SettingsSource settings,
            const Logger &logger, std::string source_id)
      : nc_(nc), lattice_(std::move(lattice)), director_(std::move(director)), settings_(std::move(settings)),
        logger_(logger), source_id_(std::move(source_id)) {}

  // Serves `prefix` and everything below it (`/proxy`, `/proxy/...`) for every method;
  // an empty prefix serves every path.
  void mount(httplib::Server &server, const std::string &prefix) {
    std::string pattern = prefix + "(/.*)?";
    auto plain = [this](const httplib::Request &req, httplib::Response &res) { handle(req, res, nullptr); };
    auto streamed = [this](const httplib::Request &req, httplib::Response &res,
                           const httplib::ContentReader &reader) { handle(req, res, &reader); };
    server.Get(pattern, plain);
    server.Options(pattern, plain);
    server.Post(pattern, streamed);
    server.Put(pattern, streamed);
    server.Patch(pattern, streamed);
    server.Delete(pattern, streamed);
  }

  // Forwards one request. `reader` streams the body (POST/PUT/PATCH/DELETE); without it
  // the body, if any, is already in req.body.
  void handle(const httplib::Request &req, httplib::Response &res, const httplib::ContentReader *reader);

private:
  std::optional<std::string> reject_reason(const httplib::Request &req, const HttpSettings &settings) const;
  void send_response(const httplib::Request &req, httplib::Response &res, std::shared_ptr<wrpc::OutgoingCall> call,
                     const ResponseHead &head, const HttpSettings &settings);

  nats::Client &nc_;
  std::string lattice_;
  Director director_;
  SettingsSource settings_;
  const Logger &logger_;
  std::string source_id_;
};

namespace detail {

inline bool is_lower_hex(const std::string &s, size_t from, size_t count) {
  if (s.size() < from + count) return false;
  for (size_t i = from; i < from + count; ++i)
    if (!std::isxdigit(static_cast<unsigned char>(s[i])) || std::isupper(static_cast<unsigned char>(s[i])))
      return false;
  return true;
}

// W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
inline bool valid_traceparent(const std::string &t) {
  return t.size() == 55 && t[2] == '-' && t[35] == '-' && t[52] == '-' && is_lower_hex(t, 0, 2) &&
         t.compare(0, 2, "ff") != 0 && is_lower_hex(t, 3, 32) && is_lower_hex(t, 36, 16) && is_lower_hex(t, 53, 2) &&
         t.compare(3, 32, std::string(32, '0')) != 0 && t.compare(36, 16, std::string(16, '0')) != 0;
}

inline std::string random_hex(size_t digits) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char hex[] = "0123456789abcdef";
  std::string out(digits, '0');
  for (auto &c : out) c = hex[rng() & 15];
  if (out.find_first_not_of('0') == std::string::npos) out.back() = '1';
  return out;
}

// The request's traceparent, or a new one that starts a trace here.
inline std::string trace_parent_for(const httplib::Request &req) {
  auto incoming = req.get_header_value("traceparent");
  if (valid_traceparent(incoming)) return incoming;
  return "00-" + random_hex(32) + "-" + random_hex(16) + "-01";
}

}  // namespace detail

inline std::optional<std::string> Forwarder::reject_reason(const httplib::Request &req,
                                                           const HttpSettings &settings) const {
  if (req.has_header("Content-Length") && req.has_header("Transfer-Encoding"))
    return std::string("Content-Length together with Transfer-Encoding");
  if (req.get_header_value_count("Content-Length") > 1) return std::string("more than one Content-Length");
  if (!detail::is_valid_utf8(req.target.data(), req.target.size())) return std::string("request target is not UTF-8");
  (void)settings;
  return std::nullopt;
}

inline void Forwarder::handle(const httplib::Request &req, httplib::Response &res,
                              const httplib::ContentReader *reader) {
  auto started = std::chrono::steady_clock::now();
  HttpSettings settings = settings_();
  // Unread body bytes would be parsed as the next request: close instead.
  auto close_connection = [&] { res.set_header("Connection", "close"); };
  if (auto why = reject_reason(req, settings)) {
    close_connection();
    return detail::write_text(res, 400, "bad request: " + *why);
  }
  if (req.has_header("Content-Length")) {
    auto length = req.get_header_value("Content-Length");
    if (length.find_first_not_of("0123456789") != std::string::npos || length.size() > 18) {
      close_connection();
      return detail::write_text(res, 400, "bad request: invalid Content-Length");
    }
    if (std::stoull(length) > settings.max_content_len) {
      close_connection();
      return detail::write_text(res, 413, "request body larger than max_content_len");
    }
  }
  std::string target;
  try {
    target = director_(req);
  } catch (const std::exception &e) {
    return detail::write_text(res, 500, std::string("director failed: ") + e.what());
  }
  if (target.empty()) return detail::write_text(res, 404, "no link routes this request");
  // The target becomes a NATS subject token: request data must not smuggle wildcards or dots.
  if (!detail::valid_target(target)) return detail::write_text(res, 400, "bad request: invalid target");

  // Trace context travels in the invocation's NATS headers, with the ids the Rust SDK sends.
  std::string traceparent = detail::trace_parent_for(req);
  std::string trace_id = traceparent.substr(3, 32);
  nats::Headers nats_headers = {{"traceparent", traceparent}, {"source-id", source_id_}, {"target-id", target}};
  if (req.has_header("tracestate") && detail::valid_header_value(req.get_header_value("tracestate")))
    nats_headers.push_back({"tracestate", req.get_header_value("tracestate")});

  RequestHead head;
  head.method = method_from_string(req.method);
  head.path_with_query = req.target;
  head.scheme = Scheme{req.ssl ? SchemeKind::https : SchemeKind::http, ""};
  if (req.has_header("Host")) head.authority = req.get_header_value("Host");
  head.headers = detail::request_fields(req.headers);

  // cpp-httplib would otherwise compress or slice what the component sent; the component
  // sees these headers and answers them itself. The Request object is the server's own
  // non-const instance, so writing to it is defined.
  auto &own = const_cast<httplib::Request &>(req);
  own.headers.erase("Accept-Encoding");
  own.ranges.clear();

  auto deadline = started + settings.timeout;
  std::shared_ptr<wrpc::OutgoingCall> call;
  // The call starts with the first body bytes, so a request whose body breaks before any
  // data never reaches the component.
  auto start_call = [&] {
    call = std::make_shared<wrpc::OutgoingCall>(nc_, wrpc::handle_subject(lattice_, target), head, &nats_headers);
    call->await_handshake(deadline);
  };
  try {
    // A request with neither Content-Length nor Transfer-Encoding has no body (RFC 9112
    // 6.3); cpp-httplib would otherwise wait for the client to close the connection.
    bool has_body = req.has_header("Content-Length") || req.has_header("Transfer-Encoding");
    if (reader && has_body) {
      size_t received = 0;
      bool too_large = false;
      bool complete = (*reader)([&](const char *data, size_t size) {
        received += size;
        if (received > settings.max_content_len) {
          too_large = true;
          return false;
        }
        if (!call) start_call();
        call->write_body(data, size);
        return true;
      });
      if (too_large || !complete) {
        if (call) call->abort_request();
        close_connection();
        return too_large ? detail::write_text(res, 413, "request body larger than max_content_len")
                         : detail::write_text(res, 400, "bad request: incomplete or malformed body");
      }
    }
    if (!call) start_call();
    if (!reader && !req.body.empty()) call->write_body(req.body.data(), req.body.size());
    call->finish_request();
    ResponseHead response = call->await_response(deadline);
    send_response(req, res, std::move(call), response, settings);
    logger_.debug("forwarded", {{"method", req.method},
                                {"path", req.target},
                                {"target", target},
                                {"status", std::to_string(res.status)},
                                {"trace_id", trace_id}});
  } catch (const wrpc::CallError &e) {
    logger_.warn("request failed", {{"method", req.method},
                                    {"path", req.target},
                                    {"target", target},
                                    {"error", e.what()},
                                    {"trace_id", trace_id}});
    if (reader || !req.body.empty()) close_connection();
    detail::write_text(res, e.http_status(), e.what());
  }
}

inline void Forwarder::send_response(const httplib::Request &req, httplib::Response &res,
                                     std::shared_ptr<wrpc::OutgoingCall> call, const ResponseHead &head,
                                     const HttpSettings &settings) {
  if (head.status < 100 || head.status > 599)
    throw wrpc::CallError(wrpc::CallError::Kind::bad_reply,
                          "component answered with invalid status " + std::to_string(head.status));
  res.status = head.status;
  std::optional<uint64_t> content_length;
  std::string content_type;
  for (auto &field : head.headers) {
    std::string name = detail::lower(field.first);
    if (!detail::valid_header_name(name)) continue;
    if (name == "content-length" && field.second.size() == 1 &&
        field.second[0].find_first_not_of("0123456789") == std::string::npos && !field.second[0].empty() &&
        field.second[0].size() <= 18) {
      content_length = std::stoull(field.second[0]);
      continue;
    }
    if (name == "content-type" && !field.second.empty()) {
      content_type = field.second[0];  // set_content_provider writes it
      continue;
    }
    if (detail::is_hop_by_hop(name)) continue;
    for (auto &value : field.second)
      if (detail::valid_header_value(value)) res.headers.emplace(field.first, value);
  }
  if (!detail::valid_header_value(content_type)) content_type.clear();
  bool bodyless = req.method == "HEAD" || head.status == 204 || head.status == 304 || head.status < 200;
  if (bodyless) {
    if (content_length) res.set_header("Content-Length", std::to_string(*content_length));
    if (!content_type.empty()) res.set_header("Content-Type", content_type);
    return;
  }
  auto idle = settings.body_idle_timeout;
  if (content_length && *content_length == 0) {
    res.set_header("Content-Length", "0");
    if (!content_type.empty()) res.set_header("Content-Type", content_type);
    return;
  }
  if (content_length) {
    // The component promised a length: pass it on, and cut the connection if it lies.
    res.set_content_provider(
        static_cast<size_t>(*content_length), content_type,
        [call, idle, &logger = logger_, pending = std::string(), used = size_t(0)](size_t, size_t remaining,
                                                                httplib::DataSink &sink) mutable {
          try {
            if (used == pending.size()) {
              used = 0;
              if (!call->read_body(pending, idle)) return false;  // ended short of its length
            }
            size_t n = std::min(pending.size() - used, remaining);  // never past the promise
            if (!sink.write(pending.data() + used, n)) return false;
            used += n;
            return true;
          } catch (const std::exception &e) {
            logger.warn(std::string("response body cut off: ") + e.what());
            return false;
          }
        });
    return;
  }
  // Unknown length: chunked framing written here, so trailers can follow the last chunk.
  res.set_header("Transfer-Encoding", "chunked");
  res.set_content_provider(content_type.empty() ? "application/octet-stream" : content_type,
                           [call, idle, &logger = logger_, piece = std::string(), framed = std::string()](
                               size_t, httplib::DataSink &sink) mutable {
                             try {
                               if (call->read_body(piece, idle)) {
                                 detail::frame_chunk(piece, framed);
                                 return sink.write(framed.data(), framed.size());
                               }
                               auto tail = detail::last_chunk_with_trailers(call->read_trailers(idle));
                               if (!sink.write(tail.data(), tail.size())) return false;
                               sink.done();
                               return true;
                             } catch (const std::exception &e) {
                               // Cut the connection: the client sees a truncated body.
                               logger.warn(std::string("response body cut off: ") + e.what());
                               return false;
                             }
                           });
}

// ---- provider ----

// The provider process: host data, lattice subjects, links, listeners and shutdown.
//
//   wrpc_http::Provider provider(wrpc_http::HostData::read());
//   auto proxy = provider.forwarder(wrpc_http::single_target("http-http_component"));
//   provider.serve([&](httplib::Server &http) { proxy.mount(http, "/proxy"); ... });
//   return provider.run();
class Provider {
public:
  using LinkCallback = std::function<void(const LinkDefinition &)>;
  using Routes = std::function<void(httplib::Server &)>;

  explicit Provider(HostData host_data);
  ~Provider();
  Provider(const Provider &) = delete;
  Provider &operator=(const Provider &) = delete;

  const HostData &host_data() const { return host_; }
  const Logger &logger() const { return logger_; }
  nats::Client &lattice() { return nc_; }

  // Settings of the listener: provider config, overridden by the source link's config.
  HttpSettings settings() const;
  Forwarder forwarder(Director director);
  // The routes of the HTTP listener (without `routing_mode`): called for each listener the
  // provider opens. With `routing_mode`, links decide and every path is forwarded.
  void serve(Routes routes) { routes_ = std::move(routes); }

  void on_source_link_put(LinkCallback cb) { on_source_put_ = std::move(cb); }
  void on_target_link_put(LinkCallback cb) { on_target_put_ = std::move(cb); }
  void on_source_link_del(LinkCallback cb) { on_source_del_ = std::move(cb); }
  void on_target_link_del(LinkCallback cb) { on_target_del_ = std::move(cb); }
  std::vector<LinkDefinition> source_links() const;
  std::vector<LinkDefinition> target_links() const;

  // Connects, subscribes, listens; returns the exit code once shut down (by the host,
  // SIGTERM or SIGINT). Failures to start are logged and give 1.
  int run();
  // Asks run() to return (thread-safe).
  void request_shutdown();

private:
  // What one listener serves: in routing_mode `address` each source link has its own.
  struct ListenerSpec {
    HttpSettings settings;
    std::string target;  // routing_mode `address`: the link's component
    std::string signature() const {
      return settings.address + "|" + target + "|" + std::to_string(settings.timeout.count()) + "|" +
             std::to_string(settings.max_content_len) + "|" + std::to_string(settings.body_idle_timeout.count()) +
             "|" + settings.tls_cert_file + "|" + settings.tls_priv_key_file;
    }
  };
  struct Listener {
    std::string signature;
    std::unique_ptr<httplib::Server> server;
    std::unique_ptr<Forwarder> forwarder;  // routed modes
    int listen_fd = -1;
    std::thread thread;
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;  // listen_after_bind returned: every connection is done
  };
  struct Route {
    std::string match;  // path prefix or host name
    std::string target;
  };

  std::string topic(const std::string &suffix, const std::string &key) const {
    return "wasmbus.rpc." + host_.lattice_rpc_prefix + "." + key + "." + suffix;
  }
  std::string link_put_key() const;
  void subscribe_lattice();
  Secrets open_link_secrets(const LinkDefinition &link) const;
  void put_link(const LinkDefinition &link);
  void delete_link(const LinkDefinition &link);
  std::map<std::string, ListenerSpec> wanted_listeners() const;
  std::unique_ptr<Listener> start_listener(const ListenerSpec &spec);
  static void stop_listener(Listener &listener);
  void stop_listeners();
  void reconcile_listeners();
  void rebuild_routes();
  std::string route(const httplib::Request &req) const;
  void wait_for_shutdown();

  HostData host_;
  Logger logger_;
  nats::Client nc_;
  Routes routes_;
  LinkCallback on_source_put_, on_target_put_, on_source_del_, on_target_del_;

  mutable std::mutex links_mu_;
  std::map<std::string, LinkDefinition> source_links_, target_links_;
  StringMap config_;

  std::string routing_mode_;  // "", "address", "path" or "host"
  std::shared_ptr<const std::vector<Route>> route_table_ = std::make_shared<std::vector<Route>>();

  std::mutex listeners_mu_;  // held while listeners open and close
  std::map<std::string, std::unique_ptr<Listener>> listeners_;  // by address

  std::mutex shutdown_mu_;
  std::condition_variable shutdown_cv_;
  bool shutdown_requested_ = false;
};

namespace detail {
inline nats::Options lattice_options(const HostData &h, const Logger &logger) {
  nats::Options o;
  o.url = h.lattice_rpc_url;
  o.name = h.provider_key;
  o.user_jwt = h.lattice_rpc_user_jwt;
  o.user_seed = h.lattice_rpc_user_seed;
  // The host data carries no CA: a lattice behind a private CA names its PEM file in the config.
  auto ca_file = h.config.find("nats_tls_ca_file");
  if (ca_file != h.config.end()) o.tls_ca_file = ca_file->second;
  o.log = logger.nats_sink();
  return o;
}
}  // namespace detail

inline Provider::Provider(HostData host_data)
    : host_(std::move(host_data)),
      nc_([&] {
        logger_.configure(Logger::parse_level(host_.log_level), host_.structured_logging);
        return detail::lattice_options(host_, logger_);
      }()),
      config_(host_.config) {
  HttpSettings::from_config(config_);  // reject a bad config before anything starts
  auto mode = config_.find("routing_mode");
  if (mode != config_.end()) {
    if (mode->second != "address" && mode->second != "path" && mode->second != "host")
      throw std::invalid_argument("config 'routing_mode' must be address, path or host, not '" + mode->second + "'");
    routing_mode_ = mode->second;
  }
  for (auto &received : host_.link_definitions) {
    LinkDefinition link = received;
    try {
      link.secrets = open_link_secrets(received);
    } catch (const std::exception &e) {
      logger_.error(std::string("skipping link from host data: ") + e.what(),
                    {{"source_id", link.source_id}, {"target", link.target}});
      continue;
    }
    if (link.source_id == host_.provider_key) source_links_[link.key(link.target)] = link;
    if (link.target == host_.provider_key) target_links_[link.key(link.source_id)] = link;
  }
  rebuild_routes();
}

inline Provider::~Provider() {
  stop_listeners();
  nc_.close();
}

inline HttpSettings Provider::settings() const {
  std::lock_guard<std::mutex> lk(links_mu_);
  // The example has one listener: the first source link's config refines the provider's.
  StringMap overrides;
  if (!source_links_.empty()) overrides = source_links_.begin()->second.source_config;
  return HttpSettings::from_config(config_, overrides);
}

inline Forwarder Provider::forwarder(Director director) {
  return Forwarder(nc_, host_.lattice_rpc_prefix, std::move(director), [this] { return settings(); }, logger_,
                   host_.provider_key);
}

inline std::vector<LinkDefinition> Provider::source_links() const {
  std::lock_guard<std::mutex> lk(links_mu_);
  std::vector<LinkDefinition> out;
  for (auto &l : source_links_) out.push_back(l.second);
  return out;
}

inline std::vector<LinkDefinition> Provider::target_links() const {
  std::lock_guard<std::mutex> lk(links_mu_);
  std::vector<LinkDefinition> out;
  for (auto &l : target_links_) out.push_back(l.second);
  return out;
}

// Hosts >= 1.1 send link puts to the provider's xkey, so that only holders of the key
// can read the sealed secrets in them; older hosts use the provider key.
inline std::string Provider::link_put_key() const {
  if (host_.host_xkey_public_key.empty() || host_.provider_xkey_private_key.empty()) return host_.provider_key;
#ifdef WRPC_HTTP_OPENSSL_SUPPORT
  return detail::nkeys::public_key_from_seed(host_.provider_xkey_private_key);
#else
  throw std::invalid_argument("host data has xkeys: build with WRPC_HTTP_OPENSSL_SUPPORT to derive the link subject");
#endif
}

// Link secrets are sealed by the host's xkey for this provider's xkey (nkeys "xkv1"). The
// side that concerns this provider is opened; a link whose secrets do not open is refused.
inline Secrets Provider::open_link_secrets(const LinkDefinition &link) const {
  const auto &sealed = link.source_id == host_.provider_key ? link.source_secrets : link.target_secrets;
  if (sealed.empty()) return {};
  if (host_.host_xkey_public_key.empty() || host_.provider_xkey_private_key.empty())
    throw std::invalid_argument("link has secrets but the host data has no xkeys to open them");
#if defined(WRPC_HTTP_OPENSSL_SUPPORT) && defined(WRPC_HTTP_SODIUM_SUPPORT)
  std::string json;
  try {
    json = detail::nkeys::xkey_open(sealed, host_.host_xkey_public_key, host_.provider_xkey_private_key);
  } catch (const std::exception &e) {
    throw std::invalid_argument(std::string("cannot open link secrets: ") + e.what());
  }
  try {
    return detail::parse_secrets(nlohmann::json::parse(json));
  } catch (const nlohmann::json::exception &) {
    throw std::invalid_argument("opened link secrets are not a JSON map");
  }
#else
  throw std::invalid_argument("link secrets need WRPC_HTTP_OPENSSL_SUPPORT and WRPC_HTTP_SODIUM_SUPPORT");
#endif
}

inline void Provider::put_link(const LinkDefinition &received) {
  LinkDefinition link = received;
  link.secrets = open_link_secrets(received);
  bool is_source = link.source_id == host_.provider_key;
  bool is_target = link.target == host_.provider_key;
  if (!is_source && !is_target) {
    logger_.warn("ignoring a link that does not involve this provider",
                 {{"source_id", link.source_id}, {"target", link.target}});
    return;
  }
  bool fresh;
  {
    std::lock_guard<std::mutex> lk(links_mu_);
    auto &table = is_source ? source_links_ : target_links_;
    auto key = link.key(is_source ? link.target : link.source_id);
    auto it = table.find(key);
    fresh = it == table.end() || it->second.source_config != link.source_config ||
            it->second.target_config != link.target_config;
    table[key] = link;
  }
  if (!fresh) return;  // the host re-sends links it already sent
  logger_.info("link put", {{"source_id", link.source_id}, {"target", link.target}, {"name", link.name}});
  auto &cb = is_source ? on_source_put_ : on_target_put_;
  if (cb) cb(link);
  if (is_source) {
    rebuild_routes();
    reconcile_listeners();
  }
}

inline void Provider::delete_link(const LinkDefinition &link) {
  bool is_source = link.source_id == host_.provider_key;
  size_t erased;
  {
    std::lock_guard<std::mutex> lk(links_mu_);
    auto &table = is_source ? source_links_ : target_links_;
    erased = table.erase(link.key(is_source ? link.target : link.source_id));
  }
  if (!erased) return;
  logger_.info("link deleted", {{"source_id", link.source_id}, {"target", link.target}, {"name", link.name}});
  auto &cb = is_source ? on_source_del_ : on_target_del_;
  if (cb) cb(link);
  if (is_source) {
    rebuild_routes();
    reconcile_listeners();
  }
}

inline void Provider::subscribe_lattice() {
  const auto &p = host_.provider_key;
  nc_.subscribe(topic("health", p), [this](nats::Message &m) {
    if (m.reply.empty()) return;
    nlohmann::json health = {{"healthy", nc_.connected()}, {"message", "wrpc-http-provider " WRPC_HTTP_VERSION}};
    nc_.publish(m.reply, health.dump());
  });
  auto link_handler = [this](bool put) {
    return [this, put](nats::Message &m) {
      try {
        auto link = LinkDefinition::from_json(nlohmann::json::parse(m.data));
        put ? put_link(link) : delete_link(link);
        if (!m.reply.empty()) nc_.publish(m.reply, R"({"success":true})");
      } catch (const std::exception &e) {
        logger_.error(std::string("bad link ") + (put ? "put" : "del") + ": " + e.what());
        if (!m.reply.empty())
          nc_.publish(m.reply, nlohmann::json({{"success", false}, {"error", e.what()}}).dump());
      }
    };
  };
  nc_.subscribe(topic("linkdefs.put", link_put_key()), link_handler(true));
  nc_.subscribe(topic("linkdefs.del", p), link_handler(false));
  nc_.subscribe(topic("default.shutdown", p), [this](nats::Message &m) {
    // Every instance of this provider id hears the request: only ours counts.
    try {
      auto j = nlohmann::json::parse(m.data.empty() ? "{}" : m.data);
      auto host = j.value("host_id", std::string());
      if (!host.empty() && !host_.host_id.empty() && host != host_.host_id) return;
    } catch (const nlohmann::json::exception &) {
      logger_.warn("shutdown request with unreadable payload; shutting down anyway");
    }
    if (!m.reply.empty()) nc_.publish(m.reply, "shutting down");
    request_shutdown();
  });
  nc_.subscribe(topic("config.update", p), [this](nats::Message &m) {
    try {
      StringMap update = detail::json_string_map(nlohmann::json{{"config", nlohmann::json::parse(m.data)}}, "config");
      HttpSettings::from_config(update);  // refuse a config that would not apply
      {
        std::lock_guard<std::mutex> lk(links_mu_);
        config_ = std::move(update);
      }
      logger_.info("config updated");
      reconcile_listeners();
    } catch (const std::exception &e) {
      logger_.error(std::string("config update refused: ") + e.what());
    }
  });
}

// The listeners the links and config ask for, by address.
inline std::map<std::string, Provider::ListenerSpec> Provider::wanted_listeners() const {
  std::map<std::string, ListenerSpec> wanted;
  if (routing_mode_ != "address") {
    ListenerSpec spec;
    if (routing_mode_.empty()) {
      spec.settings = settings();
    } else {
      std::lock_guard<std::mutex> lk(links_mu_);
      spec.settings = HttpSettings::from_config(config_);
      auto fallback = config_.find("default_address");
      if (fallback != config_.end()) spec.settings.address = fallback->second;
    }
    wanted[spec.settings.address] = spec;
    return wanted;
  }
  std::lock_guard<std::mutex> lk(links_mu_);
  for (auto &entry : source_links_) {
    auto &link = entry.second;
    ListenerSpec spec;
    try {
      spec.settings = HttpSettings::from_config(config_, link.source_config);
    } catch (const std::exception &e) {
      logger_.error(std::string("link refused: ") + e.what(), {{"target", link.target}});
      continue;
    }
    if (link.source_config.find("address") == link.source_config.end()) {
      logger_.error("link refused: routing_mode address needs source_config.address", {{"target", link.target}});
      continue;
    }
    spec.target = link.target;
    auto taken = wanted.find(spec.settings.address);
    if (taken != wanted.end()) {
      logger_.error("link refused: address already used by another link",
                    {{"address", spec.settings.address}, {"target", link.target}, {"holder", taken->second.target}});
      continue;
    }
    wanted[spec.settings.address] = spec;
  }
  return wanted;
}

inline std::unique_ptr<Provider::Listener> Provider::start_listener(const ListenerSpec &spec) {
  const auto &settings = spec.settings;
  auto address = detail::parse_address(settings.address);
  auto listener = std::make_unique<Listener>();
  listener->signature = spec.signature();
  if (settings.tls_cert_file.empty()) {
    listener->server = std::make_unique<httplib::Server>();
  } else {
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
    auto tls = std::make_unique<httplib::SSLServer>(settings.tls_cert_file.c_str(), settings.tls_priv_key_file.c_str());
    if (!tls->is_valid())
      throw std::runtime_error("cannot load the TLS certificate or key (" + settings.tls_cert_file + ", " +
                               settings.tls_priv_key_file + ")");
    listener->server = std::move(tls);
#else
    throw std::runtime_error("HTTPS needs cpp-httplib built with CPPHTTPLIB_OPENSSL_SUPPORT");
#endif
  }
  auto &server = *listener->server;
  server.new_task_queue = [] { return new detail::ElasticTaskQueue(WRPC_HTTP_MAX_THREADS); };
  // Head and body leave in separate writes: with Nagle's algorithm and delayed ACKs every
  // response would wait ~40 ms for the second one.
  server.set_tcp_nodelay(true);
  server.set_keep_alive_max_count(WRPC_HTTP_KEEPALIVE_MAX_COUNT);
  server.set_keep_alive_timeout(WRPC_HTTP_KEEPALIVE_TIMEOUT_SECOND);
  server.set_read_timeout(WRPC_HTTP_READ_TIMEOUT_SECOND, 0);
  server.set_payload_max_length(settings.max_content_len);
  if (routing_mode_.empty()) {
    if (routes_) routes_(server);
  } else {
    // Every path goes to a component: the one this listener's link names, or the one the
    // route table picks per request.
    Director director = routing_mode_ == "address" ? single_target(spec.target)
                                                   : Director([this](const httplib::Request &req) { return route(req); });
    listener->forwarder = std::make_unique<Forwarder>(nc_, host_.lattice_rpc_prefix, std::move(director),
                                                      [settings] { return settings; }, logger_, host_.provider_key);
    listener->forwarder->mount(server, "");
  }
  // cpp-httplib's defaults are SO_REUSEPORT (a second listener on the same port would
  // silently share it) and a listen backlog of 5 (bursts of connections get dropped).
  int listen_fd = -1;
  server.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  if (!server.bind_to_port(address.first.c_str(), address.second))
    throw std::runtime_error("cannot listen on " + settings.address);
  ::listen(listen_fd, WRPC_HTTP_LISTEN_BACKLOG);
  listener->listen_fd = listen_fd;
  listener->thread = std::thread([l = listener.get()] {
    l->server->listen_after_bind();
    std::lock_guard<std::mutex> lk(l->mu);
    l->finished = true;
    l->cv.notify_all();
  });
  logger_.info("listening", {{"address", settings.address}, {"target", spec.target}});
  return listener;
}

// Stops accepting at once and gives running requests WRPC_HTTP_DRAIN_TIMEOUT_MS to finish.
// cpp-httplib's stop() would cut streamed responses short, so the listening socket is shut
// down first; stop() then only ends what outlives the drain (idle keep-alive connections).
inline void Provider::stop_listener(Listener &listener) {
  ::shutdown(listener.listen_fd, SHUT_RDWR);
  {
    std::unique_lock<std::mutex> lk(listener.mu);
    listener.cv.wait_for(lk, std::chrono::milliseconds(WRPC_HTTP_DRAIN_TIMEOUT_MS), [&] { return listener.finished; });
  }
  listener.server->stop();
  listener.thread.join();
}

inline void Provider::stop_listeners() {
  std::lock_guard<std::mutex> lk(listeners_mu_);
  for (auto &l : listeners_) stop_listener(*l.second);
  listeners_.clear();
}

// Brings the open listeners in line with what links and config ask for: closes the ones
// no longer wanted (their running requests finish), opens the new ones.
inline void Provider::reconcile_listeners() {
  std::map<std::string, ListenerSpec> wanted;
  try {
    wanted = wanted_listeners();
  } catch (const std::exception &e) {
    logger_.error(std::string("keeping the current listeners: ") + e.what());
    return;
  }
  std::lock_guard<std::mutex> lk(listeners_mu_);
  for (auto it = listeners_.begin(); it != listeners_.end();) {
    auto w = wanted.find(it->first);
    if (w != wanted.end() && w->second.signature() == it->second->signature) {
      ++it;
      continue;
    }
    logger_.info("closing listener", {{"address", it->first}});
    stop_listener(*it->second);
    it = listeners_.erase(it);
  }
  for (auto &w : wanted) {
    if (listeners_.count(w.first)) continue;
    try {
      listeners_[w.first] = start_listener(w.second);
    } catch (const std::exception &e) {
      logger_.error(e.what());
    }
  }
}

// Routes for routing_mode path/host, rebuilt when links change and swapped whole, so a
// request in flight keeps the route it started with.
inline void Provider::rebuild_routes() {
  if (routing_mode_ != "path" && routing_mode_ != "host") return;
  auto table = std::make_shared<std::vector<Route>>();
  {
    std::lock_guard<std::mutex> lk(links_mu_);
    for (auto &entry : source_links_) {
      auto it = entry.second.source_config.find(routing_mode_);
      if (it == entry.second.source_config.end()) {
        logger_.error("link has no source_config." + routing_mode_ + " for routing_mode " + routing_mode_,
                      {{"target", entry.second.target}});
        continue;
      }
      std::string match = it->second;
      if (routing_mode_ == "host") {
        match = detail::lower(match.substr(0, match.rfind(':') == std::string::npos || match.back() == ']'
                                                  ? match.size()
                                                  : match.rfind(':')));
      } else {
        if (match.empty() || match[0] != '/') match = "/" + match;
        while (match.size() > 1 && match.back() == '/') match.pop_back();
      }
      table->push_back({match, entry.second.target});
    }
  }
  // Longest prefix first: the first match is the most specific.
  std::sort(table->begin(), table->end(),
            [](const Route &a, const Route &b) { return a.match.size() > b.match.size(); });
  std::atomic_store(&route_table_, std::shared_ptr<const std::vector<Route>>(std::move(table)));
}

// The component for a request in routing_mode path/host; "" when no link matches (404).
inline std::string Provider::route(const httplib::Request &req) const {
  auto table = std::atomic_load(&route_table_);
  if (routing_mode_ == "host") {
    std::string host = req.get_header_value("Host");
    auto colon = host.rfind(':');
    if (colon != std::string::npos && host.back() != ']') host.resize(colon);
    host = detail::lower(host);
    for (auto &r : *table)
      if (r.match == host) return r.target;
    return "";
  }
  const std::string &path = req.path;
  for (auto &r : *table) {
    if (r.match == "/") return r.target;
    // Segment-aware: `/api` matches `/api` and `/api/...`, not `/apix`.
    if (path.compare(0, r.match.size(), r.match) == 0 && (path.size() == r.match.size() || path[r.match.size()] == '/'))
      return r.target;
  }
  return "";
}

inline void Provider::request_shutdown() {
  std::lock_guard<std::mutex> lk(shutdown_mu_);
  shutdown_requested_ = true;
  shutdown_cv_.notify_all();
}

// Blocks until a shutdown request or SIGTERM/SIGINT. The signals are blocked in every
// thread run() starts and taken here synchronously, so no handler runs in signal context.
inline void Provider::wait_for_shutdown() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  std::unique_lock<std::mutex> lk(shutdown_mu_);
  while (!shutdown_requested_) {
    lk.unlock();
    timespec poll_interval{0, 100 * 1000 * 1000};
    int sig = sigtimedwait(&signals, nullptr, &poll_interval);
    lk.lock();
    if (sig == SIGTERM || sig == SIGINT) {
      logger_.info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT"));
      shutdown_requested_ = true;
    }
  }
}

inline int Provider::run() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  try {
    nc_.connect();
    subscribe_lattice();
    nc_.flush(std::chrono::milliseconds(5000));
    for (auto &link : source_links())
      if (on_source_put_) on_source_put_(link);
    for (auto &link : target_links())
      if (on_target_put_) on_target_put_(link);
    std::lock_guard<std::mutex> lk(listeners_mu_);
    for (auto &w : wanted_listeners()) listeners_[w.first] = start_listener(w.second);
  } catch (const std::exception &e) {
    logger_.error(std::string("provider failed to start: ") + e.what());
    stop_listeners();
    nc_.close();
    return 1;
  }
  logger_.info("provider started", {{"provider_key", host_.provider_key}, {"lattice", host_.lattice_rpc_prefix}});
  wait_for_shutdown();
  logger_.info("shutting down");
  stop_listeners();
  nc_.close();
  logger_.info("provider stopped");
  return 0;
}

}  // namespace wrpc_http
