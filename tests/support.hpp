// Test support: real processes (nats-server, our binaries) on free loopback ports.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace testsupport {

// In a forked child: runs argv[0] from PATH with argv; exits 127 if it cannot.
[[noreturn]] inline void exec_argv(const std::vector<std::string> &argv) {
  std::vector<char *> args;
  for (auto &a : argv) args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  ::execvp(args[0], args.data());
  ::_exit(127);
}

inline sockaddr_in loopback_address(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

// A port that is free right now, below Linux's ephemeral range (32768-60999): a port the
// kernel hands out would also be handed to outgoing connections, which could take it before
// our server binds it.
inline int free_port() {
  static std::mt19937 rng{std::random_device{}()};
  for (int attempt = 0; attempt < 1000; ++attempt) {
    int port = 20000 + static_cast<int>(rng() % 12000);
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    auto addr = loopback_address(port);
    bool free = ::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    if (free) return port;
  }
  throw std::runtime_error("no free port below 32000");
}

inline bool port_open(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  auto addr = loopback_address(port);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

inline bool wait_for_port(int port, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (port_open(port)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// A child process with optional stdin text; killed (TERM, then KILL) when destroyed.
class Process {
public:
  Process(std::vector<std::string> argv, const std::string &stdin_text = "", bool close_stdin = true,
          const std::string &stderr_file = "") {
    int in[2];
    if (::pipe(in) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::close(in[0]);
      ::close(in[1]);
      if (!stderr_file.empty()) {
        int fd = ::open(stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) ::dup2(fd, 2);
      }
      int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      exec_argv(argv);
    }
    ::close(in[0]);
    stdin_fd_ = in[1];
    if (!stdin_text.empty()) {
      ssize_t ignored = ::write(stdin_fd_, stdin_text.data(), stdin_text.size());
      (void)ignored;
    }
    if (close_stdin) close_stdin_pipe();
  }
  Process(const Process &) = delete;
  Process &operator=(const Process &) = delete;
  ~Process() { stop(); }

  void close_stdin_pipe() {
    if (stdin_fd_ >= 0) ::close(stdin_fd_);
    stdin_fd_ = -1;
  }

  pid_t pid() const { return pid_; }
  bool running() {
    if (exited_) return false;
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      status_ = status;
      return false;
    }
    return true;
  }
  void signal(int sig) {
    if (running()) ::kill(pid_, sig);
  }
  // Waits for the exit; returns the exit code, 128+signal, or -1 on timeout.
  int wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (running()) {
      if (std::chrono::steady_clock::now() > deadline) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }
  void stop() {
    close_stdin_pipe();
    if (!running()) return;
    ::kill(pid_, SIGTERM);
    if (wait(std::chrono::milliseconds(3000)) == -1) {
      ::kill(pid_, SIGKILL);
      wait(std::chrono::milliseconds(3000));
    }
  }

private:
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  bool exited_ = false;
  int status_ = 0;
};

// What a finished process left behind. `exit_code` is the exit status, 128+signal when it
// was killed by a signal, or -1 when it did not exit within the timeout (it is then killed).
struct RunResult {
  int exit_code = -1;
  std::string out, err;
  std::chrono::milliseconds elapsed{0};
};

// A child process whose stdout and stderr are captured through pipes, so that a test can
// wait for a line such as "ready" and then read everything the process printed.
// Killed (TERM, then KILL) when destroyed.
class CapturedProcess {
public:
  explicit CapturedProcess(std::vector<std::string> argv, const std::string &stdin_text = "")
      : start_(std::chrono::steady_clock::now()) {
    int in[2], out[2], err[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      exec_argv(argv);
    }
    ::close(in[0]);
    ::close(out[1]);
    ::close(err[1]);
    if (!stdin_text.empty()) {
      ssize_t ignored = ::write(in[1], stdin_text.data(), stdin_text.size());
      (void)ignored;
    }
    ::close(in[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
  }
  CapturedProcess(const CapturedProcess &) = delete;
  CapturedProcess &operator=(const CapturedProcess &) = delete;
  ~CapturedProcess() {
    kill_and_reap();
    close_pipes();
  }

  pid_t pid() const { return pid_; }
  const std::string &out() const { return out_; }
  const std::string &err() const { return err_; }
  void signal(int sig) {
    if (!reaped_) ::kill(pid_, sig);
  }

  // Reads the pipes until stdout (or stderr) contains `text`; false on timeout or when the
  // process closed the stream first.
  bool wait_for_stdout(const std::string &text, std::chrono::milliseconds timeout) {
    return wait_for(out_, text, timeout);
  }
  bool wait_for_stderr(const std::string &text, std::chrono::milliseconds timeout) {
    return wait_for(err_, text, timeout);
  }

  // Waits for the exit while collecting the output; kills the process on timeout.
  RunResult finish(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while ((out_fd_ >= 0 || err_fd_ >= 0) && pump(deadline)) {
    }
    RunResult r;
    while (!reaped_ && std::chrono::steady_clock::now() < deadline) {
      if (try_reap()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!reaped_) kill_and_reap();
    else r.exit_code = WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
    r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(exit_time_ - start_);
    pump(std::chrono::steady_clock::now());  // whatever is still buffered
    r.out = out_;
    r.err = err_;
    return r;
  }

private:
  bool wait_for(const std::string &stream, const std::string &text, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (stream.find(text) == std::string::npos) {
      if (!pump(deadline)) return stream.find(text) != std::string::npos;
    }
    return true;
  }

  // Reads what is available (waiting until `deadline` for something); false when nothing
  // more can come before the deadline (timeout, or both streams closed).
  bool pump(std::chrono::steady_clock::time_point deadline) {
    pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
    if (out_fd_ < 0 && err_fd_ < 0) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    int ready = ::poll(fds, 2, static_cast<int>(std::max<long long>(0, left.count())));
    if (ready < 0 && errno == EINTR) return true;
    if (ready <= 0) return false;
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        (i == 0 ? out_ : err_).append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        (i == 0 ? out_fd_ : err_fd_) = -1;
      }
    }
    return true;
  }

  bool try_reap() {
    if (reaped_) return true;
    if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
      reaped_ = true;
      exit_time_ = std::chrono::steady_clock::now();
    }
    return reaped_;
  }

  void kill_and_reap() {
    if (try_reap()) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 300 && !try_reap(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status_, 0);
      reaped_ = true;
      exit_time_ = std::chrono::steady_clock::now();
    }
  }

  void close_pipes() {
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
    out_fd_ = err_fd_ = -1;
  }

  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  std::string out_, err_;
  bool reaped_ = false;
  int status_ = 0;
  std::chrono::steady_clock::time_point start_, exit_time_;
};

// Runs `argv` to completion (at most `timeout`) and returns its exit code and output.
inline RunResult run_capture(std::vector<std::string> argv,
                             std::chrono::milliseconds timeout = std::chrono::milliseconds(5000),
                             const std::string &stdin_text = "") {
  CapturedProcess p(std::move(argv), stdin_text);
  return p.finish(timeout);
}

// A real nats-server on a free loopback port (or a given one, to restart on the same port).
class NatsServer {
public:
  explicit NatsServer(int port = 0, std::vector<std::string> extra_args = {})
      : port_(port ? port : free_port()), extra_(std::move(extra_args)) {
    start();
  }
  void start() {
    std::vector<std::string> argv = {"nats-server", "-a", "127.0.0.1", "-p", std::to_string(port_)};
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    proc_.reset(new Process(argv, "", true, "/dev/null"));
    if (!wait_for_port(port_)) throw std::runtime_error("nats-server did not start on port " + std::to_string(port_));
  }
  void kill() { proc_.reset(); }
  int port() const { return port_; }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

private:
  int port_;
  std::vector<std::string> extra_;
  std::unique_ptr<Process> proc_;
};

inline std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes `content` to a new temporary file and returns its path.
inline std::string temp_file(const std::string &content, const std::string &suffix = "") {
  std::string path = "/tmp/wrpc-http-test-XXXXXX" + suffix;
  int fd = ::mkstemps(&path[0], static_cast<int>(suffix.size()));
  if (fd < 0) throw std::runtime_error("mkstemps failed");
  ssize_t ignored = ::write(fd, content.data(), content.size());
  (void)ignored;
  ::close(fd);
  return path;
}

// A TCP connection to a loopback port; throws when it cannot connect.
inline int connect_loopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  auto addr = loopback_address(port);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot connect to port " + std::to_string(port));
  }
  return fd;
}

// What came back for raw request bytes: everything the server sent, and whether it closed
// the connection (false: it was still open after a complete response, or at the timeout).
struct RawReply {
  std::string bytes;
  bool closed = false;
};

// Whether `bytes` hold one whole HTTP response (framed by Content-Length or chunked).
inline bool response_complete(const std::string &bytes) {
  auto head_end = bytes.find("\r\n\r\n");
  if (head_end == std::string::npos) return false;
  std::string head = bytes.substr(0, head_end + 2);
  for (auto &c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (head.find("\r\ntransfer-encoding: chunked\r\n") != std::string::npos)
    return bytes.size() >= 5 && bytes.compare(bytes.size() - 5, 5, "0\r\n\r\n") == 0;
  auto at = head.find("\r\ncontent-length: ");
  if (at == std::string::npos) return false;  // framed by the close
  return bytes.size() - (head_end + 4) >= std::stoull(head.substr(at + 18));
}

// Sends `request` on the open connection `fd` (kept open: keep-alive) and reads until one whole
// response came, the server closed the connection, or `timeout` passed.
// Writes all of `bytes` to a blocking socket; false once the peer closed or reset it.
inline bool send_all(int fd, const std::string &bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

inline RawReply exchange_on(int fd, const std::string &request,
                            std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
  RawReply reply;
  send_all(fd, request);  // a server that closed early: what it sent before is still readable
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[65536];
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd pfd{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      reply.closed = true;
      break;
    }
    reply.bytes.append(buf, static_cast<size_t>(n));
    if (response_complete(reply.bytes)) break;
  }
  return reply;
}

// Sends `request` on a fresh connection and reads until one whole response came, the server
// closes the connection, or `timeout` passes. A server that refuses part way (and resets the
// connection) counts as closed.
inline RawReply send_raw(int port, const std::string &request,
                         std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
  int fd = connect_loopback(port);
  auto reply = exchange_on(fd, request, timeout);
  ::close(fd);
  return reply;
}

// A field of /proc/PID/status in KiB ("VmRSS", "VmHWM"); -1 when the process is gone.
inline long proc_status_kib(pid_t pid, const std::string &field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.compare(0, field.size() + 1, field + ":") == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}

// The number of threads of a running process (Linux /proc).
inline int thread_count(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.compare(0, 8, "Threads:") == 0) return std::stoi(line.substr(8));
  return -1;
}

// A new temporary directory, removed with everything in it when destroyed.
class TempDir {
public:
  TempDir() {
    std::string pattern = "/tmp/wrpc-http-test-XXXXXX";
    if (!::mkdtemp(&pattern[0])) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string &path() const { return path_; }
  std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

// Polls `pred` until it holds or `timeout` passes; returns its last value.
template <class Pred> bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

// Path of a built binary: tests run from the repo root (make test).
// `make test-asan` builds into build/asan and says so in WRPC_HTTP_BUILD.
inline std::string build_path(const std::string &name) {
  const char *dir = std::getenv("WRPC_HTTP_BUILD");
  return std::string(dir && *dir ? dir : "build") + "/" + name;
}

// A nats-server started from a config file, on fixed ports so that it can be restarted in
// place. `monitor_port` serves /routez and /leafz (readiness of routes and leaf nodes).
class ConfiguredNatsServer {
public:
  ConfiguredNatsServer(std::string config_path, int port, int monitor_port)
      : config_(std::move(config_path)), port_(port), monitor_port_(monitor_port) {
    start();
  }
  void start() {
    proc_.reset(new Process({"nats-server", "-c", config_}, "", true, "/dev/null"));
    if (!wait_for_port(port_)) throw std::runtime_error("nats-server did not start on port " + std::to_string(port_));
  }
  // A crash: SIGKILL, no goodbye to clients or routes.
  void kill() {
    if (!proc_) return;
    proc_->signal(SIGKILL);
    proc_->wait(std::chrono::milliseconds(3000));
    proc_.reset();
  }
  bool running() { return proc_ && proc_->running(); }
  pid_t pid() const { return proc_ ? proc_->pid() : -1; }
  int port() const { return port_; }
  int monitor_port() const { return monitor_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string url() const { return "nats://" + address(); }

private:
  std::string config_;
  int port_, monitor_port_;
  std::unique_ptr<Process> proc_;
};

// Listen, monitoring and lame duck lines shared by every node's config.
inline std::string nats_node_config(const std::string &name, int port, int monitor_port) {
  return "server_name: " + name + "\nlisten: 127.0.0.1:" + std::to_string(port) +
         "\nhttp: 127.0.0.1:" + std::to_string(monitor_port) +
         // The shortest lame duck duration nats-server accepts; clients are evicted after the grace period.
         "\nlame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"\n";
}

// Three nats-server nodes on loopback, each with routes to the other two (a full mesh).
// `extra_config` is added to every node (e.g. an authorization block).
class NatsCluster {
public:
  explicit NatsCluster(const std::string &extra_config = "") {
    std::vector<int> route_ports;
    for (int i = 0; i < 3; ++i) route_ports.push_back(free_port());
    for (int i = 0; i < 3; ++i) {
      std::string routes;
      for (int j = 0; j < 3; ++j)
        if (j != i) routes += (routes.empty() ? "" : ", ") + std::string("nats-route://127.0.0.1:") + std::to_string(route_ports[j]);
      int port = free_port(), monitor = free_port();
      std::string name(1, static_cast<char>('A' + i));
      std::string config = nats_node_config(name, port, monitor) + extra_config + "\ncluster {\n  name: wrpc-test\n" +
                           "  listen: 127.0.0.1:" + std::to_string(route_ports[i]) + "\n  routes: [" + routes + "]\n}\n";
      std::string path = dir_.file(name + ".conf");
      std::ofstream(path) << config;
      nodes_.push_back(std::make_unique<ConfiguredNatsServer>(path, port, monitor));
    }
    for (int i = 0; i < 3; ++i)
      if (!wait_until_routed(i)) throw std::runtime_error("the NATS cluster did not form");
  }
  ConfiguredNatsServer &node(int i) { return *nodes_.at(static_cast<size_t>(i)); }
  // Waits until node `i` has routes to both others (after a start or restart).
  bool wait_until_routed(int i, std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
    return wait_for_monitor(node(i).monitor_port(), "/routez", "\"num_routes\": 2", timeout);
  }

  // True once GET `path` of the monitoring port contains `text`.
  static bool wait_for_monitor(int monitor_port, const std::string &path, const std::string &text,
                               std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (http_get(monitor_port, path).find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

private:
  static std::string http_get(int port, const std::string &path) {
    try {
      return send_raw(port, "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").bytes;
    } catch (const std::runtime_error &) {
      return "";  // not listening (yet)
    }
  }
  TempDir dir_;
  std::vector<std::unique_ptr<ConfiguredNatsServer>> nodes_;
};

// A hub and two leaf nodes connected to it (leaf 0 and leaf 1), on loopback.
class NatsLeafNodes {
public:
  NatsLeafNodes() {
    int leaf_listen = free_port();
    int port = free_port(), monitor = free_port();
    std::string hub_path = dir_.file("hub.conf");
    std::ofstream(hub_path) << nats_node_config("hub", port, monitor) << "leafnodes { listen: 127.0.0.1:"
                            << leaf_listen << " }\n";
    hub_ = std::make_unique<ConfiguredNatsServer>(hub_path, port, monitor);
    for (int i = 0; i < 2; ++i) {
      int leaf_port = free_port(), leaf_monitor = free_port();
      std::string name = "leaf" + std::to_string(i);
      std::string path = dir_.file(name + ".conf");
      std::ofstream(path) << nats_node_config(name, leaf_port, leaf_monitor)
                          << "leafnodes { remotes: [ { url: \"nats-leaf://127.0.0.1:" << leaf_listen << "\" } ] }\n";
      leaves_.push_back(std::make_unique<ConfiguredNatsServer>(path, leaf_port, leaf_monitor));
    }
    if (!wait_until_leaves_connected()) throw std::runtime_error("the leaf nodes did not connect to the hub");
  }
  ConfiguredNatsServer &hub() { return *hub_; }
  ConfiguredNatsServer &leaf(int i) { return *leaves_.at(static_cast<size_t>(i)); }
  bool wait_until_leaves_connected(std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
    return NatsCluster::wait_for_monitor(hub_->monitor_port(), "/leafz", "\"leafnodes\": 2", timeout);
  }

private:
  TempDir dir_;
  std::unique_ptr<ConfiguredNatsServer> hub_;
  std::vector<std::unique_ptr<ConfiguredNatsServer>> leaves_;
};

}  // namespace testsupport
