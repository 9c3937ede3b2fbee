// ---- wRPC codec ----
//
// Values of wrpc:http/incoming-handler@0.1.0.handle in the component-model value encoding
// that wRPC puts on the wire (LEB128 integers, length-prefixed strings and lists, one-byte
// option/result/bool tags, LEB128 variant discriminants, fields of records in order).
//
// Encoders append to a std::string. Decoders never throw and never read past their input:
// they report ok / need_more / error, because a value arrives split across NATS messages at
// arbitrary byte offsets and a peer may send garbage.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

// Upper bound for one head value (request params, response result, trailers), and for any
// single string or list length declared inside one. A hostile length above it is an error at
// once instead of a wait for bytes that will never come.
#ifndef WRPC_HTTP_MAX_HEAD_BYTES
#define WRPC_HTTP_MAX_HEAD_BYTES (1024 * 1024)
#endif

namespace wrpc_http {

// ---------------------------------------------------------------------------------------
// wasi:http@0.2.0 types as carried by wrpc:http@0.1.0
// ---------------------------------------------------------------------------------------

// Discriminants 0..9 of wasi:http `method`, in order.
enum class MethodKind { get, head, post, put, delete_, connect, options, trace, patch, other };

struct Method {
  MethodKind kind = MethodKind::get;
  std::string other;  // the method text when kind == other
};

// Discriminants 0..2 of wasi:http `scheme`, in order.
enum class SchemeKind { http, https, other };

struct Scheme {
  SchemeKind kind = SchemeKind::http;
  std::string other;  // the scheme text when kind == other
};

// A header or trailer section: each name once, with all of its values in order. Values are
// raw bytes (wire type list<u8>) held in std::string.
using Fields = std::vector<std::pair<std::string, std::vector<std::string>>>;

struct RequestHead {
  Method method;
  std::optional<std::string> path_with_query;
  std::optional<Scheme> scheme;
  std::optional<std::string> authority;
  Fields headers;
};

struct ResponseHead {
  uint16_t status = 200;
  Fields headers;
};

// The 39 cases of wasi:http@0.2.0 `error-code`; the value of each is its wire discriminant.
enum class ErrorCase : uint32_t {
  dns_timeout,
  dns_error,
  destination_not_found,
  destination_unavailable,
  destination_ip_prohibited,
  destination_ip_unroutable,
  connection_refused,
  connection_terminated,
  connection_timeout,
  connection_read_timeout,
  connection_write_timeout,
  connection_limit_reached,
  tls_protocol_error,
  tls_certificate_error,
  tls_alert_received,
  http_request_denied,
  http_request_length_required,
  http_request_body_size,
  http_request_method_invalid,
  http_request_uri_invalid,
  http_request_uri_too_long,
  http_request_header_section_size,
  http_request_header_size,
  http_request_trailer_section_size,
  http_request_trailer_size,
  http_response_incomplete,
  http_response_header_section_size,
  http_response_header_size,
  http_response_body_size,
  http_response_trailer_section_size,
  http_response_trailer_size,
  http_response_transfer_coding,
  http_response_content_coding,
  http_response_timeout,
  http_upgrade_failed,
  http_protocol_error,
  loop_detected,
  configuration_error,
  internal_error,
};

struct DnsErrorPayload {
  std::optional<std::string> rcode;
  std::optional<uint16_t> info_code;
};

struct TlsAlertReceivedPayload {
  std::optional<uint8_t> alert_id;
  std::optional<std::string> alert_message;
};

struct FieldSizePayload {
  std::optional<std::string> field_name;
  std::optional<uint32_t> field_size;
};

// A wasi:http `error-code` value. The payload is kept structured so that every case encodes
// back to exactly the bytes it was decoded from. Only the member that matches the case's
// payload type is meaningful:
//   DNS-error                                     -> dns_error
//   TLS-alert-received                            -> tls_alert
//   HTTP-request-header-size (option<...>), HTTP-request-trailer-size, HTTP-response-header-size,
//   HTTP-response-trailer-size                    -> field_size (for the three non-optional cases
//                                                    an empty field_size encodes as both fields none)
//   HTTP-request/response-body-size (option<u64>), the four *-section-size cases (option<u32>,
//                                                    larger values are clamped) -> size
//   HTTP-response-transfer/content-coding, internal-error (option<string>) -> text
// An index outside 0..38 behaves as internal-error everywhere, so the value stays encodable.
struct ErrorCode {
  uint32_t index = static_cast<uint32_t>(ErrorCase::internal_error);
  DnsErrorPayload dns_error;
  TlsAlertReceivedPayload tls_alert;
  std::optional<FieldSizePayload> field_size;
  std::optional<uint64_t> size;
  std::optional<std::string> text;

  ErrorCode() = default;
  explicit ErrorCode(ErrorCase error_case) : index(static_cast<uint32_t>(error_case)) {}

  static ErrorCode internal_error(std::string message) {
    ErrorCode error(ErrorCase::internal_error);
    error.text = std::move(message);
    return error;
  }

  ErrorCase kind() const;
  const char* name() const;   // the WIT case name, e.g. "internal-error", "HTTP-request-body-size"
  int http_status() const;    // the status a gateway answers with (see the case table)
  std::string message() const;  // name plus the payload parts that are present, for a text body
};

inline bool operator==(const Method& a, const Method& b) {
  return a.kind == b.kind && a.other == b.other;
}
inline bool operator==(const Scheme& a, const Scheme& b) {
  return a.kind == b.kind && a.other == b.other;
}
inline bool operator==(const RequestHead& a, const RequestHead& b) {
  return a.method == b.method && a.path_with_query == b.path_with_query && a.scheme == b.scheme &&
         a.authority == b.authority && a.headers == b.headers;
}
inline bool operator==(const ResponseHead& a, const ResponseHead& b) {
  return a.status == b.status && a.headers == b.headers;
}
inline bool operator==(const DnsErrorPayload& a, const DnsErrorPayload& b) {
  return a.rcode == b.rcode && a.info_code == b.info_code;
}
inline bool operator==(const TlsAlertReceivedPayload& a, const TlsAlertReceivedPayload& b) {
  return a.alert_id == b.alert_id && a.alert_message == b.alert_message;
}
inline bool operator==(const FieldSizePayload& a, const FieldSizePayload& b) {
  return a.field_name == b.field_name && a.field_size == b.field_size;
}
inline bool operator==(const ErrorCode& a, const ErrorCode& b) {
  return a.index == b.index && a.dns_error == b.dns_error && a.tls_alert == b.tls_alert &&
         a.field_size == b.field_size && a.size == b.size && a.text == b.text;
}

namespace detail {

struct MethodName {
  MethodKind kind;
  const char* name;
};

inline constexpr MethodName method_names[] = {
    {MethodKind::get, "GET"},         {MethodKind::head, "HEAD"},
    {MethodKind::post, "POST"},       {MethodKind::put, "PUT"},
    {MethodKind::delete_, "DELETE"},  {MethodKind::connect, "CONNECT"},
    {MethodKind::options, "OPTIONS"}, {MethodKind::trace, "TRACE"},
    {MethodKind::patch, "PATCH"},
};

// The wire type of each error-code case's payload.
enum class ErrorPayload {
  none,
  dns_error,            // DNS-error-payload record
  tls_alert,            // TLS-alert-received-payload record
  optional_field_size,  // option<field-size-payload>
  field_size,           // field-size-payload
  optional_u32,
  optional_u64,
  optional_string,
};

struct ErrorCaseInfo {
  const char* name;
  ErrorPayload payload;
  // Chosen for a gateway that reports the component's failure to its HTTP client:
  // 502 when the upstream side (DNS, connection, TLS, a bad response) failed, 504 for
  // timeouts, 503 when a connection limit is hit, 4xx when the error blames the request,
  // 500 for the provider's own configuration or an internal error.
  int http_status;
};

constexpr uint32_t error_case_count = 39;

// Indexed by discriminant.
inline constexpr ErrorCaseInfo error_cases[error_case_count] = {
    {"DNS-timeout", ErrorPayload::none, 504},
    {"DNS-error", ErrorPayload::dns_error, 502},
    {"destination-not-found", ErrorPayload::none, 502},
    {"destination-unavailable", ErrorPayload::none, 502},
    {"destination-IP-prohibited", ErrorPayload::none, 502},
    {"destination-IP-unroutable", ErrorPayload::none, 502},
    {"connection-refused", ErrorPayload::none, 502},
    {"connection-terminated", ErrorPayload::none, 502},
    {"connection-timeout", ErrorPayload::none, 504},
    {"connection-read-timeout", ErrorPayload::none, 504},
    {"connection-write-timeout", ErrorPayload::none, 504},
    {"connection-limit-reached", ErrorPayload::none, 503},
    {"TLS-protocol-error", ErrorPayload::none, 502},
    {"TLS-certificate-error", ErrorPayload::none, 502},
    {"TLS-alert-received", ErrorPayload::tls_alert, 502},
    {"HTTP-request-denied", ErrorPayload::none, 403},
    {"HTTP-request-length-required", ErrorPayload::none, 411},
    {"HTTP-request-body-size", ErrorPayload::optional_u64, 413},
    // 400, not 405: "invalid" says the method is malformed, and a 405 would owe the client
    // an Allow header that we cannot know.
    {"HTTP-request-method-invalid", ErrorPayload::none, 400},
    {"HTTP-request-URI-invalid", ErrorPayload::none, 400},
    {"HTTP-request-URI-too-long", ErrorPayload::none, 414},
    {"HTTP-request-header-section-size", ErrorPayload::optional_u32, 431},
    {"HTTP-request-header-size", ErrorPayload::optional_field_size, 431},
    // Trailers are header fields sent late, so they get the header-fields status too.
    {"HTTP-request-trailer-section-size", ErrorPayload::optional_u32, 431},
    {"HTTP-request-trailer-size", ErrorPayload::field_size, 431},
    {"HTTP-response-incomplete", ErrorPayload::none, 502},
    {"HTTP-response-header-section-size", ErrorPayload::optional_u32, 502},
    {"HTTP-response-header-size", ErrorPayload::field_size, 502},
    {"HTTP-response-body-size", ErrorPayload::optional_u64, 502},
    {"HTTP-response-trailer-section-size", ErrorPayload::optional_u32, 502},
    {"HTTP-response-trailer-size", ErrorPayload::field_size, 502},
    {"HTTP-response-transfer-coding", ErrorPayload::optional_string, 502},
    {"HTTP-response-content-coding", ErrorPayload::optional_string, 502},
    {"HTTP-response-timeout", ErrorPayload::none, 504},
    {"HTTP-upgrade-failed", ErrorPayload::none, 502},
    {"HTTP-protocol-error", ErrorPayload::none, 502},
    {"loop-detected", ErrorPayload::none, 508},
    {"configuration-error", ErrorPayload::none, 500},
    {"internal-error", ErrorPayload::optional_string, 500},
};

inline const ErrorCaseInfo& error_case_info(uint32_t index) {
  return error_cases[index < error_case_count ? index
                                              : static_cast<uint32_t>(ErrorCase::internal_error)];
}

}  // namespace detail

inline Method method_from_string(const std::string& http_method) {
  // Method names are case-sensitive (RFC 9110 9.1): "get" is an extension method, not GET.
  for (const auto& known : detail::method_names) {
    if (http_method == known.name) return Method{known.kind, std::string()};
  }
  return Method{MethodKind::other, http_method};
}

inline std::string to_string(const Method& method) {
  for (const auto& known : detail::method_names) {
    if (method.kind == known.kind) return known.name;
  }
  return method.other;
}

inline ErrorCase ErrorCode::kind() const {
  return index < detail::error_case_count ? static_cast<ErrorCase>(index)
                                          : ErrorCase::internal_error;
}

inline const char* ErrorCode::name() const { return detail::error_case_info(index).name; }

inline int ErrorCode::http_status() const { return detail::error_case_info(index).http_status; }

inline std::string ErrorCode::message() const {
  std::string parts;
  auto add = [&parts](const char* label, const std::string& value) {
    parts += parts.empty() ? ": " : ", ";
    if (label) parts += std::string(label) + "=";
    parts += value;
  };
  auto add_field_size = [&add](const FieldSizePayload& payload) {
    if (payload.field_name) add("field-name", *payload.field_name);
    if (payload.field_size) add("field-size", std::to_string(*payload.field_size));
  };
  switch (detail::error_case_info(index).payload) {
    case detail::ErrorPayload::none:
      break;
    case detail::ErrorPayload::dns_error:
      if (dns_error.rcode) add("rcode", *dns_error.rcode);
      if (dns_error.info_code) add("info-code", std::to_string(*dns_error.info_code));
      break;
    case detail::ErrorPayload::tls_alert:
      if (tls_alert.alert_id) add("alert-id", std::to_string(*tls_alert.alert_id));
      if (tls_alert.alert_message) add("alert-message", *tls_alert.alert_message);
      break;
    case detail::ErrorPayload::optional_field_size:
    case detail::ErrorPayload::field_size:
      if (field_size) add_field_size(*field_size);
      break;
    case detail::ErrorPayload::optional_u32:
    case detail::ErrorPayload::optional_u64:
      if (size) add(nullptr, std::to_string(*size));
      break;
    case detail::ErrorPayload::optional_string:
      if (text) add(nullptr, *text);
      break;
  }
  return name() + parts;
}

namespace detail {

// ---------------------------------------------------------------------------------------
// Encoding: every function appends one value to `out`.
// ---------------------------------------------------------------------------------------

inline void write_u8(std::string& out, uint8_t value) { out.push_back(static_cast<char>(value)); }

inline void write_s8(std::string& out, int8_t value) { write_u8(out, static_cast<uint8_t>(value)); }

inline void write_bool(std::string& out, bool value) { write_u8(out, value ? 1 : 0); }

// Unsigned LEB128; serves u16, u32 and u64 (and list/string lengths and discriminants).
inline void write_uleb(std::string& out, uint64_t value) {
  do {
    uint8_t byte = static_cast<uint8_t>(value & 0x7f);
    value >>= 7;
    if (value != 0) byte |= 0x80;
    write_u8(out, byte);
  } while (value != 0);
}

// Signed LEB128; serves s16, s32 and s64.
inline void write_sleb(std::string& out, int64_t value) {
  for (;;) {
    uint8_t byte = static_cast<uint8_t>(value & 0x7f);
    value >>= 7;  // arithmetic shift: keeps the sign
    // Stop once the rest is pure sign extension that bit 6 of this byte already implies.
    bool sign_bit = (byte & 0x40) != 0;
    if ((value == 0 && !sign_bit) || (value == -1 && sign_bit)) {
      write_u8(out, byte);
      return;
    }
    write_u8(out, byte | 0x80);
  }
}

template <class UnsignedInt>
inline void write_little_endian(std::string& out, UnsignedInt value) {
  for (size_t i = 0; i < sizeof(UnsignedInt); ++i) {
    write_u8(out, static_cast<uint8_t>(value >> (8 * i)));
  }
}

inline void write_f32(std::string& out, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  write_little_endian(out, bits);
}

inline void write_f64(std::string& out, double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  write_little_endian(out, bits);
}

inline bool is_unicode_scalar(char32_t c) { return c <= 0x10FFFF && (c < 0xD800 || c > 0xDFFF); }

// A `char` is one Unicode scalar value in UTF-8. A surrogate or out-of-range code point has no
// encoding, so it is sent as U+FFFD rather than as bytes every peer would reject.
inline void write_char(std::string& out, char32_t c) {
  if (!is_unicode_scalar(c)) c = 0xFFFD;
  if (c < 0x80) {
    write_u8(out, static_cast<uint8_t>(c));
  } else if (c < 0x800) {
    write_u8(out, static_cast<uint8_t>(0xC0 | (c >> 6)));
    write_u8(out, static_cast<uint8_t>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    write_u8(out, static_cast<uint8_t>(0xE0 | (c >> 12)));
    write_u8(out, static_cast<uint8_t>(0x80 | ((c >> 6) & 0x3F)));
    write_u8(out, static_cast<uint8_t>(0x80 | (c & 0x3F)));
  } else {
    write_u8(out, static_cast<uint8_t>(0xF0 | (c >> 18)));
    write_u8(out, static_cast<uint8_t>(0x80 | ((c >> 12) & 0x3F)));
    write_u8(out, static_cast<uint8_t>(0x80 | ((c >> 6) & 0x3F)));
    write_u8(out, static_cast<uint8_t>(0x80 | (c & 0x3F)));
  }
}

// list<u8>: count + raw bytes.
inline void write_bytes(std::string& out, const char* data, size_t size) {
  write_uleb(out, size);
  out.append(data, size);
}

inline void write_bytes(std::string& out, const std::string& bytes) {
  write_bytes(out, bytes.data(), bytes.size());
}

// string: byte length + UTF-8 (the same layout as list<u8>; the caller vouches for UTF-8).
inline void write_string(std::string& out, const std::string& text) { write_bytes(out, text); }

// list<T>: count, then each element written by write_element(out, element).
template <class T, class WriteElement>
inline void write_list(std::string& out, const std::vector<T>& items, WriteElement write_element) {
  write_uleb(out, items.size());
  for (const auto& item : items) write_element(out, item);
}

// option<T>: 0 for none, 1 then the value for some.
template <class T, class WriteValue>
inline void write_option(std::string& out, const std::optional<T>& value, WriteValue write_value) {
  write_bool(out, value.has_value());
  if (value) write_value(out, *value);
}

// result<T, E>: the tag (0 ok, 1 err); the caller then writes the T or E payload, if any.
inline void write_result_tag(std::string& out, bool is_err) { write_bool(out, is_err); }

// variant / enum: the case discriminant; the caller then writes the case payload, if any.
// Records and tuples need no helper: their fields are written in order with no framing.
inline void write_discriminant(std::string& out, uint32_t discriminant) {
  write_uleb(out, discriminant);
}

// A future or stream whose contents follow later on the value's index path.
inline void write_async_pending(std::string& out) { write_u8(out, 0); }

// future<T> sent ready: 1 then the value, written by write_value(out, value).
template <class T, class WriteValue>
inline void write_future_ready(std::string& out, const T& value, WriteValue write_value) {
  write_u8(out, 1);
  write_value(out, value);
}

inline void write_fields(std::string& out, const Fields& fields) {
  write_list(out, fields, [](std::string& o, const Fields::value_type& field) {
    write_string(o, field.first);
    write_list(o, field.second, [](std::string& o2, const std::string& value) {
      write_bytes(o2, value);
    });
  });
}

inline void write_method(std::string& out, const Method& method) {
  write_discriminant(out, static_cast<uint32_t>(method.kind));
  if (method.kind == MethodKind::other) write_string(out, method.other);
}

inline void write_scheme(std::string& out, const Scheme& scheme) {
  write_discriminant(out, static_cast<uint32_t>(scheme.kind));
  if (scheme.kind == SchemeKind::other) write_string(out, scheme.other);
}

inline void write_optional_string(std::string& out, const std::optional<std::string>& text) {
  write_option(out, text, write_string);
}

inline void write_field_size_payload(std::string& out, const FieldSizePayload& payload) {
  write_optional_string(out, payload.field_name);
  write_option(out, payload.field_size, [](std::string& o, uint32_t v) { write_uleb(o, v); });
}

inline void write_optional_fields(std::string& out, const std::optional<Fields>& fields) {
  write_option(out, fields, write_fields);
}

inline void write_error_code(std::string& out, const ErrorCode& error) {
  const ErrorPayload payload = error_case_info(error.index).payload;
  write_discriminant(out, static_cast<uint32_t>(error.kind()));
  switch (payload) {
    case ErrorPayload::none:
      break;
    case ErrorPayload::dns_error:
      write_optional_string(out, error.dns_error.rcode);
      write_option(out, error.dns_error.info_code,
                   [](std::string& o, uint16_t v) { write_uleb(o, v); });
      break;
    case ErrorPayload::tls_alert:
      write_option(out, error.tls_alert.alert_id, write_u8);
      write_optional_string(out, error.tls_alert.alert_message);
      break;
    case ErrorPayload::optional_field_size:
      write_option(out, error.field_size, write_field_size_payload);
      break;
    case ErrorPayload::field_size:
      write_field_size_payload(out, error.field_size.value_or(FieldSizePayload{}));
      break;
    case ErrorPayload::optional_u32:
      write_option(out, error.size, [](std::string& o, uint64_t v) {
        write_uleb(o, v > UINT32_MAX ? UINT32_MAX : v);
      });
      break;
    case ErrorPayload::optional_u64:
      write_option(out, error.size, write_uleb);
      break;
    case ErrorPayload::optional_string:
      write_optional_string(out, error.text);
      break;
  }
}

// ---- wrpc:http/incoming-handler.handle ----

// The root params: the `request` record. The body stream is always sent pending (Go and Rust
// peers disagree on the inline form). The trailers future is pending, or, when the request is
// known to carry no trailers, ready + none, which saves the caller a message on params.0.1.
inline void encode_handle_params(const RequestHead& request, std::string& out,
                                 bool trailers_ready_none = false) {
  write_async_pending(out);
  if (trailers_ready_none) {
    write_future_ready(out, std::optional<Fields>(), write_optional_fields);
  } else {
    write_async_pending(out);
  }
  write_method(out, request.method);
  write_optional_string(out, request.path_with_query);
  write_option(out, request.scheme, write_scheme);
  write_optional_string(out, request.authority);
  write_fields(out, request.headers);
}

// The option<fields> value sent on a pending trailers future's path.
inline void encode_trailers(const std::optional<Fields>& trailers, std::string& out) {
  write_optional_fields(out, trailers);
}

// result::ok(response) with body and trailers pending.
inline void encode_handle_result_ok(const ResponseHead& response, std::string& out) {
  write_result_tag(out, false);
  write_async_pending(out);
  write_async_pending(out);
  write_uleb(out, response.status);
  write_fields(out, response.headers);
}

inline void encode_handle_result_err(const ErrorCode& error, std::string& out) {
  write_result_tag(out, true);
  write_error_code(out, error);
}

// One chunk of a pending stream<u8>: length + bytes. An empty chunk would read as the end,
// so it is not written at all.
inline void encode_stream_chunk(const char* data, size_t size, std::string& out) {
  if (size != 0) write_bytes(out, data, size);
}

// The end of a pending stream<u8>: a chunk of length 0.
inline void encode_stream_end(std::string& out) { write_uleb(out, 0); }

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

enum class DecodeStatus { ok, need_more, error };

// Unsigned LEB128 fed one byte at a time, so the same rules serve a contiguous buffer and a
// stream chunk length split across NATS messages. Rejects any bit beyond `bit_width` and any
// continuation past the last byte the width allows (3 bytes for u16, 5 for u32, 10 for u64).
class UlebAccumulator {
 public:
  enum class Step { need_more, done, overflow };

  explicit UlebAccumulator(unsigned bit_width) : bit_width_(bit_width) {}

  Step push(uint8_t byte) {
    const uint64_t bits = byte & 0x7f;
    const bool continues = (byte & 0x80) != 0;
    if (shift_ + 7 > bit_width_ && (bits >> (bit_width_ - shift_)) != 0) return Step::overflow;
    if (continues && shift_ + 7 >= bit_width_) return Step::overflow;
    value_ |= bits << shift_;
    if (!continues) return Step::done;
    shift_ += 7;
    return Step::need_more;
  }

  uint64_t value() const { return value_; }

  void reset() {
    value_ = 0;
    shift_ = 0;
  }

 private:
  unsigned bit_width_;
  unsigned shift_ = 0;
  uint64_t value_ = 0;
};

enum class Utf8Decode { complete, truncated, invalid };

// Decodes the UTF-8 sequence at the start of [data, data + size) into `scalar`, setting
// `length` to its byte count. Rejects overlong forms, surrogates and code points > U+10FFFF.
inline Utf8Decode decode_utf8(const unsigned char* data, size_t size, char32_t& scalar,
                              size_t& length) {
  if (size == 0) return Utf8Decode::truncated;
  const unsigned char lead = data[0];
  char32_t smallest;  // below this the sequence is overlong
  if (lead < 0x80) {
    scalar = lead;
    length = 1;
    return Utf8Decode::complete;
  } else if ((lead & 0xE0) == 0xC0) {
    length = 2;
    scalar = lead & 0x1F;
    smallest = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    scalar = lead & 0x0F;
    smallest = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    scalar = lead & 0x07;
    smallest = 0x10000;
  } else {
    return Utf8Decode::invalid;
  }
  for (size_t i = 1; i < length; ++i) {
    if (i >= size) return Utf8Decode::truncated;
    if ((data[i] & 0xC0) != 0x80) return Utf8Decode::invalid;
    scalar = (scalar << 6) | (data[i] & 0x3F);
  }
  if (scalar < smallest || !is_unicode_scalar(scalar)) return Utf8Decode::invalid;
  return Utf8Decode::complete;
}

inline bool is_valid_utf8(const char* text, size_t size) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text);
  for (size_t at = 0; at < size;) {
    char32_t scalar;
    size_t length;
    if (decode_utf8(bytes + at, size - at, scalar, length) != Utf8Decode::complete) return false;
    at += length;
  }
  return true;
}

// Reads component-model values from one contiguous buffer.
//
// The first failure sticks: afterwards every read returns a default value and consumes
// nothing, so a composite decoder reads its fields in sequence and checks status() once.
// need_more means the buffer ended inside a value (append bytes and decode again from the
// start); error means the bytes can never form a valid value.
//
// Every declared string or list length is checked before anything is allocated: a length
// above `max_length` is an error, and a length longer than the bytes present is need_more.
class ValueReader {
 public:
  ValueReader(const char* data, size_t size, size_t max_length = WRPC_HTTP_MAX_HEAD_BYTES)
      : data_(reinterpret_cast<const unsigned char*>(data)), size_(size), max_length_(max_length) {}

  DecodeStatus status() const { return status_; }
  bool ok() const { return status_ == DecodeStatus::ok; }
  const std::string& error_message() const { return error_; }
  size_t position() const { return position_; }
  size_t remaining() const { return size_ - position_; }

  // Marks the value invalid; for composite decoders that find a semantic error.
  void fail(std::string message) {
    if (!ok()) return;
    status_ = DecodeStatus::error;
    error_ = std::move(message);
  }

  uint8_t read_u8() {
    if (!ok()) return 0;
    if (remaining() == 0) return need_more();
    return data_[position_++];
  }

  int8_t read_s8() { return static_cast<int8_t>(read_u8()); }

  bool read_bool() { return read_flag("bool"); }

  uint16_t read_u16() { return static_cast<uint16_t>(read_uleb(16, "u16")); }
  uint32_t read_u32() { return static_cast<uint32_t>(read_uleb(32, "u32")); }
  uint64_t read_u64() { return read_uleb(64, "u64"); }

  int16_t read_s16() { return static_cast<int16_t>(read_sleb(16, "s16")); }
  int32_t read_s32() { return static_cast<int32_t>(read_sleb(32, "s32")); }
  int64_t read_s64() { return read_sleb(64, "s64"); }

  float read_f32() {
    const uint32_t bits = read_little_endian<uint32_t>();
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  double read_f64() {
    const uint64_t bits = read_little_endian<uint64_t>();
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  char32_t read_char() {
    if (!ok()) return 0;
    char32_t scalar = 0;
    size_t length = 0;
    switch (decode_utf8(data_ + position_, remaining(), scalar, length)) {
      case Utf8Decode::truncated:
        return need_more();
      case Utf8Decode::invalid:
        fail("char is not a UTF-8 encoded Unicode scalar value");
        return 0;
      case Utf8Decode::complete:
        break;
    }
    position_ += length;
    return scalar;
  }

  // list<u8> into a byte string.
  std::string read_bytes() {
    const size_t length = read_length("list<u8>");
    if (!ok()) return std::string();
    std::string bytes(reinterpret_cast<const char*>(data_ + position_), length);
    position_ += length;
    return bytes;
  }

  std::string read_string() {
    std::string text = read_bytes();
    if (ok() && !is_valid_utf8(text.data(), text.size())) fail("string is not valid UTF-8");
    return text;
  }

  // list<T>: read_element() reads one T. Every element type used here encodes to at least one
  // byte, which is what lets a count above the bytes present be answered with need_more.
  template <class ReadElement>
  auto read_list(ReadElement read_element) -> std::vector<decltype(read_element())> {
    std::vector<decltype(read_element())> items;
    const size_t count = read_length("list");
    for (size_t i = 0; i < count && ok(); ++i) items.push_back(read_element());
    return items;
  }

  // option<T>: read_value() reads the T of a `some`.
  template <class ReadValue>
  auto read_option(ReadValue read_value) -> std::optional<decltype(read_value())> {
    if (!read_flag("option")) return std::nullopt;
    auto value = read_value();
    if (!ok()) return std::nullopt;
    return value;
  }

  // result<T, E>: true for err; the caller then reads the T or E payload.
  bool read_result_is_err() { return read_flag("result"); }

  // future<T> / stream<T> status byte: true when the contents follow inline (ready), false
  // when they follow on the value's index path (pending).
  bool read_async_is_ready() { return read_flag("future/stream status"); }

  // variant / enum discriminant, which must name one of `case_count` cases.
  uint32_t read_discriminant(uint32_t case_count, const char* type_name) {
    const uint32_t discriminant = read_u32();
    if (ok() && discriminant >= case_count) {
      fail(std::string("invalid ") + type_name + " discriminant " + std::to_string(discriminant));
      return 0;
    }
    return discriminant;
  }

 private:
  uint8_t need_more() {
    if (ok()) status_ = DecodeStatus::need_more;
    return 0;
  }

  // A one-byte 0/1 tag (bool, option, result, async status); anything else is an error.
  bool read_flag(const char* what) {
    const uint8_t byte = read_u8();
    if (byte > 1) fail(std::string("invalid ") + what + " byte " + std::to_string(byte));
    return ok() && byte == 1;
  }

  uint64_t read_uleb(unsigned bit_width, const char* type_name) {
    UlebAccumulator accumulator(bit_width);
    while (ok()) {
      if (remaining() == 0) return need_more();
      switch (accumulator.push(data_[position_++])) {
        case UlebAccumulator::Step::need_more:
          break;
        case UlebAccumulator::Step::done:
          return accumulator.value();
        case UlebAccumulator::Step::overflow:
          fail(std::string("LEB128 value overflows ") + type_name);
          break;
      }
    }
    return 0;
  }

  int64_t read_sleb(unsigned bit_width, const char* type_name) {
    if (!ok()) return 0;
    uint64_t value = 0;
    unsigned shift = 0;
    for (;;) {
      if (remaining() == 0) return static_cast<int64_t>(need_more());
      const uint8_t byte = data_[position_++];
      const uint64_t bits = byte & 0x7f;
      const bool continues = (byte & 0x80) != 0;
      if (shift + 7 > bit_width) {
        // Only the low (bit_width - shift) bits carry value; the rest must repeat the sign.
        const unsigned value_bits = bit_width - shift;
        const uint64_t extension_mask = 0x7f & ~((uint64_t{1} << value_bits) - 1);
        const bool negative = ((bits >> (value_bits - 1)) & 1) != 0;
        if ((bits & extension_mask) != (negative ? extension_mask : 0)) break;
      }
      if (continues && shift + 7 >= bit_width) break;
      value |= bits << shift;
      shift += 7;
      if (!continues) {
        if (shift < 64 && (bits & 0x40) != 0) value |= ~uint64_t{0} << shift;
        return static_cast<int64_t>(value);
      }
    }
    fail(std::string("LEB128 value overflows ") + type_name);
    return 0;
  }

  template <class UnsignedInt>
  UnsignedInt read_little_endian() {
    if (!ok()) return 0;
    if (remaining() < sizeof(UnsignedInt)) return need_more();
    UnsignedInt value = 0;
    for (size_t i = 0; i < sizeof(UnsignedInt); ++i) {
      value |= static_cast<UnsignedInt>(static_cast<UnsignedInt>(data_[position_ + i]) << (8 * i));
    }
    position_ += sizeof(UnsignedInt);
    return value;
  }

  // A string or list length: an error above the limit, need_more beyond the bytes present.
  size_t read_length(const char* what) {
    const uint32_t length = read_u32();
    if (!ok()) return 0;
    if (length > max_length_) {
      fail(std::string(what) + " length " + std::to_string(length) + " exceeds the limit of " +
           std::to_string(max_length_) + " bytes");
      return 0;
    }
    if (length > remaining()) return need_more();
    return length;
  }

  const unsigned char* data_;
  size_t size_;
  size_t max_length_;
  size_t position_ = 0;
  DecodeStatus status_ = DecodeStatus::ok;
  std::string error_;
};

inline Fields read_fields(ValueReader& reader) {
  return reader.read_list([&reader] {
    Fields::value_type field;
    field.first = reader.read_string();
    field.second = reader.read_list([&reader] { return reader.read_bytes(); });
    return field;
  });
}

inline std::optional<std::string> read_optional_string(ValueReader& reader) {
  return reader.read_option([&reader] { return reader.read_string(); });
}

inline Method read_method(ValueReader& reader) {
  Method method;
  method.kind = static_cast<MethodKind>(reader.read_discriminant(10, "method"));
  if (method.kind == MethodKind::other) method.other = reader.read_string();
  return method;
}

inline Scheme read_scheme(ValueReader& reader) {
  Scheme scheme;
  scheme.kind = static_cast<SchemeKind>(reader.read_discriminant(3, "scheme"));
  if (scheme.kind == SchemeKind::other) scheme.other = reader.read_string();
  return scheme;
}

inline FieldSizePayload read_field_size_payload(ValueReader& reader) {
  FieldSizePayload payload;
  payload.field_name = read_optional_string(reader);
  payload.field_size = reader.read_option([&reader] { return reader.read_u32(); });
  return payload;
}

inline ErrorCode read_error_code(ValueReader& reader) {
  ErrorCode error;
  error.index = reader.read_discriminant(error_case_count, "error-code");
  switch (error_case_info(error.index).payload) {
    case ErrorPayload::none:
      break;
    case ErrorPayload::dns_error:
      error.dns_error.rcode = read_optional_string(reader);
      error.dns_error.info_code = reader.read_option([&reader] { return reader.read_u16(); });
      break;
    case ErrorPayload::tls_alert:
      error.tls_alert.alert_id = reader.read_option([&reader] { return reader.read_u8(); });
      error.tls_alert.alert_message = read_optional_string(reader);
      break;
    case ErrorPayload::optional_field_size:
      error.field_size = reader.read_option([&reader] { return read_field_size_payload(reader); });
      break;
    case ErrorPayload::field_size:
      error.field_size = read_field_size_payload(reader);
      break;
    case ErrorPayload::optional_u32:
      error.size = reader.read_option([&reader] { return uint64_t{reader.read_u32()}; });
      break;
    case ErrorPayload::optional_u64:
      error.size = reader.read_option([&reader] { return reader.read_u64(); });
      break;
    case ErrorPayload::optional_string:
      error.text = read_optional_string(reader);
      break;
  }
  return error;
}

// How a stream<u8> body was sent: pending (chunks follow on its index path) or ready inline.
// Ready is accepted only in the form `1` + list<u8> (Go's). Rust's inline form, a bare
// non-empty list, cannot be told apart from a status byte (a one-byte list starts with 01),
// and no real peer sends it.
struct AsyncBody {
  bool pending = true;
  std::string ready_bytes;
};

// How a future<option<fields>> of trailers was sent: pending (decode_trailers on its index
// path) or ready inline with its value.
struct AsyncTrailers {
  bool pending = true;
  std::optional<Fields> ready_value;
};

struct HandleParams {
  RequestHead request;
  AsyncBody body;
  AsyncTrailers trailers;
};

// result<response, error-code>: `error` is set for err; otherwise response, body, trailers.
struct HandleResult {
  std::optional<ErrorCode> error;
  ResponseHead response;
  AsyncBody body;
  AsyncTrailers trailers;
};

template <class T>
struct DecodeResult {
  DecodeStatus status = DecodeStatus::need_more;
  size_t consumed = 0;  // bytes of the value, when status is ok
  std::string error;    // what was wrong, when status is error
  T value{};
};

inline AsyncBody read_async_body(ValueReader& reader) {
  AsyncBody body;
  body.pending = !reader.read_async_is_ready();
  if (!body.pending) body.ready_bytes = reader.read_bytes();
  return body;
}

inline std::optional<Fields> read_optional_fields(ValueReader& reader) {
  return reader.read_option([&reader] { return read_fields(reader); });
}

inline AsyncTrailers read_async_trailers(ValueReader& reader) {
  AsyncTrailers trailers;
  trailers.pending = !reader.read_async_is_ready();
  if (!trailers.pending) trailers.ready_value = read_optional_fields(reader);
  return trailers;
}

// Runs read_value over [data, data + size). A value still incomplete once `max_bytes` are
// buffered is an error: the caller can stop buffering there and fail the call.
template <class T, class ReadValue>
inline DecodeResult<T> decode_value(const char* data, size_t size, size_t max_bytes,
                                    ReadValue read_value) {
  ValueReader reader(data, size, max_bytes);
  DecodeResult<T> result;
  result.value = read_value(reader);
  result.status = reader.status();
  if (result.status == DecodeStatus::need_more && size >= max_bytes) {
    result.status = DecodeStatus::error;
    result.error = "value exceeds the limit of " + std::to_string(max_bytes) + " bytes";
  } else if (result.status == DecodeStatus::error) {
    result.error = reader.error_message();
  }
  if (result.status == DecodeStatus::ok) {
    result.consumed = reader.position();
  } else {
    result.value = T{};
  }
  return result;
}

inline DecodeResult<HandleParams> decode_handle_params(
    const char* data, size_t size, size_t max_bytes = WRPC_HTTP_MAX_HEAD_BYTES) {
  return decode_value<HandleParams>(data, size, max_bytes, [](ValueReader& reader) {
    HandleParams params;
    params.body = read_async_body(reader);
    params.trailers = read_async_trailers(reader);
    params.request.method = read_method(reader);
    params.request.path_with_query = read_optional_string(reader);
    params.request.scheme = reader.read_option([&reader] { return read_scheme(reader); });
    params.request.authority = read_optional_string(reader);
    params.request.headers = read_fields(reader);
    return params;
  });
}

inline DecodeResult<HandleResult> decode_handle_result(
    const char* data, size_t size, size_t max_bytes = WRPC_HTTP_MAX_HEAD_BYTES) {
  return decode_value<HandleResult>(data, size, max_bytes, [](ValueReader& reader) {
    HandleResult result;
    if (reader.read_result_is_err()) {
      result.error = read_error_code(reader);
      return result;
    }
    result.body = read_async_body(reader);
    result.trailers = read_async_trailers(reader);
    result.response.status = reader.read_u16();
    result.response.headers = read_fields(reader);
    return result;
  });
}

// The option<fields> value that arrives on a pending trailers future's path.
inline DecodeResult<std::optional<Fields>> decode_trailers(
    const char* data, size_t size, size_t max_bytes = WRPC_HTTP_MAX_HEAD_BYTES) {
  return decode_value<std::optional<Fields>>(data, size, max_bytes, read_optional_fields);
}

// Decodes the chunks of a pending stream<u8> as they arrive, in pieces of any size. Payload
// bytes go to the sink as soon as they are fed, so a chunk is never buffered whole; chunk
// lengths are therefore not limited. feed() returns need_more until the end chunk (length 0),
// ok from then on, and error for a malformed length or any byte after the end chunk.
class StreamChunkDecoder {
 public:
  using Sink = std::function<void(const char* data, size_t size)>;

  DecodeStatus feed(const char* data, size_t size, const Sink& sink) {
    size_t at = 0;
    while (at < size && state_ != State::failed) {
      if (state_ == State::finished) {
        fail("bytes after the end of the stream");
      } else if (state_ == State::length) {
        push_length_byte(static_cast<uint8_t>(data[at++]));
      } else {
        // Pass on whatever part of the chunk's payload this piece holds.
        const size_t available = size - at;
        const size_t take =
            payload_left_ < available ? static_cast<size_t>(payload_left_) : available;
        sink(data + at, take);
        at += take;
        payload_left_ -= take;
        if (payload_left_ == 0) state_ = State::length;
      }
    }
    return status();
  }

  DecodeStatus status() const {
    switch (state_) {
      case State::finished:
        return DecodeStatus::ok;
      case State::failed:
        return DecodeStatus::error;
      default:
        return DecodeStatus::need_more;
    }
  }

  bool finished() const { return state_ == State::finished; }
  const std::string& error_message() const { return error_; }

 private:
  enum class State { length, payload, finished, failed };

  void push_length_byte(uint8_t byte) {
    switch (length_.push(byte)) {
      case UlebAccumulator::Step::need_more:
        break;
      case UlebAccumulator::Step::done:
        payload_left_ = length_.value();
        length_.reset();
        state_ = payload_left_ == 0 ? State::finished : State::payload;
        break;
      case UlebAccumulator::Step::overflow:
        fail("stream chunk length is not a valid LEB128 u64");
        break;
    }
  }

  void fail(std::string message) {
    state_ = State::failed;
    error_ = std::move(message);
  }

  State state_ = State::length;
  UlebAccumulator length_{64};
  uint64_t payload_left_ = 0;
  std::string error_;
};

}  // namespace detail
}  // namespace wrpc_http
