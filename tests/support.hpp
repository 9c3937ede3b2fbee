// Test support: real processes (nats-server, our binaries) on free loopback ports.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace testsupport {

// Asks the kernel for a port that is free right now.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

inline bool port_open(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
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
      std::vector<char *> args;
      for (auto &a : argv) args.push_back(const_cast<char *>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      ::_exit(127);
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

// Path of a built binary: tests run from the repo root (make test).
inline std::string build_path(const std::string &name) { return "build/" + name; }

}  // namespace testsupport
