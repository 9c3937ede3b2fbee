// ---- nkeys: NATS keys, signatures, JWTs (OpenSSL) ----
//
// NATS "nkeys" are ed25519 (or, for xkeys, curve25519) keys written as
// base32 text with a one-byte type prefix and a CRC16 trailer:
//   public key: base32( prefix | 32 raw bytes | crc16 little-endian )
//   seed:       base32( seed-prefix+type spread over 2 bytes | 32 raw bytes | crc16 )
// The prefix bytes follow nats-io/nkeys (strkey.go) plus the `V` service
// prefix of wasmCloud's Rust nkeys crate.
//
// Byte buffers are std::string (as in cpp-httplib): they travel straight into
// JSON, NATS payloads and files without conversions.
//
// Errors are std::runtime_error. Their messages never quote the input key:
// a caller may pass a seed where a public key is expected, and a seed must
// never reach a log.

#ifdef WRPC_HTTP_OPENSSL_SUPPORT

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#ifdef WRPC_HTTP_SODIUM_SUPPORT
#include <sodium.h>
#endif

namespace wrpc_http {
namespace detail {
namespace nkeys {

// ---- text encodings -------------------------------------------------------

inline std::string base32_encode(const std::string &bytes) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  std::string out;
  out.reserve((bytes.size() * 8 + 4) / 5);
  unsigned int buffer = 0;
  int bits = 0;
  for (unsigned char c : bytes) {
    buffer = (buffer << 8) | c;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += alphabet[(buffer >> bits) & 0x1f];
    }
  }
  if (bits > 0) { out += alphabet[(buffer << (5 - bits)) & 0x1f]; }
  return out;
}

inline std::string base32_decode(const std::string &text) {
  std::string out;
  out.reserve(text.size() * 5 / 8);
  unsigned int buffer = 0;
  int bits = 0;
  for (char c : text) {
    unsigned int value;
    if (c >= 'A' && c <= 'Z') {
      value = static_cast<unsigned int>(c - 'A');
    } else if (c >= '2' && c <= '7') {
      value = static_cast<unsigned int>(c - '2') + 26;
    } else {
      throw std::runtime_error("base32: invalid character");
    }
    buffer = (buffer << 5) | value;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xff);
    }
  }
  // A well-formed unpadded encoding leaves fewer than 5 unused bits; a whole
  // extra character means the text was truncated.
  if (bits >= 5) { throw std::runtime_error("base32: truncated input"); }
  return out;
}

// CRC-16/XMODEM (poly 0x1021, init 0), the checksum nkeys appends.
inline std::uint16_t crc16(const std::string &bytes) {
  std::uint16_t crc = 0;
  for (unsigned char c : bytes) {
    crc = static_cast<std::uint16_t>(crc ^ (c << 8));
    for (int i = 0; i < 8; i++) {
      crc = static_cast<std::uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021
                                                       : (crc << 1));
    }
  }
  return crc;
}

// ---- key encoding ---------------------------------------------------------

// The value of each enumerator is its nkeys prefix byte (a multiple of 8, so
// the first base32 character of the key is the letter in the comment).
enum class key_type : unsigned char {
  account = 0,         // A
  server = 13 << 3,    // N (also used for wasmCloud host ids)
  operator_ = 14 << 3, // O
  user = 20 << 3,      // U
  service = 21 << 3,   // V (wasmCloud capability providers)
  curve = 23 << 3,     // X (curve25519 "xkeys": encryption, not signing)
};

constexpr unsigned char seed_prefix_byte = 18 << 3; // S
constexpr std::size_t raw_key_size = 32;

inline bool is_known_key_type(unsigned char prefix) {
  switch (static_cast<key_type>(prefix)) {
  case key_type::account:
  case key_type::server:
  case key_type::operator_:
  case key_type::user:
  case key_type::service:
  case key_type::curve: return true;
  }
  return false;
}

inline std::string random_bytes(std::size_t count) {
  std::string out(count, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char *>(&out[0]),
                 static_cast<int>(count)) != 1) {
    throw std::runtime_error("nkeys: the OpenSSL random generator failed");
  }
  return out;
}

// Overwrites secret bytes before the memory is released.
inline void wipe(std::string &secret) {
  if (!secret.empty()) { OPENSSL_cleanse(&secret[0], secret.size()); }
  secret.clear();
}

inline std::string append_crc_and_encode(std::string raw) {
  auto crc = crc16(raw);
  raw += static_cast<char>(crc & 0xff); // little-endian, as nkeys writes it
  raw += static_cast<char>(crc >> 8);
  auto text = base32_encode(raw);
  wipe(raw);
  return text;
}

// Decodes the base32 text and returns it without the checked CRC trailer.
inline std::string decode_and_check_crc(const std::string &text,
                                        const char *what) {
  std::string raw;
  try {
    raw = base32_decode(text);
  } catch (const std::runtime_error &) {
    throw std::runtime_error(std::string("nkeys: ") + what +
                             " is not valid base32");
  }
  if (raw.size() != raw_key_size + 3 && raw.size() != raw_key_size + 4) {
    wipe(raw);
    throw std::runtime_error(std::string("nkeys: ") + what +
                             " has the wrong length");
  }
  auto body = raw.substr(0, raw.size() - 2);
  auto expected = static_cast<std::uint16_t>(
      static_cast<unsigned char>(raw[raw.size() - 2]) |
      (static_cast<unsigned char>(raw[raw.size() - 1]) << 8));
  wipe(raw);
  if (crc16(body) != expected) {
    wipe(body);
    throw std::runtime_error(std::string("nkeys: ") + what +
                             " has a bad checksum");
  }
  return body;
}

inline std::string encode_public_key(key_type type, const std::string &raw) {
  if (raw.size() != raw_key_size) {
    throw std::runtime_error("nkeys: a public key must be 32 bytes");
  }
  return append_crc_and_encode(static_cast<char>(type) + raw);
}

// Returns the raw 32 bytes of an encoded public key of the expected type.
inline std::string decode_public_key(const std::string &public_key,
                                     key_type expected) {
  auto body = decode_and_check_crc(public_key, "public key");
  if (body.size() != 1 + raw_key_size ||
      static_cast<unsigned char>(body[0]) != static_cast<unsigned char>(expected)) {
    throw std::runtime_error("nkeys: public key is not of the expected type");
  }
  return body.substr(1);
}

// The type of an encoded public key, after checking its CRC.
inline key_type public_key_type(const std::string &public_key) {
  auto body = decode_and_check_crc(public_key, "public key");
  auto prefix = static_cast<unsigned char>(body[0]);
  if (body.size() != 1 + raw_key_size || !is_known_key_type(prefix)) {
    throw std::runtime_error("nkeys: not a public key of a known type");
  }
  return static_cast<key_type>(prefix);
}

// The seed prefix (5 bits) and the key type (a multiple of 8, so its low 3
// bits are free) are packed into two bytes so that both letters of "SA",
// "SU", "SV"... are readable in the base32 text.
inline std::string encode_seed(key_type type, const std::string &raw_seed) {
  if (raw_seed.size() != raw_key_size) {
    throw std::runtime_error("nkeys: a seed must be 32 bytes");
  }
  auto type_byte = static_cast<unsigned char>(type);
  std::string raw;
  raw += static_cast<char>(seed_prefix_byte | (type_byte >> 5));
  raw += static_cast<char>((type_byte & 31) << 3);
  raw += raw_seed;
  return append_crc_and_encode(std::move(raw));
}

// A decoded seed. The raw bytes are wiped when it goes out of scope.
struct decoded_seed {
  key_type type = key_type::user;
  std::string raw; // 32 bytes: ed25519 private key or curve25519 scalar

  decoded_seed() = default;
  decoded_seed(const decoded_seed &) = default;
  decoded_seed &operator=(const decoded_seed &) = default;
  ~decoded_seed() { wipe(raw); }
};

inline decoded_seed decode_seed(const std::string &seed) {
  auto body = decode_and_check_crc(seed, "seed");
  if (body.size() != 2 + raw_key_size) {
    wipe(body);
    throw std::runtime_error("nkeys: seed has the wrong length");
  }
  auto b0 = static_cast<unsigned char>(body[0]);
  auto b1 = static_cast<unsigned char>(body[1]);
  auto type_byte = static_cast<unsigned char>(((b0 & 7) << 5) | ((b1 & 248) >> 3));
  if ((b0 & 248) != seed_prefix_byte || !is_known_key_type(type_byte)) {
    wipe(body);
    throw std::runtime_error("nkeys: not a seed of a known type");
  }
  decoded_seed out;
  out.type = static_cast<key_type>(type_byte);
  out.raw = body.substr(2);
  wipe(body);
  return out;
}

// ---- OpenSSL glue ---------------------------------------------------------

struct evp_pkey_deleter {
  void operator()(EVP_PKEY *key) const { EVP_PKEY_free(key); }
};
struct evp_md_ctx_deleter {
  void operator()(EVP_MD_CTX *ctx) const { EVP_MD_CTX_free(ctx); }
};
using evp_pkey_ptr = std::unique_ptr<EVP_PKEY, evp_pkey_deleter>;
using evp_md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, evp_md_ctx_deleter>;

inline evp_pkey_ptr private_key_from_seed(const decoded_seed &seed) {
  auto algorithm = seed.type == key_type::curve ? EVP_PKEY_X25519 : EVP_PKEY_ED25519;
  evp_pkey_ptr key(EVP_PKEY_new_raw_private_key(
      algorithm, nullptr,
      reinterpret_cast<const unsigned char *>(seed.raw.data()), seed.raw.size()));
  if (!key) { throw std::runtime_error("nkeys: OpenSSL rejected the seed"); }
  return key;
}

inline std::string raw_public_key(const decoded_seed &seed) {
  auto key = private_key_from_seed(seed);
  std::string raw(raw_key_size, '\0');
  auto size = raw.size();
  if (EVP_PKEY_get_raw_public_key(
          key.get(), reinterpret_cast<unsigned char *>(&raw[0]), &size) != 1 ||
      size != raw_key_size) {
    throw std::runtime_error("nkeys: could not derive the public key");
  }
  return raw;
}

// ---- keys and signatures --------------------------------------------------

// ed25519 public key for A/N/O/U/V seeds; X25519 base-point multiple for SX.
inline std::string public_key_from_seed(const std::string &seed) {
  auto decoded = decode_seed(seed);
  return encode_public_key(decoded.type, raw_public_key(decoded));
}

struct key_pair {
  std::string seed; // secret: store with mode 0600, never log
  std::string public_key;
};

inline key_pair create_key_pair(key_type type) {
  auto raw = random_bytes(raw_key_size);
  key_pair pair;
  pair.seed = encode_seed(type, raw);
  wipe(raw);
  pair.public_key = public_key_from_seed(pair.seed);
  return pair;
}

inline decoded_seed decode_signing_seed(const std::string &seed) {
  auto decoded = decode_seed(seed);
  if (decoded.type == key_type::curve) {
    throw std::runtime_error("nkeys: curve (X) keys cannot sign");
  }
  return decoded;
}

// Raw 64-byte ed25519 signature of `message`.
inline std::string sign(const std::string &seed, const std::string &message) {
  auto key = private_key_from_seed(decode_signing_seed(seed));
  evp_md_ctx_ptr ctx(EVP_MD_CTX_new());
  std::string signature(64, '\0');
  auto size = signature.size();
  // ed25519 hashes internally: no digest is given to DigestSignInit.
  if (!ctx ||
      EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char *>(&signature[0]),
                     &size,
                     reinterpret_cast<const unsigned char *>(message.data()),
                     message.size()) != 1 ||
      size != signature.size()) {
    throw std::runtime_error("nkeys: ed25519 signing failed");
  }
  return signature;
}

// Checks a raw ed25519 signature against an encoded public key of any
// signing type (A, N, O, U, V).
inline bool verify(const std::string &public_key, const std::string &message,
                   const std::string &signature) {
  auto type = public_key_type(public_key);
  if (type == key_type::curve) {
    throw std::runtime_error("nkeys: curve (X) keys cannot verify signatures");
  }
  auto raw = decode_public_key(public_key, type);
  evp_pkey_ptr key(EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr,
      reinterpret_cast<const unsigned char *>(raw.data()), raw.size()));
  evp_md_ctx_ptr ctx(EVP_MD_CTX_new());
  if (!key || !ctx ||
      EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    throw std::runtime_error("nkeys: could not set up ed25519 verification");
  }
  return EVP_DigestVerify(
             ctx.get(), reinterpret_cast<const unsigned char *>(signature.data()),
             signature.size(),
             reinterpret_cast<const unsigned char *>(message.data()),
             message.size()) == 1;
}

// The `sig` field of a NATS CONNECT: the server's INFO nonce signed with the
// user seed, base64url without padding (nats.go: base64.RawURLEncoding).
inline std::string sign_nonce(const std::string &user_seed,
                              const std::string &nonce) {
  return base64url_encode(sign(user_seed, nonce));
}

// ---- JWTs -----------------------------------------------------------------

// wascap (wasmCloud claims, e.g. a provider archive's claims.jwt).
constexpr const char *wascap_jwt_header = R"({"typ":"jwt","alg":"Ed25519"})";
// nats-io/jwt v2 (user/account JWTs).
constexpr const char *nats_jwt_header = R"({"typ":"JWT","alg":"ed25519-nkey"})";

// Both formats sign the text "base64url(header).base64url(claims)" with the
// issuer's ed25519 seed. `claims_json` is serialized by the caller.
inline std::string encode_jwt(const std::string &claims_json,
                              const std::string &issuer_seed,
                              const std::string &header_json = wascap_jwt_header) {
  auto signing_input =
      base64url_encode(header_json) + "." + base64url_encode(claims_json);
  return signing_input + "." + base64url_encode(sign(issuer_seed, signing_input));
}

struct jwt_parts {
  std::string header_json;
  std::string claims_json;
  std::string signing_input; // "header.claims" as it appeared in the token
  std::string signature;     // raw bytes
};

// Splits and decodes a JWT WITHOUT checking its signature: use it to read
// the issuer, then call verify_jwt with that issuer's public key.
inline jwt_parts decode_jwt(const std::string &token) {
  auto first = token.find('.');
  auto second = first == std::string::npos ? first : token.find('.', first + 1);
  if (second == std::string::npos || token.find('.', second + 1) != std::string::npos) {
    throw std::runtime_error("jwt: expected three dot-separated parts");
  }
  jwt_parts parts;
  parts.header_json = base64url_decode(token.substr(0, first));
  parts.claims_json = base64url_decode(token.substr(first + 1, second - first - 1));
  parts.signing_input = token.substr(0, second);
  parts.signature = base64url_decode(token.substr(second + 1));
  return parts;
}

// Returns the claims JSON when `issuer_public_key` signed the token; throws
// otherwise. The signature is always checked as ed25519 whatever the header
// says, so a forged "alg" cannot downgrade the check. (Legacy nats v1 tokens,
// alg "ed25519", signed only the claims part and are not accepted.)
inline std::string verify_jwt(const std::string &token,
                              const std::string &issuer_public_key) {
  auto parts = decode_jwt(token);
  if (!verify(issuer_public_key, parts.signing_input, parts.signature)) {
    throw std::runtime_error("jwt: signature does not match the issuer key");
  }
  return parts.claims_json;
}

#ifdef WRPC_HTTP_SODIUM_SUPPORT
// ---- xkeys: curve25519 sealed boxes (nats-io/nkeys xkeys.go) --------------
// Sealed format: "xkv1" | 24-byte nonce | crypto_box (NaCl box: X25519 +
// XSalsa20-Poly1305). wasmCloud hosts seal link secrets for the provider
// with the host's xkey; the provider opens them with its own SX seed.

constexpr const char *xkey_version = "xkv1";
constexpr std::size_t xkey_version_size = 4;

inline decoded_seed decode_curve_seed(const std::string &seed) {
  auto decoded = decode_seed(seed);
  if (decoded.type != key_type::curve) {
    throw std::runtime_error("xkeys: not a curve (SX) seed");
  }
  return decoded;
}

inline void require_sodium() {
  if (sodium_init() < 0) { throw std::runtime_error("xkeys: libsodium init failed"); }
}

inline std::string xkey_seal(const std::string &message,
                             const std::string &recipient_public_xkey,
                             const std::string &sender_seed) {
  require_sodium();
  auto sender = decode_curve_seed(sender_seed);
  auto recipient = decode_public_key(recipient_public_xkey, key_type::curve);
  auto nonce = random_bytes(crypto_box_NONCEBYTES);
  std::string box(crypto_box_MACBYTES + message.size(), '\0');
  if (crypto_box_easy(reinterpret_cast<unsigned char *>(&box[0]),
                      reinterpret_cast<const unsigned char *>(message.data()),
                      message.size(),
                      reinterpret_cast<const unsigned char *>(nonce.data()),
                      reinterpret_cast<const unsigned char *>(recipient.data()),
                      reinterpret_cast<const unsigned char *>(sender.raw.data())) != 0) {
    throw std::runtime_error("xkeys: sealing failed");
  }
  return std::string(xkey_version) + nonce + box;
}

inline std::string xkey_open(const std::string &sealed,
                             const std::string &sender_public_xkey,
                             const std::string &recipient_seed) {
  require_sodium();
  constexpr auto header_size = xkey_version_size + crypto_box_NONCEBYTES;
  if (sealed.size() < header_size + crypto_box_MACBYTES) {
    throw std::runtime_error("xkeys: sealed message is too short");
  }
  if (sealed.compare(0, xkey_version_size, xkey_version) != 0) {
    throw std::runtime_error("xkeys: unknown sealed message version");
  }
  auto recipient = decode_curve_seed(recipient_seed);
  auto sender = decode_public_key(sender_public_xkey, key_type::curve);
  auto box_size = sealed.size() - header_size;
  std::string message(box_size - crypto_box_MACBYTES, '\0');
  auto bytes = reinterpret_cast<const unsigned char *>(sealed.data());
  // message.data() stays valid for an empty message: crypto_box writes 0 bytes.
  if (crypto_box_open_easy(reinterpret_cast<unsigned char *>(&message[0]),
                           bytes + header_size, box_size,
                           bytes + xkey_version_size,
                           reinterpret_cast<const unsigned char *>(sender.data()),
                           reinterpret_cast<const unsigned char *>(recipient.raw.data())) != 0) {
    throw std::runtime_error("xkeys: could not open the sealed message");
  }
  return message;
}
#endif // WRPC_HTTP_SODIUM_SUPPORT

} // namespace nkeys
} // namespace detail
} // namespace wrpc_http

#endif // WRPC_HTTP_OPENSSL_SUPPORT
