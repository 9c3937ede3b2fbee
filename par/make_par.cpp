// make_par: builds and verifies wasmCloud provider archives (.par.gz).
//
// `wash build` refuses C++ providers, so this tool does what `wash par create
// --compress` does, with the same file layout, claims and key files:
//
//   FILE.par.gz = gzip( tar( claims.jwt, <arch>.bin ) )
//
// claims.jwt is a wascap JWT signed by an account key (issuer, "A...") for a
// service key (subject, "V..."). Its `wascap.target_hashes` maps each target
// (the entry name without ".bin") to the upper-case hex SHA-256 of the raw
// binary; the host recomputes these on load. (Facts from wasmCloud's
// crates/wascap/src/jwt.rs and crates/provider-archive/src/archive.rs.)
//
// Keys are stored like wash stores them, so both tools can share a folder:
//   <keys-dir>/<account>_account.nk   account = $USER, else "user"
//   <keys-dir>/<binary name>_service.nk
// Each file holds one seed; it is created with mode 0600 and never printed.
//
// Build (from the repository root):
//   g++ -std=c++17 -DWRPC_HTTP_OPENSSL_SUPPORT -I. par/make_par.cpp -lssl -lcrypto -lz -o build/make_par
// (zlib: Debian package zlib1g-dev; nlohmann/json: nlohmann-json3-dev.)

#ifndef WRPC_HTTP_OPENSSL_SUPPORT
#error "build with -DWRPC_HTTP_OPENSSL_SUPPORT (the Makefile does)"
#endif
#include "../wrpc_http_provider.hpp"

#include <nlohmann/json.hpp>
#include <openssl/sha.h>
#include <zlib.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace nkeys = wrpc_http::detail::nkeys;
namespace fs = std::filesystem;
using json = nlohmann::ordered_json; // keeps wascap's field order

namespace {

const char *const claims_entry_name = "claims.jwt";
const char *const binary_suffix = ".bin";
// wascap's WASCAP_INTERNAL_REVISION: hosts verify hashes from revision 3 on.
constexpr int wascap_revision = 3;

[[noreturn]] void fail(const std::string &message) {
  throw std::runtime_error(message);
}

bool ends_with(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string env_or(const char *name, const std::string &fallback) {
  const char *value = std::getenv(name);
  return value && *value ? value : fallback;
}

std::string read_file(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) { fail("cannot read " + path.string()); }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string sha256_upper_hex(const std::string &bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char *>(bytes.data()), bytes.size(), digest);
  static const char hex[] = "0123456789ABCDEF";
  std::string out;
  for (auto b : digest) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

// A 22-character base62 id, the shape of the NUID wascap puts in `jti`.
std::string new_token_id() {
  static const char alphabet[] =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::string id;
  // Rejection sampling keeps the 62 letters equally likely.
  while (id.size() < 22) {
    for (unsigned char b : nkeys::random_bytes(32)) {
      if (b < 248 && id.size() < 22) { id += alphabet[b % 62]; }
    }
  }
  return id;
}

// The target wash would pick on this machine: <arch>-linux.
std::string host_target() {
  struct utsname name {};
  if (uname(&name) != 0) { fail("uname failed"); }
  return std::string(name.machine) + "-linux";
}

// ---- keys -------------------------------------------------------------------

// Loads <dir>/<key_name>.nk, or creates it with a new key of `type` (mode
// 0600, never overwriting: O_EXCL). Returns the key pair.
nkeys::key_pair load_or_create_key(const fs::path &dir, const std::string &key_name,
                                   nkeys::key_type type) {
  auto path = dir / (key_name + ".nk");
  nkeys::key_pair pair;
  if (fs::exists(path)) {
    pair.seed = read_file(path);
    // wash writes the bare seed; tolerate a trailing newline from an editor.
    while (!pair.seed.empty() && std::isspace(static_cast<unsigned char>(pair.seed.back()))) {
      pair.seed.pop_back();
    }
    if (nkeys::decode_seed(pair.seed).type != type) {
      fail(path.string() + " holds a seed of the wrong key type");
    }
    pair.public_key = nkeys::public_key_from_seed(pair.seed);
    return pair;
  }

  if (!fs::exists(dir)) {
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_all); // 0700: the folder holds secrets
  }
  pair = nkeys::create_key_pair(type);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) { fail("cannot create " + path.string() + ": " + std::strerror(errno)); }
  auto written = ::write(fd, pair.seed.data(), pair.seed.size());
  auto closed = ::close(fd);
  if (written != static_cast<ssize_t>(pair.seed.size()) || closed != 0) {
    fail("cannot write " + path.string());
  }
  std::cerr << "make_par: generated " << path.string() << " (public key "
            << pair.public_key << ")\n";
  return pair;
}

// ---- tar (POSIX ustar) --------------------------------------------------------

constexpr std::size_t tar_block = 512;

struct tar_entry {
  std::string name;
  std::string contents;
};

void put_octal(char *field, std::size_t width, unsigned long long value) {
  // width - 1 digits, zero-padded, then NUL.
  std::snprintf(field, width, "%0*llo", static_cast<int>(width - 1), value);
}

std::string tar_header(const std::string &name, std::size_t size, unsigned mode,
                       std::time_t mtime) {
  if (name.size() >= 100) { fail("tar entry name too long: " + name); }
  std::string header(tar_block, '\0');
  char *h = &header[0];
  std::memcpy(h, name.data(), name.size());
  put_octal(h + 100, 8, mode);
  put_octal(h + 108, 8, 0);  // uid
  put_octal(h + 116, 8, 0);  // gid
  put_octal(h + 124, 12, size);
  put_octal(h + 136, 12, static_cast<unsigned long long>(mtime));
  h[156] = '0';               // regular file
  std::memcpy(h + 257, "ustar", 6);
  std::memcpy(h + 263, "00", 2);
  // The checksum is computed with its own field filled with spaces.
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : header) { sum += c; }
  std::snprintf(h + 148, 8, "%06o", sum); // 6 digits, NUL, then the space left above
  return header;
}

std::string tar_archive(const std::vector<tar_entry> &entries, std::time_t mtime) {
  std::string tar;
  for (const auto &e : entries) {
    auto mode = ends_with(e.name, binary_suffix) ? 0755u : 0644u;
    tar += tar_header(e.name, e.contents.size(), mode, mtime);
    tar += e.contents;
    tar.append((tar_block - e.contents.size() % tar_block) % tar_block, '\0');
  }
  tar.append(2 * tar_block, '\0'); // end-of-archive marker
  return tar;
}

std::vector<tar_entry> parse_tar(const std::string &tar) {
  std::vector<tar_entry> entries;
  std::size_t pos = 0;
  while (pos + tar_block <= tar.size()) {
    const char *h = tar.data() + pos;
    if (h[0] == '\0') { break; } // end-of-archive marker
    std::string name(h, strnlen(h, 100));
    std::string prefix(h + 345, strnlen(h + 345, 155));
    if (!prefix.empty()) { name = prefix + "/" + name; }
    auto size = std::strtoull(std::string(h + 124, 12).c_str(), nullptr, 8);
    pos += tar_block;
    if (pos + size > tar.size()) { fail("archive is truncated at " + name); }
    char type = h[156];
    if (type == '0' || type == '\0') { entries.push_back({name, tar.substr(pos, size)}); }
    pos += (size + tar_block - 1) / tar_block * tar_block;
  }
  return entries;
}

// ---- gzip -----------------------------------------------------------------------

struct gz_closer {
  void operator()(gzFile_s *file) const { gzclose(file); }
};
using gz_file = std::unique_ptr<gzFile_s, gz_closer>;

// Writes to a temporary name first so a failed run never leaves a half
// archive where wadm.yaml expects a good one.
void write_gzip(const fs::path &path, const std::string &bytes) {
  auto temporary = path.string() + ".tmp";
  {
    gz_file out(gzopen(temporary.c_str(), "wb9"));
    if (!out) { fail("cannot create " + temporary); }
    if (gzwrite(out.get(), bytes.data(), static_cast<unsigned>(bytes.size())) !=
        static_cast<int>(bytes.size())) {
      fail("cannot write " + temporary);
    }
    if (gzclose(out.release()) != Z_OK) { fail("cannot finish " + temporary); }
  }
  fs::rename(temporary, path);
}

// Reads gzip'd or plain files alike (zlib passes plain data through), as the
// host accepts both .par and .par.gz.
std::string read_gzip(const fs::path &path) {
  gz_file in(gzopen(path.c_str(), "rb"));
  if (!in) { fail("cannot read " + path.string()); }
  std::string out;
  char buffer[1 << 16];
  int n;
  while ((n = gzread(in.get(), buffer, sizeof buffer)) > 0) { out.append(buffer, n); }
  if (n < 0) { fail(path.string() + " is not a valid gzip file"); }
  return out;
}

// wascap stores `rev` as an i32.
int parse_revision(const std::string &text) {
  std::size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception &) {
    used = 0;
  }
  if (used == 0 || used != text.size()) { fail("--rev must be an integer: " + text); }
  return value;
}

// ---- create / verify ----------------------------------------------------------

struct create_options {
  std::string binary;
  std::string target;
  std::string name;
  std::string vendor;
  std::string version;  // optional
  std::string revision; // optional, an integer
  std::string keys_dir;
  std::string account;
  std::string output;
};

void create_archive(const create_options &opt) {
  auto binary = read_file(opt.binary);
  auto issuer = load_or_create_key(opt.keys_dir, opt.account + "_account",
                                   nkeys::key_type::account);
  auto subject = load_or_create_key(
      opt.keys_dir, fs::path(opt.binary).stem().string() + "_service",
      nkeys::key_type::service);

  json provider;
  provider["name"] = opt.name;
  provider["vendor"] = opt.vendor;
  if (!opt.revision.empty()) { provider["rev"] = parse_revision(opt.revision); }
  if (!opt.version.empty()) { provider["ver"] = opt.version; }
  provider["target_hashes"] = json::object({{opt.target, sha256_upper_hex(binary)}});

  auto now = std::time(nullptr);
  json claims;
  claims["jti"] = new_token_id();
  claims["iat"] = static_cast<long long>(now);
  claims["iss"] = issuer.public_key;
  claims["sub"] = subject.public_key;
  claims["wascap"] = provider;
  claims["wascap_revision"] = wascap_revision;

  auto jwt = nkeys::encode_jwt(claims.dump(), issuer.seed);
  nkeys::wipe(issuer.seed);
  nkeys::wipe(subject.seed);

  write_gzip(opt.output, tar_archive({{claims_entry_name, jwt},
                                      {opt.target + binary_suffix, binary}},
                                     now));
  std::cout << "make_par: wrote " << opt.output << " (issuer " << issuer.public_key
            << ", subject " << subject.public_key << ")\n";
}

// Checks what the host checks on load, and a little more: the signature by
// the issuer, the key types, and that hashes and binaries match one to one.
void verify_archive(const std::string &path) {
  std::string jwt;
  std::map<std::string, std::string> binaries; // target -> bytes
  for (auto &entry : parse_tar(read_gzip(path))) {
    if (entry.name == claims_entry_name) {
      jwt = std::move(entry.contents);
    } else if (ends_with(entry.name, binary_suffix)) {
      binaries[entry.name.substr(0, entry.name.size() - std::strlen(binary_suffix))] =
          std::move(entry.contents);
    } else {
      fail("unexpected archive entry " + entry.name);
    }
  }
  if (jwt.empty()) { fail("archive has no claims.jwt"); }
  if (binaries.empty()) { fail("archive has no <target>.bin"); }

  auto parts = nkeys::decode_jwt(jwt);
  auto header = json::parse(parts.header_json);
  if (header.value("typ", "") != "jwt" || header.value("alg", "") != "Ed25519") {
    fail("claims.jwt header is not the wascap header");
  }
  auto claims = json::parse(parts.claims_json);
  auto issuer = claims.at("iss").get<std::string>();
  auto subject = claims.at("sub").get<std::string>();
  if (nkeys::public_key_type(issuer) != nkeys::key_type::account) {
    fail("issuer is not an account (A) key");
  }
  if (nkeys::public_key_type(subject) != nkeys::key_type::service) {
    fail("subject is not a service (V) key");
  }
  nkeys::verify_jwt(jwt, issuer);

  const auto &provider = claims.at("wascap");
  const auto &hashes = provider.at("target_hashes");
  if (hashes.size() != binaries.size()) { fail("target_hashes and binaries differ in number"); }
  for (const auto &[target, bytes] : binaries) {
    if (!hashes.contains(target)) { fail("no target hash for " + target); }
    if (hashes.at(target).get<std::string>() != sha256_upper_hex(bytes)) {
      fail("hash mismatch for " + target + binary_suffix);
    }
  }

  std::cout << "name: " << provider.at("name").get<std::string>() << "\n"
            << "vendor: " << provider.at("vendor").get<std::string>() << "\n"
            << "issuer: " << issuer << "\n"
            << "subject: " << subject << "\n";
  for (const auto &entry : binaries) { std::cout << "target: " << entry.first << "\n"; }
  std::cout << "make_par: " << path << " verified\n";
}

const char *const usage =
    "usage: make_par --bin PATH --name NAME --vendor VENDOR --out FILE.par.gz\n"
    "                [--arch TARGET] [--version VER] [--rev N] [--keys-dir DIR]\n"
    "                [--account NAME]\n"
    "       make_par --verify FILE.par.gz\n"
    "defaults (as wash): --arch <machine>-linux, --keys-dir $WASH_KEYS or\n"
    "$HOME/.wash/keys, --account $USER or \"user\"\n";

} // namespace

int main(int argc, char **argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; i += 2) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0 || i + 1 >= argc) {
      std::cerr << usage;
      return 2;
    }
    args[flag.substr(2)] = argv[i + 1];
  }
  auto take = [&args](const std::string &key, const std::string &fallback = "") {
    auto it = args.find(key);
    if (it == args.end()) { return fallback; }
    auto value = it->second;
    args.erase(it);
    return value;
  };

  try {
    if (args.count("verify")) {
      auto path = take("verify");
      if (!args.empty()) {
        std::cerr << usage;
        return 2;
      }
      verify_archive(path);
      return 0;
    }
    create_options opt;
    opt.binary = take("bin");
    opt.name = take("name");
    opt.vendor = take("vendor");
    opt.output = take("out");
    opt.target = take("arch", host_target());
    opt.version = take("version");
    opt.revision = take("rev");
    opt.keys_dir = take("keys-dir", env_or("WASH_KEYS", env_or("HOME", ".") + "/.wash/keys"));
    opt.account = take("account", env_or("USER", "user"));
    if (!args.empty() || opt.binary.empty() || opt.name.empty() || opt.vendor.empty() ||
        opt.output.empty()) {
      std::cerr << usage;
      return 2;
    }
    create_archive(opt);
    return 0;
  } catch (const std::exception &e) {
    std::cerr << "make_par: " << e.what() << "\n";
    return 1;
  }
}
