// The wRPC value codec: byte-exact encodings, incremental decoding, hostile input.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../wrpc_http_provider.hpp"

using namespace wrpc_http;
using namespace wrpc_http::detail;

namespace {

// "00 0a ff" -> the three bytes.
std::string hex(const char* text) {
  std::string bytes;
  int high = -1;
  for (const char* p = text; *p; ++p) {
    const char c = *p;
    int nibble;
    if (c >= '0' && c <= '9') {
      nibble = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      nibble = c - 'a' + 10;
    } else {
      continue;
    }
    if (high < 0) {
      high = nibble;
    } else {
      bytes.push_back(static_cast<char>(high * 16 + nibble));
      high = -1;
    }
  }
  return bytes;
}

std::string to_hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string text;
  for (unsigned char byte : bytes) {
    if (!text.empty()) text += ' ';
    text += digits[byte >> 4];
    text += digits[byte & 15];
  }
  return text;
}

template <class Write>
std::string encoded(Write write) {
  std::string out;
  write(out);
  return out;
}

// A reader over `bytes` that must end exactly at its end.
struct Reading {
  std::string bytes;
  ValueReader reader;
  explicit Reading(std::string b) : bytes(std::move(b)), reader(bytes.data(), bytes.size()) {}
  bool consumed_all() const { return reader.ok() && reader.position() == bytes.size(); }
};

// ---- the vectors of WRPC_VECTORS.md ----

const std::string vector1_params = hex(
    "00 00 00 01 0a 2f 70 72 6f 78 79 3f 78 3d 31 01 00 01 0e 6c 6f 63 61 6c 68 6f 73 74 3a 38 30"
    " 38 30 02 06 61 63 63 65 70 74 01 03 2a 2f 2a 07 78 2d 6d 75 6c 74 69 02 01 61 01 62");
const std::string vector2_params = hex("00 00 09 05 50 55 52 47 45 01 01 2f 00 00 00");
const std::string vector3_body_chunk = hex("05 68 65 6c 6c 6f");
const std::string vector3_body_end = hex("00");
const std::string vector4_trailers_none = hex("00");
const std::string vector4_trailers_some = hex("01 01 05 78 2d 73 75 6d 01 01 31");
const std::string vector5_result_ok = hex(
    "00 00 00 c8 01 01 0c 63 6f 6e 74 65 6e 74 2d 74 79 70 65 01 0a 74 65 78 74 2f 70 6c 61 69"
    " 6e");
const std::string vector6_result_err = hex("01 26 01 04 62 6f 6f 6d");

RequestHead vector1_request() {
  RequestHead request;
  request.method = Method{MethodKind::get, ""};
  request.path_with_query = "/proxy?x=1";
  request.scheme = Scheme{SchemeKind::http, ""};
  request.authority = "localhost:8080";
  request.headers = {{"accept", {"*/*"}}, {"x-multi", {"a", "b"}}};
  return request;
}

RequestHead vector2_request() {
  RequestHead request;
  request.method = Method{MethodKind::other, "PURGE"};
  request.path_with_query = "/";
  return request;
}

ResponseHead vector5_response() {
  ResponseHead response;
  response.status = 200;
  response.headers = {{"content-type", {"text/plain"}}};
  return response;
}

Fields vector4_trailers() { return {{"x-sum", {"1"}}}; }

// Every head vector, with the decoder that reads it.
struct HeadVector {
  const char* name;
  std::string bytes;
  std::function<DecodeStatus(const std::string&, size_t*)> decode;
};

template <class Decode>
std::function<DecodeStatus(const std::string&, size_t*)> status_of(Decode decode) {
  return [decode](const std::string& bytes, size_t* consumed) {
    auto result = decode(bytes.data(), bytes.size(), WRPC_HTTP_MAX_HEAD_BYTES);
    if (consumed) *consumed = result.consumed;
    return result.status;
  };
}

std::vector<HeadVector> head_vectors() {
  return {
      {"params GET /proxy", vector1_params, status_of(decode_handle_params)},
      {"params PURGE /", vector2_params, status_of(decode_handle_params)},
      {"trailers none", vector4_trailers_none, status_of(decode_trailers)},
      {"trailers x-sum", vector4_trailers_some, status_of(decode_trailers)},
      {"result ok 200", vector5_result_ok, status_of(decode_handle_result)},
      {"result err internal-error", vector6_result_err, status_of(decode_handle_result)},
  };
}

// Feeds a stream to a fresh StreamChunkDecoder in pieces of `piece` bytes (the last may be
// shorter); collects the payload and the status after each piece.
struct StreamRun {
  std::string payload;
  std::vector<DecodeStatus> statuses;
  bool sink_overran = false;  // the sink got more bytes than the piece held
};

StreamRun feed_in_pieces(const std::string& stream, const std::vector<size_t>& cuts) {
  StreamChunkDecoder decoder;
  StreamRun run;
  size_t start = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t end = i < cuts.size() ? cuts[i] : stream.size();
    size_t delivered = 0;
    run.statuses.push_back(decoder.feed(stream.data() + start, end - start,
                                        [&](const char* data, size_t size) {
                                          run.payload.append(data, size);
                                          delivered += size;
                                        }));
    if (delivered > end - start) run.sink_overran = true;
    start = end;
  }
  return run;
}

ErrorCode error_with_every_payload_part(ErrorCase error_case) {
  ErrorCode error(error_case);
  switch (error_case_info(error.index).payload) {
    case ErrorPayload::none:
      break;
    case ErrorPayload::dns_error:
      error.dns_error.rcode = "NXDOMAIN";
      error.dns_error.info_code = 65535;
      break;
    case ErrorPayload::tls_alert:
      error.tls_alert.alert_id = 255;
      error.tls_alert.alert_message = "handshake failure";
      break;
    case ErrorPayload::optional_field_size:
    case ErrorPayload::field_size:
      error.field_size = FieldSizePayload{std::string("x-big"), UINT32_MAX};
      break;
    case ErrorPayload::optional_u32:
      error.size = UINT32_MAX;
      break;
    case ErrorPayload::optional_u64:
      error.size = UINT64_MAX;
      break;
    case ErrorPayload::optional_string:
      error.text = "gzip \xE2\x82\xAC";
      break;
  }
  return error;
}

// Each case with its payload's options absent; for the option<...> shapes that is `none`.
ErrorCode error_with_empty_payload(ErrorCase error_case) {
  ErrorCode error(error_case);
  if (error_case_info(error.index).payload == ErrorPayload::field_size) {
    error.field_size = FieldSizePayload{};
  }
  return error;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Primitive encodings, hand-checked
// ---------------------------------------------------------------------------------------

TEST_CASE("u8, s8 and bool are one raw byte") {
  CHECK(to_hex(encoded([](std::string& o) { write_u8(o, 0xab); })) == "ab");
  CHECK(to_hex(encoded([](std::string& o) { write_s8(o, -2); })) == "fe");
  CHECK(to_hex(encoded([](std::string& o) { write_bool(o, true); write_bool(o, false); })) ==
        "01 00");

  Reading reading(hex("ab fe 01 00"));
  CHECK(reading.reader.read_u8() == 0xab);
  CHECK(reading.reader.read_s8() == -2);
  CHECK(reading.reader.read_bool() == true);
  CHECK(reading.reader.read_bool() == false);
  CHECK(reading.consumed_all());
}

TEST_CASE("unsigned integers are unsigned LEB128 at their edge values") {
  const std::pair<uint64_t, const char*> cases[] = {
      {0, "00"},
      {127, "7f"},
      {128, "80 01"},
      {300, "ac 02"},
      {UINT16_MAX, "ff ff 03"},
      {UINT32_MAX, "ff ff ff ff 0f"},
      {UINT64_MAX, "ff ff ff ff ff ff ff ff ff 01"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    CHECK(to_hex(encoded([&](std::string& o) { write_uleb(o, c.first); })) == c.second);
    Reading reading(hex(c.second));
    CHECK(reading.reader.read_u64() == c.first);
    CHECK(reading.consumed_all());
  }
}

TEST_CASE("u16 and u32 decode up to their maximum") {
  Reading u16(hex("ff ff 03"));
  CHECK(u16.reader.read_u16() == UINT16_MAX);
  CHECK(u16.consumed_all());
  Reading u32(hex("ff ff ff ff 0f"));
  CHECK(u32.reader.read_u32() == UINT32_MAX);
  CHECK(u32.consumed_all());
}

TEST_CASE("a padded but in-range LEB128 is accepted") {
  Reading reading(hex("80 80 00"));
  CHECK(reading.reader.read_u16() == 0);
  CHECK(reading.consumed_all());
}

TEST_CASE("signed integers are signed LEB128 at their edge values") {
  const std::pair<int64_t, const char*> cases[] = {
      {0, "00"},
      {-1, "7f"},
      {63, "3f"},
      {64, "c0 00"},
      {-64, "40"},
      {-65, "bf 7f"},
      {INT64_MAX, "ff ff ff ff ff ff ff ff ff 00"},
      {INT64_MIN, "80 80 80 80 80 80 80 80 80 7f"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    CHECK(to_hex(encoded([&](std::string& o) { write_sleb(o, c.first); })) == c.second);
    Reading reading(hex(c.second));
    CHECK(reading.reader.read_s64() == c.first);
    CHECK(reading.consumed_all());
  }
}

TEST_CASE("s16 and s32 decode their minimum and maximum") {
  const std::pair<int64_t, const char*> s16_cases[] = {{INT16_MIN, "80 80 7e"},
                                                       {INT16_MAX, "ff ff 01"}};
  for (const auto& c : s16_cases) {
    CHECK(to_hex(encoded([&](std::string& o) { write_sleb(o, c.first); })) == c.second);
    Reading reading(hex(c.second));
    CHECK(reading.reader.read_s16() == c.first);
    CHECK(reading.consumed_all());
  }
  const std::pair<int64_t, const char*> s32_cases[] = {{INT32_MIN, "80 80 80 80 78"},
                                                       {INT32_MAX, "ff ff ff ff 07"}};
  for (const auto& c : s32_cases) {
    CHECK(to_hex(encoded([&](std::string& o) { write_sleb(o, c.first); })) == c.second);
    Reading reading(hex(c.second));
    CHECK(reading.reader.read_s32() == c.first);
    CHECK(reading.consumed_all());
  }
}

TEST_CASE("f32 and f64 are little-endian IEEE 754") {
  CHECK(to_hex(encoded([](std::string& o) { write_f32(o, 1.0f); })) == "00 00 80 3f");
  CHECK(to_hex(encoded([](std::string& o) { write_f32(o, -2.5f); })) == "00 00 20 c0");
  CHECK(to_hex(encoded([](std::string& o) { write_f64(o, 1.0); })) ==
        "00 00 00 00 00 00 f0 3f");
  CHECK(to_hex(encoded([](std::string& o) { write_f64(o, -0.1); })) ==
        "9a 99 99 99 99 99 b9 bf");

  Reading reading(hex("00 00 20 c0 9a 99 99 99 99 99 b9 bf"));
  CHECK(reading.reader.read_f32() == -2.5f);
  CHECK(reading.reader.read_f64() == -0.1);
  CHECK(reading.consumed_all());
}

TEST_CASE("char is one UTF-8 encoded scalar value of 1 to 4 bytes") {
  const std::pair<char32_t, const char*> cases[] = {
      {U'A', "41"}, {U'\u00e9', "c3 a9"}, {U'\u20ac', "e2 82 ac"}, {U'\U0001F600', "f0 9f 98 80"}};
  for (const auto& c : cases) {
    CAPTURE(static_cast<uint32_t>(c.first));
    CHECK(to_hex(encoded([&](std::string& o) { write_char(o, c.first); })) == c.second);
    Reading reading(hex(c.second));
    CHECK(reading.reader.read_char() == c.first);
    CHECK(reading.consumed_all());
  }
}

TEST_CASE("a char that is not a scalar value is encoded as U+FFFD") {
  CHECK(to_hex(encoded([](std::string& o) { write_char(o, 0xD800); })) == "ef bf bd");
  CHECK(to_hex(encoded([](std::string& o) { write_char(o, 0x110000); })) == "ef bf bd");
}

TEST_CASE("string is its byte length then UTF-8") {
  CHECK(to_hex(encoded([](std::string& o) { write_string(o, "h\xC3\xA9llo"); })) ==
        "06 68 c3 a9 6c 6c 6f");
  CHECK(to_hex(encoded([](std::string& o) { write_string(o, ""); })) == "00");
  Reading reading(hex("06 68 c3 a9 6c 6c 6f 00"));
  CHECK(reading.reader.read_string() == "h\xC3\xA9llo");
  CHECK(reading.reader.read_string() == "");
  CHECK(reading.consumed_all());
}

TEST_CASE("list<u8> is its count then the raw bytes, any byte value allowed") {
  const std::string bytes("\x00\xff\x80", 3);
  CHECK(to_hex(encoded([&](std::string& o) { write_bytes(o, bytes); })) == "03 00 ff 80");
  Reading reading(hex("03 00 ff 80"));
  CHECK(reading.reader.read_bytes() == bytes);
  CHECK(reading.consumed_all());
}

TEST_CASE("list<T> is its count then each element") {
  const std::vector<uint32_t> numbers{1, 300};
  CHECK(to_hex(encoded([&](std::string& o) {
          write_list(o, numbers, [](std::string& o2, uint32_t v) { write_uleb(o2, v); });
        })) == "02 01 ac 02");
  Reading reading(hex("02 01 ac 02"));
  CHECK(reading.reader.read_list([&] { return reading.reader.read_u32(); }) == numbers);
  CHECK(reading.consumed_all());
}

TEST_CASE("option is 00 for none and 01 then the value for some") {
  const std::optional<uint32_t> none;
  const std::optional<uint32_t> some = 5;
  auto write_u32 = [](std::string& o, uint32_t v) { write_uleb(o, v); };
  CHECK(to_hex(encoded([&](std::string& o) { write_option(o, none, write_u32); })) == "00");
  CHECK(to_hex(encoded([&](std::string& o) { write_option(o, some, write_u32); })) == "01 05");

  Reading reading(hex("00 01 05"));
  auto read_u32 = [&] { return reading.reader.read_u32(); };
  CHECK(reading.reader.read_option(read_u32) == none);
  CHECK(reading.reader.read_option(read_u32) == some);
  CHECK(reading.consumed_all());
}

TEST_CASE("result is 00 then the ok value or 01 then the err value") {
  const std::string ok_7 = encoded([](std::string& o) {
    write_result_tag(o, false);
    write_uleb(o, 7);
  });
  const std::string err_x = encoded([](std::string& o) {
    write_result_tag(o, true);
    write_string(o, "x");
  });
  CHECK(to_hex(ok_7) == "00 07");
  CHECK(to_hex(err_x) == "01 01 78");

  Reading reading(ok_7 + err_x);
  CHECK_FALSE(reading.reader.read_result_is_err());
  CHECK(reading.reader.read_u32() == 7);
  CHECK(reading.reader.read_result_is_err());
  CHECK(reading.reader.read_string() == "x");
  CHECK(reading.consumed_all());
}

TEST_CASE("variant is its LEB128 discriminant then the case payload") {
  CHECK(to_hex(encoded([](std::string& o) { write_method(o, Method{MethodKind::patch, ""}); })) ==
        "08");
  CHECK(to_hex(encoded([](std::string& o) {
          write_method(o, Method{MethodKind::other, "PURGE"});
        })) == "09 05 50 55 52 47 45");
  CHECK(to_hex(encoded([](std::string& o) { write_scheme(o, Scheme{SchemeKind::https, ""}); })) ==
        "01");
  CHECK(to_hex(encoded([](std::string& o) { write_discriminant(o, 200); })) == "c8 01");

  Reading reading(hex("09 05 50 55 52 47 45 02 03 66 74 70"));
  CHECK(read_method(reading.reader) == Method{MethodKind::other, "PURGE"});
  CHECK(read_scheme(reading.reader) == Scheme{SchemeKind::other, "ftp"});
  CHECK(reading.consumed_all());
}

TEST_CASE("future is 01 then the value when ready and 00 when pending") {
  const std::optional<Fields> no_trailers;
  CHECK(to_hex(encoded([&](std::string& o) {
          write_future_ready(o, no_trailers, write_optional_fields);
        })) == "01 00");
  CHECK(to_hex(encoded([](std::string& o) { write_async_pending(o); })) == "00");

  Reading reading(hex("01 00 00"));
  CHECK(reading.reader.read_async_is_ready());
  CHECK(read_optional_fields(reading.reader) == no_trailers);
  CHECK_FALSE(reading.reader.read_async_is_ready());
  CHECK(reading.consumed_all());
}

TEST_CASE("a stream chunk is its LEB128 length then the bytes, and the end chunk is 00") {
  std::string out;
  encode_stream_chunk("hello", 5, out);
  CHECK(out == vector3_body_chunk);
  out.clear();
  encode_stream_end(out);
  CHECK(out == vector3_body_end);

  const std::string big(300, 'z');
  out.clear();
  encode_stream_chunk(big.data(), big.size(), out);
  CHECK(to_hex(out.substr(0, 2)) == "ac 02");
  CHECK(out.size() == 302);
}

TEST_CASE("an empty stream chunk is not written, since 00 would end the stream") {
  std::string out;
  encode_stream_chunk("", 0, out);
  CHECK(out.empty());
}

// ---------------------------------------------------------------------------------------
// wasi:http helpers
// ---------------------------------------------------------------------------------------

TEST_CASE("method_from_string maps the nine standard methods and keeps others as text") {
  const std::pair<const char*, MethodKind> known[] = {
      {"GET", MethodKind::get},         {"HEAD", MethodKind::head},
      {"POST", MethodKind::post},       {"PUT", MethodKind::put},
      {"DELETE", MethodKind::delete_},  {"CONNECT", MethodKind::connect},
      {"OPTIONS", MethodKind::options}, {"TRACE", MethodKind::trace},
      {"PATCH", MethodKind::patch}};
  for (const auto& k : known) {
    const Method method = method_from_string(k.first);
    CHECK(method.kind == k.second);
    CHECK(to_string(method) == k.first);
  }
  CHECK(method_from_string("PURGE") == Method{MethodKind::other, "PURGE"});
  CHECK(to_string(Method{MethodKind::other, "PURGE"}) == "PURGE");
}

TEST_CASE("method names are case-sensitive: lower-case get is an other method") {
  CHECK(method_from_string("get") == Method{MethodKind::other, "get"});
}

TEST_CASE("error-code names, HTTP statuses and messages") {
  CHECK(std::string(ErrorCode::internal_error("boom").name()) == "internal-error");
  CHECK(ErrorCode::internal_error("boom").http_status() == 500);
  CHECK(ErrorCode::internal_error("boom").message() == "internal-error: boom");
  CHECK(ErrorCode(ErrorCase::destination_not_found).http_status() == 502);
  CHECK(ErrorCode(ErrorCase::connection_refused).http_status() == 502);
  CHECK(ErrorCode(ErrorCase::dns_timeout).http_status() == 504);
  CHECK(ErrorCode(ErrorCase::connection_timeout).http_status() == 504);
  CHECK(ErrorCode(ErrorCase::http_response_timeout).http_status() == 504);
  CHECK(ErrorCode(ErrorCase::http_request_body_size).http_status() == 413);
  CHECK(ErrorCode(ErrorCase::http_request_header_section_size).http_status() == 431);
  CHECK(ErrorCode(ErrorCase::http_request_header_size).http_status() == 431);
  CHECK(ErrorCode(ErrorCase::http_request_denied).http_status() == 403);
  CHECK(ErrorCode(ErrorCase::http_request_length_required).http_status() == 411);
  CHECK(ErrorCode(ErrorCase::http_request_uri_too_long).http_status() == 414);
  CHECK(ErrorCode(ErrorCase::http_request_method_invalid).http_status() == 400);
  CHECK(ErrorCode(ErrorCase::loop_detected).http_status() == 508);
  CHECK(ErrorCode(ErrorCase::configuration_error).http_status() == 500);
  CHECK(ErrorCode(ErrorCase::connection_timeout).message() == "connection-timeout");
  CHECK(std::string(ErrorCode(ErrorCase::http_request_uri_invalid).name()) ==
        "HTTP-request-URI-invalid");

  ErrorCode dns(ErrorCase::dns_error);
  dns.dns_error.rcode = "NXDOMAIN";
  dns.dns_error.info_code = 3;
  CHECK(dns.message() == "DNS-error: rcode=NXDOMAIN, info-code=3");
  ErrorCode body_size(ErrorCase::http_request_body_size);
  body_size.size = 1024;
  CHECK(body_size.message() == "HTTP-request-body-size: 1024");
}

TEST_CASE("every error-code case has a status in the 4xx or 5xx range") {
  for (uint32_t index = 0; index < error_case_count; ++index) {
    ErrorCode error(static_cast<ErrorCase>(index));
    CAPTURE(error.name());
    CHECK(error.http_status() >= 400);
    CHECK(error.http_status() <= 599);
  }
}

TEST_CASE("an error-code index outside 0..38 behaves as internal-error") {
  ErrorCode error;
  error.index = 99;
  error.text = "odd";
  CHECK(error.kind() == ErrorCase::internal_error);
  CHECK(std::string(error.name()) == "internal-error");
  std::string out;
  encode_handle_result_err(error, out);
  CHECK(to_hex(out) == "01 26 01 03 6f 64 64");
}

// ---------------------------------------------------------------------------------------
// The vectors of WRPC_VECTORS.md
// ---------------------------------------------------------------------------------------

TEST_CASE("vector 1: GET /proxy params encode byte for byte") {
  std::string out;
  encode_handle_params(vector1_request(), out);
  CHECK(to_hex(out) == to_hex(vector1_params));
}

TEST_CASE("vector 1: GET /proxy params decode to the request with body and trailers pending") {
  const auto result = decode_handle_params(vector1_params.data(), vector1_params.size());
  REQUIRE(result.status == DecodeStatus::ok);
  CHECK(result.consumed == vector1_params.size());
  CHECK(result.value.request == vector1_request());
  CHECK(result.value.body.pending);
  CHECK(result.value.trailers.pending);
}

TEST_CASE("vector 2: PURGE / with no scheme, authority or headers encodes byte for byte") {
  std::string out;
  encode_handle_params(vector2_request(), out);
  CHECK(to_hex(out) == to_hex(vector2_params));
}

TEST_CASE("vector 2: PURGE / decodes with an other method and absent options") {
  const auto result = decode_handle_params(vector2_params.data(), vector2_params.size());
  REQUIRE(result.status == DecodeStatus::ok);
  CHECK(result.consumed == vector2_params.size());
  CHECK(result.value.request == vector2_request());
}

TEST_CASE("vector 3: body hello is one chunk then the end chunk") {
  std::string out;
  encode_stream_chunk("hello", 5, out);
  encode_stream_end(out);
  CHECK(out == vector3_body_chunk + vector3_body_end);

  const StreamRun run = feed_in_pieces(vector3_body_chunk + vector3_body_end, {});
  CHECK(run.payload == "hello");
  CHECK(run.statuses.back() == DecodeStatus::ok);
}

TEST_CASE("vector 4: trailers none and some encode byte for byte") {
  std::string none;
  encode_trailers(std::nullopt, none);
  CHECK(none == vector4_trailers_none);
  std::string some;
  encode_trailers(vector4_trailers(), some);
  CHECK(to_hex(some) == to_hex(vector4_trailers_some));
}

TEST_CASE("vector 4: trailers none and some decode") {
  const auto none = decode_trailers(vector4_trailers_none.data(), vector4_trailers_none.size());
  REQUIRE(none.status == DecodeStatus::ok);
  CHECK_FALSE(none.value.has_value());
  const auto some = decode_trailers(vector4_trailers_some.data(), vector4_trailers_some.size());
  REQUIRE(some.status == DecodeStatus::ok);
  CHECK(some.consumed == vector4_trailers_some.size());
  CHECK(some.value == std::optional<Fields>(vector4_trailers()));
}

TEST_CASE("vector 5: result ok 200 encodes byte for byte") {
  std::string out;
  encode_handle_result_ok(vector5_response(), out);
  CHECK(to_hex(out) == to_hex(vector5_result_ok));
}

TEST_CASE("vector 5: result ok 200 decodes with body and trailers pending") {
  const auto result = decode_handle_result(vector5_result_ok.data(), vector5_result_ok.size());
  REQUIRE(result.status == DecodeStatus::ok);
  CHECK(result.consumed == vector5_result_ok.size());
  CHECK_FALSE(result.value.error.has_value());
  CHECK(result.value.response == vector5_response());
  CHECK(result.value.body.pending);
  CHECK(result.value.trailers.pending);
}

TEST_CASE("vector 5: statuses 404 and 418 are LEB128") {
  ResponseHead response;
  response.status = 404;
  std::string out;
  encode_handle_result_ok(response, out);
  CHECK(to_hex(out) == "00 00 00 94 03 00");
  response.status = 418;
  out.clear();
  encode_handle_result_ok(response, out);
  CHECK(to_hex(out) == "00 00 00 a2 03 00");
}

TEST_CASE("vector 6: result err internal-error(some(boom)) encodes byte for byte") {
  std::string out;
  encode_handle_result_err(ErrorCode::internal_error("boom"), out);
  CHECK(to_hex(out) == to_hex(vector6_result_err));
}

TEST_CASE("vector 6: result err internal-error(some(boom)) decodes") {
  const auto result = decode_handle_result(vector6_result_err.data(), vector6_result_err.size());
  REQUIRE(result.status == DecodeStatus::ok);
  CHECK(result.consumed == vector6_result_err.size());
  REQUIRE(result.value.error.has_value());
  CHECK(*result.value.error == ErrorCode::internal_error("boom"));
}

TEST_CASE("vector 6: the discriminants named in the vectors file") {
  const std::pair<ErrorCase, const char*> cases[] = {
      {ErrorCase::connection_timeout, "01 08"},
      {ErrorCase::destination_not_found, "01 02"},
      {ErrorCase::http_request_body_size, "01 11 00"},
      {ErrorCase::http_response_timeout, "01 21"},
      {ErrorCase::configuration_error, "01 25"},
  };
  for (const auto& c : cases) {
    std::string out;
    encode_handle_result_err(ErrorCode(c.first), out);
    CHECK(to_hex(out) == c.second);
    const auto decoded = decode_handle_result(out.data(), out.size());
    REQUIRE(decoded.status == DecodeStatus::ok);
    CHECK(decoded.value.error->kind() == c.first);
  }
}

// ---------------------------------------------------------------------------------------
// Incremental decoding
// ---------------------------------------------------------------------------------------

TEST_CASE("a head value truncated at every length needs more, never errs") {
  for (const auto& vector : head_vectors()) {
    CAPTURE(vector.name);
    for (size_t length = 0; length < vector.bytes.size(); ++length) {
      CAPTURE(length);
      CHECK(vector.decode(vector.bytes.substr(0, length), nullptr) == DecodeStatus::need_more);
    }
  }
}

TEST_CASE("a head value split in two at every offset decodes once both parts are buffered") {
  for (const auto& vector : head_vectors()) {
    CAPTURE(vector.name);
    for (size_t split = 0; split <= vector.bytes.size(); ++split) {
      CAPTURE(split);
      std::string buffer = vector.bytes.substr(0, split);
      if (split < vector.bytes.size()) {
        CHECK(vector.decode(buffer, nullptr) == DecodeStatus::need_more);
      }
      buffer += vector.bytes.substr(split);
      size_t consumed = 0;
      CHECK(vector.decode(buffer, &consumed) == DecodeStatus::ok);
      CHECK(consumed == vector.bytes.size());
    }
  }
}

TEST_CASE("a head value fed byte by byte decodes exactly at its last byte") {
  for (const auto& vector : head_vectors()) {
    CAPTURE(vector.name);
    std::string buffer;
    for (char byte : vector.bytes) {
      buffer += byte;
      const DecodeStatus expected =
          buffer.size() == vector.bytes.size() ? DecodeStatus::ok : DecodeStatus::need_more;
      CHECK(vector.decode(buffer, nullptr) == expected);
    }
  }
}

TEST_CASE("bytes after a head value are left unconsumed") {
  const std::string buffer = vector5_result_ok + "extra";
  const auto result = decode_handle_result(buffer.data(), buffer.size());
  REQUIRE(result.status == DecodeStatus::ok);
  CHECK(result.consumed == vector5_result_ok.size());
}

TEST_CASE("stream chunks split in two at every offset deliver the whole payload") {
  const std::string big(300, 'q');  // a two-byte LEB128 length that can itself be split
  std::string stream = vector3_body_chunk;
  encode_stream_chunk(big.data(), big.size(), stream);
  encode_stream_end(stream);
  for (size_t split = 0; split <= stream.size(); ++split) {
    CAPTURE(split);
    const StreamRun run = feed_in_pieces(stream, {split});
    CHECK(run.payload == "hello" + big);
    CHECK(run.statuses.back() == DecodeStatus::ok);
    CHECK(run.statuses.front() == (split == stream.size() ? DecodeStatus::ok
                                                          : DecodeStatus::need_more));
    CHECK_FALSE(run.sink_overran);
  }
}

TEST_CASE("stream chunks fed byte by byte deliver the payload and end at the last byte") {
  const std::string stream = vector3_body_chunk + hex("03 20 21 22") + vector3_body_end;
  std::vector<size_t> cuts;
  for (size_t i = 1; i < stream.size(); ++i) cuts.push_back(i);
  const StreamRun run = feed_in_pieces(stream, cuts);
  CHECK(run.payload == "hello !\"");
  for (size_t i = 0; i + 1 < run.statuses.size(); ++i) {
    CHECK(run.statuses[i] == DecodeStatus::need_more);
  }
  CHECK(run.statuses.back() == DecodeStatus::ok);
}

TEST_CASE("a partial chunk's payload reaches the sink before the chunk is complete") {
  StreamChunkDecoder decoder;
  std::string payload;
  auto sink = [&](const char* data, size_t size) { payload.append(data, size); };
  CHECK(decoder.feed(vector3_body_chunk.data(), 3, sink) == DecodeStatus::need_more);
  CHECK(payload == "he");
}

TEST_CASE("a stream that is only the end chunk is an empty body") {
  const StreamRun run = feed_in_pieces(vector3_body_end, {});
  CHECK(run.payload.empty());
  CHECK(run.statuses.back() == DecodeStatus::ok);
}

TEST_CASE("feeding nothing changes nothing") {
  StreamChunkDecoder decoder;
  auto sink = [](const char*, size_t) {};
  CHECK(decoder.feed(nullptr, 0, sink) == DecodeStatus::need_more);
  CHECK(decoder.feed(vector3_body_end.data(), 1, sink) == DecodeStatus::ok);
  CHECK(decoder.feed(nullptr, 0, sink) == DecodeStatus::ok);
  CHECK(decoder.finished());
}

TEST_CASE("bytes after the end chunk are an error") {
  StreamChunkDecoder decoder;
  auto sink = [](const char*, size_t) {};
  CHECK(decoder.feed("\x00", 1, sink) == DecodeStatus::ok);
  CHECK(decoder.feed("\x01", 1, sink) == DecodeStatus::error);
  CHECK_FALSE(decoder.error_message().empty());
  CHECK(decoder.feed("\x00", 1, sink) == DecodeStatus::error);  // the failure sticks

  StreamChunkDecoder end_then_end;  // the same, within one feed
  CHECK(end_then_end.feed("\x00\x00", 2, sink) == DecodeStatus::error);
}

TEST_CASE("a stream chunk length longer than 10 LEB128 bytes is an error") {
  StreamChunkDecoder decoder;
  auto sink = [](const char*, size_t) {};
  const std::string eleven = hex("80 80 80 80 80 80 80 80 80 80 00");
  CHECK(decoder.feed(eleven.data(), 10, sink) == DecodeStatus::error);
}

TEST_CASE("a huge stream chunk length is streamed, not buffered") {
  StreamChunkDecoder decoder;
  size_t delivered = 0;
  auto sink = [&](const char*, size_t size) { delivered += size; };
  const std::string header = hex("ff ff ff ff ff ff ff ff 7f") + "abc";  // 2^63 - 1 bytes
  CHECK(decoder.feed(header.data(), header.size(), sink) == DecodeStatus::need_more);
  CHECK(delivered == 3);
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

TEST_CASE("request heads round-trip, including binary header values and other variants") {
  RequestHead request;
  request.method = Method{MethodKind::other, "MKCOL"};
  request.path_with_query = "/a%20b?q=\xE2\x82\xAC";
  request.scheme = Scheme{SchemeKind::other, "wss"};
  request.authority = std::nullopt;
  request.headers = {{"x-bin", {std::string("\x00\xff\x01", 3), ""}}, {"empty", {}}};
  for (bool trailers_ready_none : {false, true}) {
    std::string out;
    encode_handle_params(request, out, trailers_ready_none);
    const auto decoded = decode_handle_params(out.data(), out.size());
    REQUIRE(decoded.status == DecodeStatus::ok);
    CHECK(decoded.value.request == request);
    CHECK(decoded.value.trailers.pending == !trailers_ready_none);
    CHECK_FALSE(decoded.value.trailers.ready_value.has_value());
  }
}

TEST_CASE("trailers sent ready as none are the bytes 01 00 after the pending body") {
  std::string out;
  encode_handle_params(vector2_request(), out, true);
  CHECK(to_hex(out.substr(0, 3)) == "00 01 00");
}

TEST_CASE("response heads round-trip for every status width") {
  for (uint16_t status : {uint16_t{100}, uint16_t{127}, uint16_t{128}, uint16_t{599},
                          uint16_t{65535}}) {
    ResponseHead response;
    response.status = status;
    response.headers = {{"set-cookie", {"a=1", "b=2"}}};
    std::string out;
    encode_handle_result_ok(response, out);
    const auto decoded = decode_handle_result(out.data(), out.size());
    REQUIRE(decoded.status == DecodeStatus::ok);
    CHECK(decoded.value.response == response);
  }
}

TEST_CASE("every one of the 39 error-code cases round-trips with its full payload") {
  for (uint32_t index = 0; index < error_case_count; ++index) {
    const ErrorCode error = error_with_every_payload_part(static_cast<ErrorCase>(index));
    CAPTURE(error.name());
    std::string out;
    encode_handle_result_err(error, out);
    const auto decoded = decode_handle_result(out.data(), out.size());
    REQUIRE(decoded.status == DecodeStatus::ok);
    CHECK(decoded.consumed == out.size());
    REQUIRE(decoded.value.error.has_value());
    CHECK(*decoded.value.error == error);
    std::string again;
    encode_handle_result_err(*decoded.value.error, again);
    CHECK(again == out);
  }
}

TEST_CASE("every one of the 39 error-code cases round-trips with its options absent") {
  for (uint32_t index = 0; index < error_case_count; ++index) {
    const ErrorCode error = error_with_empty_payload(static_cast<ErrorCase>(index));
    CAPTURE(error.name());
    std::string out;
    encode_handle_result_err(error, out);
    const auto decoded = decode_handle_result(out.data(), out.size());
    REQUIRE(decoded.status == DecodeStatus::ok);
    CHECK(*decoded.value.error == error);
  }
}

TEST_CASE("error-code payload layouts match the WIT records") {
  ErrorCode dns(ErrorCase::dns_error);
  dns.dns_error.rcode = "x";
  dns.dns_error.info_code = 300;
  ErrorCode tls(ErrorCase::tls_alert_received);
  tls.tls_alert.alert_id = 40;
  ErrorCode header_size(ErrorCase::http_request_header_size);
  header_size.field_size = FieldSizePayload{std::string("h"), 9u};
  ErrorCode trailer_size(ErrorCase::http_response_trailer_size);  // not an option
  const std::pair<ErrorCode, const char*> cases[] = {
      {dns, "01 01 01 01 78 01 ac 02"},
      {tls, "01 0e 01 28 00"},
      {header_size, "01 16 01 01 01 68 01 09"},
      {trailer_size, "01 1e 00 00"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first.name());
    std::string out;
    encode_handle_result_err(c.first, out);
    CHECK(to_hex(out) == c.second);
  }
}

TEST_CASE("a body sent ready as 01 plus list<u8> (Go's form) is accepted") {
  const std::string params = hex("01 05 68 65 6c 6c 6f 00") + vector2_params.substr(2);
  const auto decoded = decode_handle_params(params.data(), params.size());
  REQUIRE(decoded.status == DecodeStatus::ok);
  CHECK_FALSE(decoded.value.body.pending);
  CHECK(decoded.value.body.ready_bytes == "hello");
  CHECK(decoded.value.request == vector2_request());
}

TEST_CASE("a result with ready body and ready trailers decodes both") {
  const std::string bytes = hex("00 01 02 68 69 01 01") + vector4_trailers_some.substr(1) +
                            hex("c8 01 00");
  const auto decoded = decode_handle_result(bytes.data(), bytes.size());
  REQUIRE(decoded.status == DecodeStatus::ok);
  CHECK(decoded.value.body.ready_bytes == "hi");
  CHECK_FALSE(decoded.value.trailers.pending);
  CHECK(decoded.value.trailers.ready_value == std::optional<Fields>(vector4_trailers()));
  CHECK(decoded.value.response.status == 200);
}

// ---------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------

TEST_CASE("LEB128 past the width of its type is an error") {
  const std::pair<const char*, const char*> u16_cases[] = {{"ff ff 04", "bit 16 set"},
                                                           {"80 80 80 00", "4 bytes"}};
  for (const auto& c : u16_cases) {
    CAPTURE(c.second);
    Reading reading(hex(c.first));
    reading.reader.read_u16();
    CHECK(reading.reader.status() == DecodeStatus::error);
  }
  Reading u32(hex("ff ff ff ff 1f"));
  u32.reader.read_u32();
  CHECK(u32.reader.status() == DecodeStatus::error);
  Reading u64(hex("ff ff ff ff ff ff ff ff ff 02"));
  u64.reader.read_u64();
  CHECK(u64.reader.status() == DecodeStatus::error);
  Reading u64_eleven(hex("80 80 80 80 80 80 80 80 80 80 00"));
  u64_eleven.reader.read_u64();
  CHECK(u64_eleven.reader.status() == DecodeStatus::error);
}

TEST_CASE("signed LEB128 whose last byte is not a sign extension is an error") {
  Reading s16(hex("ff ff 02"));  // bit 15 set but bits 16.. clear
  s16.reader.read_s16();
  CHECK(s16.reader.status() == DecodeStatus::error);
  Reading s32(hex("80 80 80 80 70"));
  s32.reader.read_s32();
  CHECK(s32.reader.status() == DecodeStatus::error);
  Reading s64(hex("ff ff ff ff ff ff ff ff ff 01"));
  s64.reader.read_s64();
  CHECK(s64.reader.status() == DecodeStatus::error);
  Reading s64_long(hex("ff ff ff ff ff ff ff ff ff ff 7f"));
  s64_long.reader.read_s64();
  CHECK(s64_long.reader.status() == DecodeStatus::error);
}

TEST_CASE("a truncated primitive needs more") {
  using Read = std::function<void(ValueReader&)>;
  const std::pair<const char*, Read> cases[] = {
      {"", [](ValueReader& r) { r.read_u8(); }},
      {"", [](ValueReader& r) { r.read_u32(); }},
      {"80", [](ValueReader& r) { r.read_u32(); }},
      {"ff ff", [](ValueReader& r) { r.read_u64(); }},
      {"80", [](ValueReader& r) { r.read_s16(); }},
      {"ff ff", [](ValueReader& r) { r.read_s64(); }},
      {"00 00 80", [](ValueReader& r) { r.read_f32(); }},
      {"00 00 00 00 00 00 f0", [](ValueReader& r) { r.read_f64(); }},
      {"e2 82", [](ValueReader& r) { r.read_char(); }},
      {"03 61", [](ValueReader& r) { r.read_string(); }},
      {"02 01", [](ValueReader& r) { r.read_list([&r] { return r.read_u8(); }); }},
      {"01", [](ValueReader& r) { r.read_option([&r] { return r.read_u8(); }); }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    Reading reading(hex(c.first));
    c.second(reading.reader);
    CHECK(reading.reader.status() == DecodeStatus::need_more);
  }
}

TEST_CASE("tag bytes other than 0 and 1 are errors") {
  Reading boolean(hex("02"));
  boolean.reader.read_bool();
  CHECK(boolean.reader.status() == DecodeStatus::error);
  Reading option(hex("02"));
  option.reader.read_option([&] { return option.reader.read_u8(); });
  CHECK(option.reader.status() == DecodeStatus::error);
  Reading result(hex("02"));
  result.reader.read_result_is_err();
  CHECK(result.reader.status() == DecodeStatus::error);
  Reading future(hex("02"));
  future.reader.read_async_is_ready();
  CHECK(future.reader.status() == DecodeStatus::error);
}

TEST_CASE("bad discriminants of method, scheme and error-code are errors") {
  const std::string method_10 = hex("00 00 0a");
  CHECK(decode_handle_params(method_10.data(), method_10.size()).status == DecodeStatus::error);
  const std::string scheme_3 = hex("00 00 00 00 01 03");
  CHECK(decode_handle_params(scheme_3.data(), scheme_3.size()).status == DecodeStatus::error);
  const std::string error_39 = hex("01 27");
  const auto decoded = decode_handle_result(error_39.data(), error_39.size());
  CHECK(decoded.status == DecodeStatus::error);
  CHECK(decoded.error.find("error-code") != std::string::npos);
  const std::string result_2 = hex("02");
  CHECK(decode_handle_result(result_2.data(), result_2.size()).status == DecodeStatus::error);
  const std::string trailers_2 = hex("02");
  CHECK(decode_trailers(trailers_2.data(), trailers_2.size()).status == DecodeStatus::error);
}

TEST_CASE("invalid UTF-8 in a string or char is an error") {
  const char* invalid[] = {"c0 80", "ed a0 80", "f4 90 80 80", "80", "e2 28 a1", "ff"};
  for (const char* bytes : invalid) {
    CAPTURE(bytes);
    Reading chr(hex(bytes));
    chr.reader.read_char();
    CHECK(chr.reader.status() == DecodeStatus::error);
    std::string as_string = hex(bytes);
    as_string.insert(as_string.begin(), static_cast<char>(as_string.size()));
    Reading str(as_string);
    str.reader.read_string();
    CHECK(str.reader.status() == DecodeStatus::error);
  }
}

TEST_CASE("a string cut inside a multi-byte character by its own length is an error") {
  Reading reading(hex("01 c3 a9"));
  reading.reader.read_string();
  CHECK(reading.reader.status() == DecodeStatus::error);
}

TEST_CASE("a 10 MB declared length with a few bytes present is an error, not a wait") {
  // path-with-query: some + string of 10,000,000 bytes, then only "abc".
  const std::string params = hex("00 00 00 01 80 ad e2 04 61 62 63");
  const auto decoded = decode_handle_params(params.data(), params.size());
  CHECK(decoded.status == DecodeStatus::error);
  CHECK(decoded.error.find("exceeds") != std::string::npos);
}

TEST_CASE("a list count of 2^32 - 1 with 3 bytes present is an error, not an allocation") {
  const std::string params = hex("00 00 00 00 00 00 ff ff ff ff 0f 01 02 03");
  const auto decoded = decode_handle_params(params.data(), params.size());
  CHECK(decoded.status == DecodeStatus::error);
  CHECK(decoded.value.request.headers.capacity() == 0);
}

TEST_CASE("a list count under the limit but beyond the bytes present needs more") {
  const std::string params = hex("00 00 00 00 00 00 e8 07 01 61");  // 1000 headers, 2 bytes
  CHECK(decode_handle_params(params.data(), params.size()).status == DecodeStatus::need_more);
  Reading reading(hex("ff ff 3f"));  // a list<u8> of 1 MiB - 1 bytes with none present
  CHECK(reading.reader.read_bytes().empty());
  CHECK(reading.reader.status() == DecodeStatus::need_more);
}

TEST_CASE("a head still incomplete at the byte limit is an error") {
  const size_t limit = 16;
  for (size_t length = 0; length < vector1_params.size(); ++length) {
    CAPTURE(length);
    const auto decoded = decode_handle_params(vector1_params.data(), length, limit);
    CHECK(decoded.status ==
          (length >= limit ? DecodeStatus::error : DecodeStatus::need_more));
  }
  CHECK(decode_handle_params(vector1_params.data(), vector1_params.size(), vector1_params.size())
            .status == DecodeStatus::ok);
}

TEST_CASE("a string longer than a custom limit is an error") {
  ValueReader reader("\x05hello", 6, 4);
  reader.read_string();
  CHECK(reader.status() == DecodeStatus::error);
}

TEST_CASE("every single-byte corruption of the head vectors decodes to a status, safely") {
  // Run under ASan/UBSan: no read past the buffer, no overflow, no huge allocation.
  for (const auto& vector : head_vectors()) {
    CAPTURE(vector.name);
    for (size_t at = 0; at < vector.bytes.size(); ++at) {
      for (int value = 0; value < 256; ++value) {
        std::string corrupted = vector.bytes;
        corrupted[at] = static_cast<char>(value);
        size_t consumed = 0;
        const DecodeStatus status = vector.decode(corrupted, &consumed);
        if (status == DecodeStatus::ok) CHECK(consumed <= corrupted.size());
      }
    }
  }
}
