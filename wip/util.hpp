// ---- utilities ----

namespace wrpc_http {
namespace detail {

// One base64 codec for both alphabets: they differ only in the last two
// characters and in whether '=' padding is written.
inline std::string base64_encode_with(const std::string &bytes,
                                      const char *alphabet, bool pad) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    auto n = (static_cast<unsigned char>(bytes[i]) << 16) |
             (static_cast<unsigned char>(bytes[i + 1]) << 8) |
             static_cast<unsigned char>(bytes[i + 2]);
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += alphabet[(n >> 6) & 63];
    out += alphabet[n & 63];
  }
  auto rest = bytes.size() - i;
  if (rest > 0) {
    auto n = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) { n |= static_cast<unsigned char>(bytes[i + 1]) << 8; }
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    if (rest == 2) { out += alphabet[(n >> 6) & 63]; }
    if (pad) { out.append(rest == 1 ? 2 : 1, '='); }
  }
  return out;
}

// Accepts input with or without '=' padding: peers differ on this and the
// padding carries no information.
inline std::string base64_decode_with(const std::string &text,
                                      const char *alphabet) {
  std::array<int, 256> value_of;
  value_of.fill(-1);
  for (int i = 0; i < 64; i++) {
    value_of[static_cast<unsigned char>(alphabet[i])] = i;
  }
  auto end = text.size();
  while (end > 0 && text.size() - end < 2 && text[end - 1] == '=') { end--; }
  if (end % 4 == 1) { throw std::runtime_error("base64: truncated input"); }

  std::string out;
  out.reserve(end * 3 / 4);
  unsigned int buffer = 0;
  int bits = 0;
  for (std::size_t i = 0; i < end; i++) {
    auto v = value_of[static_cast<unsigned char>(text[i])];
    if (v < 0) { throw std::runtime_error("base64: invalid character"); }
    buffer = (buffer << 6) | static_cast<unsigned int>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xff);
    }
  }
  return out;
}

constexpr const char *base64_std_alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr const char *base64_url_alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

inline std::string base64_encode(const std::string &bytes) {
  return base64_encode_with(bytes, base64_std_alphabet, true);
}
inline std::string base64_decode(const std::string &text) {
  return base64_decode_with(text, base64_std_alphabet);
}
inline std::string base64url_encode(const std::string &bytes) {
  return base64_encode_with(bytes, base64_url_alphabet, false);
}
inline std::string base64url_decode(const std::string &text) {
  return base64_decode_with(text, base64_url_alphabet);
}

}  // namespace detail
}  // namespace wrpc_http
