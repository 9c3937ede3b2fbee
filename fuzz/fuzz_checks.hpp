// What the fuzz targets check, shared with tests/test_fuzz_regressions.cpp so that a found
// input is replayed through exactly the code the fuzzer ran.
//
// Each check feeds untrusted bytes to one parser and returns "" when the parser behaved, or
// a sentence saying which promise it broke. An exception the parser is not documented to
// throw is not caught here: it escapes to the fuzzer (a crash) or to doctest (a failure).
#ifndef WRPC_HTTP_FUZZ_CHECKS_HPP
#define WRPC_HTTP_FUZZ_CHECKS_HPP

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "../wrpc_http_provider.hpp"

namespace fuzz_checks {

// ---------------------------------------------------------------------------------------
// wRPC decoder: request params, response result and trailers from a peer, body chunks.
// ---------------------------------------------------------------------------------------

namespace wrpc = wrpc_http::detail;

template <class T>
using Decoder = wrpc::DecodeResult<T> (*)(const char* data, size_t size, size_t max_bytes);

// The parts of a decoded value that its encoder writes back (encoders always send the body
// pending, so a body sent ready cannot round-trip), or nullopt when the encoder cannot write
// the value at all.
struct ParamsEncoding {
  static std::string encode(const wrpc::HandleParams& params) {
    std::string out;
    wrpc::encode_handle_params(params.request, out, trailers_ready_none(params));
    return out;
  }
  static bool same(const wrpc::HandleParams& a, const wrpc::HandleParams& b) {
    return a.request == b.request && trailers_ready_none(a) == trailers_ready_none(b);
  }
  static bool trailers_ready_none(const wrpc::HandleParams& params) {
    return !params.trailers.pending && !params.trailers.ready_value;
  }
};

struct ResultEncoding {
  static std::string encode(const wrpc::HandleResult& result) {
    std::string out;
    if (result.error) {
      wrpc::encode_handle_result_err(*result.error, out);
    } else {
      wrpc::encode_handle_result_ok(result.response, out);
    }
    return out;
  }
  static bool same(const wrpc::HandleResult& a, const wrpc::HandleResult& b) {
    return a.error == b.error && (a.error || a.response == b.response);
  }
};

struct TrailersEncoding {
  static std::string encode(const std::optional<wrpc_http::Fields>& trailers) {
    std::string out;
    wrpc::encode_trailers(trailers, out);
    return out;
  }
  static bool same(const std::optional<wrpc_http::Fields>& a, const std::optional<wrpc_http::Fields>& b) {
    return a == b;
  }
};

// One head decoder against the promises that transport.hpp relies on: the status is
// consistent with the bytes; a value arriving split is decoded only once complete, the same
// at any split (here at a point chosen by the first byte); a tighter limit never accepts
// what the default limit decodes differently; and a decoded value re-encodes to bytes that
// decode to it again.
template <class T, class Encoding>
std::string head_decoder_fault(const char* name, Decoder<T> decode, const std::string& bytes) {
  const std::string what = std::string(name) + ": ";
  const auto whole = decode(bytes.data(), bytes.size(), WRPC_HTTP_MAX_HEAD_BYTES);
  if (whole.status == wrpc::DecodeStatus::ok && (whole.consumed == 0 || whole.consumed > bytes.size()))
    return what + "ok with consumed " + std::to_string(whole.consumed) + " of " +
           std::to_string(bytes.size());
  if (whole.status == wrpc::DecodeStatus::error && whole.error.empty())
    return what + "error without a message";

  const size_t split = bytes.empty() ? 0 : bytes.size() * static_cast<unsigned char>(bytes[0]) / 256;
  const auto prefix = decode(bytes.data(), split, WRPC_HTTP_MAX_HEAD_BYTES);
  if (prefix.status == wrpc::DecodeStatus::ok &&
      (whole.status != wrpc::DecodeStatus::ok || whole.consumed != prefix.consumed ||
       !Encoding::same(whole.value, prefix.value)))
    return what + "a prefix decodes to a value that the whole input does not";
  if (prefix.status != wrpc::DecodeStatus::need_more &&
      (whole.status == wrpc::DecodeStatus::need_more ||
       (whole.status == wrpc::DecodeStatus::ok && split < whole.consumed)))
    return what + "an incomplete value is not need_more";

  const size_t tight_limit = 1 + (bytes.empty() ? 0 : static_cast<unsigned char>(bytes.back()));
  const auto limited = decode(bytes.data(), bytes.size(), tight_limit);
  if (limited.status == wrpc::DecodeStatus::ok &&
      (whole.status != wrpc::DecodeStatus::ok || whole.consumed != limited.consumed ||
       !Encoding::same(whole.value, limited.value)))
    return what + "a tighter limit decodes a different value";

  if (whole.status != wrpc::DecodeStatus::ok) return "";
  const std::string encoded = Encoding::encode(whole.value);
  const auto again = decode(encoded.data(), encoded.size(), WRPC_HTTP_MAX_HEAD_BYTES);
  if (again.status != wrpc::DecodeStatus::ok)
    return what + "a decoded value re-encodes to bytes that do not decode";
  if (again.consumed != encoded.size())
    return what + "a re-encoded value decodes from fewer bytes than written";
  if (!Encoding::same(whole.value, again.value)) return what + "a decoded value does not survive re-encoding";
  return "";
}

struct StreamOutcome {
  wrpc::DecodeStatus status = wrpc::DecodeStatus::need_more;
  std::string payload;
  std::string error;
};

// Feeds `bytes` to a StreamChunkDecoder whole, or in pieces of 1..64 bytes whose sizes
// cycle through the input's first 8 bytes; stops feeding at the first error.
inline StreamOutcome decode_stream(const std::string& bytes, bool in_pieces) {
  wrpc::StreamChunkDecoder decoder;
  StreamOutcome outcome;
  const auto sink = [&outcome](const char* data, size_t size) { outcome.payload.append(data, size); };
  const size_t size_bytes = bytes.size() < 8 ? bytes.size() : 8;
  for (size_t at = 0, piece = 0; at < bytes.size() && outcome.status != wrpc::DecodeStatus::error; ++piece) {
    const size_t wanted =
        in_pieces ? 1 + static_cast<unsigned char>(bytes[piece % size_bytes]) % 64 : bytes.size();
    const size_t size = wanted < bytes.size() - at ? wanted : bytes.size() - at;
    outcome.status = decoder.feed(bytes.data() + at, size, sink);
    at += size;
  }
  outcome.error = decoder.error_message();
  return outcome;
}

inline std::string stream_decoder_fault(const std::string& bytes) {
  const StreamOutcome whole = decode_stream(bytes, false);
  const StreamOutcome pieces = decode_stream(bytes, true);
  if (whole.payload.size() > bytes.size()) return "stream: the sink got more bytes than were fed";
  if (whole.status != pieces.status || whole.payload != pieces.payload || whole.error != pieces.error)
    return "stream: the outcome depends on how the bytes were split";
  if (whole.status == wrpc::DecodeStatus::error && whole.error.empty())
    return "stream: error without a message";
  return "";
}

// The ValueReader primitives, which every value decoder is built from. The first byte says how
// many of the following bytes are read operations (one per byte); the rest is the data they
// read. Promised: a read after a failure returns the default and consumes nothing, and an
// integer read re-encodes to bytes that read back as the same integer.
inline std::string value_reader_fault(const std::string& bytes) {
  const size_t op_count = bytes.empty() ? 0 : static_cast<unsigned char>(bytes[0]) % 16;
  if (bytes.size() < 1 + op_count) return "";
  const std::string data = bytes.substr(1 + op_count);
  wrpc::ValueReader reader(data.data(), data.size(), 64);

  std::string fault;
  // Reads an integer with `read` and checks that its re-encoding reads back the same; true
  // when the integer is zero.
  const auto integer = [&reader, &fault](auto read, auto write) {
    const auto value = (reader.*read)();
    std::string encoded;
    write(encoded, value);
    wrpc::ValueReader again(encoded.data(), encoded.size());
    if ((again.*read)() != value || !again.ok() || again.remaining() != 0)
      fault = "reader: an integer does not survive re-encoding";
    return value == 0;
  };
  const auto u = [](std::string& out, uint64_t v) { wrpc::write_uleb(out, v); };
  const auto s = [](std::string& out, int64_t v) { wrpc::write_sleb(out, v); };

  for (size_t i = 1; i <= op_count && fault.empty(); ++i) {
    const bool failed_before = !reader.ok();
    const size_t position_before = reader.position();
    bool returned_default = true;
    switch (static_cast<unsigned char>(bytes[i]) % 15) {
      case 0: returned_default = reader.read_u8() == 0; break;
      case 1: returned_default = !reader.read_bool(); break;
      case 2: returned_default = integer(&wrpc::ValueReader::read_u16, u); break;
      case 3: returned_default = integer(&wrpc::ValueReader::read_u32, u); break;
      case 4: returned_default = integer(&wrpc::ValueReader::read_u64, u); break;
      case 5: returned_default = integer(&wrpc::ValueReader::read_s16, s); break;
      case 6: returned_default = integer(&wrpc::ValueReader::read_s32, s); break;
      case 7: returned_default = integer(&wrpc::ValueReader::read_s64, s); break;
      case 8: returned_default = reader.read_f32() == 0.0f; break;
      case 9: returned_default = reader.read_f64() == 0.0; break;
      case 10: returned_default = reader.read_char() == 0; break;
      case 11: returned_default = reader.read_bytes().empty(); break;
      case 12: returned_default = reader.read_string().empty(); break;
      case 13: returned_default = reader.read_list([&reader] { return reader.read_u8(); }).empty(); break;
      case 14: returned_default = reader.read_discriminant(5, "fuzz") == 0; break;
    }
    if (reader.position() > data.size()) return "reader: read past the end of its input";
    if (failed_before && (reader.position() != position_before || !returned_default))
      return "reader: a read after a failure consumed bytes or returned a value";
  }
  return fault;
}

inline std::string wrpc_decoder_fault(const std::string& bytes) {
  for (const std::string& fault :
       {value_reader_fault(bytes),
        head_decoder_fault<wrpc::HandleParams, ParamsEncoding>("params", wrpc::decode_handle_params, bytes),
        head_decoder_fault<wrpc::HandleResult, ResultEncoding>("result", wrpc::decode_handle_result, bytes),
        head_decoder_fault<std::optional<wrpc_http::Fields>, TrailersEncoding>("trailers",
                                                                               wrpc::decode_trailers, bytes),
        stream_decoder_fault(bytes)}) {
    if (!fault.empty()) return fault;
  }
  return "";
}

// ---------------------------------------------------------------------------------------
// NATS protocol parser: bytes from the server.
// ---------------------------------------------------------------------------------------

using wrpc_http::detail::NatsParser;

// What the parser reported, in order, with every field of every message: reading each field
// lets the sanitizers check it, and comparing two logs compares two parses.
struct NatsParseLog {
  std::string events;
  bool rejected = false;
};

inline NatsParser::Events recording_into(std::string& events) {
  NatsParser::Events on;
  on.msg = [&events](wrpc_http::nats::Message& message, uint64_t sid) {
    events += "MSG sid=" + std::to_string(sid) + " subject=" + message.subject + " reply=" + message.reply +
              " status=" + std::to_string(message.status) + " status_text=" + message.status_text;
    for (const auto& header : message.headers) events += " header=" + header.first + ":" + header.second;
    events += " data=" + message.data + " no_responders=" + std::to_string(message.no_responders()) + "\n";
  };
  on.info = [&events](const std::string& json) { events += "INFO " + json + "\n"; };
  on.ping = [&events] { events += "PING\n"; };
  on.pong = [&events] { events += "PONG\n"; };
  on.ok = [&events] { events += "+OK\n"; };
  on.err = [&events](const std::string& text) { events += "-ERR " + text + "\n"; };
  return on;
}

// Feeds `stream` whole, or in pieces of 1..64 bytes whose sizes cycle through its first 8
// bytes. nats::Error is how the parser rejects bytes; it ends the parse.
inline NatsParseLog parse_nats(const std::string& stream, bool in_pieces) {
  NatsParseLog log;
  NatsParser parser(recording_into(log.events));
  const size_t size_bytes = stream.size() < 8 ? stream.size() : 8;
  try {
    for (size_t at = 0, piece = 0; at < stream.size(); ++piece) {
      const size_t wanted =
          in_pieces ? 1 + static_cast<unsigned char>(stream[piece % size_bytes]) % 64 : stream.size();
      const size_t size = wanted < stream.size() - at ? wanted : stream.size() - at;
      parser.feed(stream.data() + at, size);
      at += size;
    }
  } catch (const wrpc_http::nats::Error&) {
    log.rejected = true;
  }
  return log;
}

inline std::string nats_parser_fault(const std::string& stream) {
  const NatsParseLog whole = parse_nats(stream, false);
  const NatsParseLog pieces = parse_nats(stream, true);
  // A line longer than the control-line limit is rejected as soon as that much is buffered
  // without a CRLF, which depends on the split; below the limit the split must not matter.
  if (stream.size() <= wrpc_http::nats::ProtocolLimits{}.max_control_line &&
      (whole.events != pieces.events || whole.rejected != pieces.rejected))
    return "NATS: the events depend on how the bytes were split";
  return "";
}

// ---------------------------------------------------------------------------------------
// Host data (stdin line from the host) and link definitions (JSON on linkdefs.put/del).
// ---------------------------------------------------------------------------------------

// Accepted host data in brief, or "rejected": std::invalid_argument is how the parsers
// refuse input.
template <class Parse>
std::string host_data_outcome(Parse parse) {
  try {
    const wrpc_http::HostData host = parse();
    return "accepted provider_key=" + host.provider_key + " host_id=" + host.host_id +
           " url=" + host.lattice_rpc_url + " links=" + std::to_string(host.link_definitions.size()) +
           " config=" + std::to_string(host.config.size()) + " log_level=" + host.log_level;
  } catch (const std::invalid_argument&) {
    return "rejected";
  }
}

inline std::string host_data_fault(const std::string& text) {
  // The same JSON must mean the same whether given as JSON or as the host's base64 line.
  const std::string as_json = host_data_outcome([&] { return wrpc_http::HostData::parse_json(text); });
  const std::string as_line = host_data_outcome(
      [&] { return wrpc_http::HostData::parse_base64(wrpc_http::detail::base64_encode(text) + "\n"); });
  if (as_json != as_line)
    return "host data: parse_json says '" + as_json + "', parse_base64 says '" + as_line + "'";
  // The raw bytes as a stdin line: mostly not base64, which must be a clean rejection.
  host_data_outcome([&] { return wrpc_http::HostData::parse_base64(text); });

  // A link message is parsed by the provider, whose JSON errors it catches; from_json itself
  // may only throw std::invalid_argument.
  const nlohmann::json link = nlohmann::json::parse(text, nullptr, false);
  if (link.is_discarded()) return "";
  try {
    wrpc_http::LinkDefinition::from_json(link);
  } catch (const std::invalid_argument&) {
  }
  return "";
}

// ---------------------------------------------------------------------------------------
// HTTP edge: request heads and chunked bodies from any client.
// ---------------------------------------------------------------------------------------

namespace http1 = wrpc_http::detail::http1;

// The head parser never reads past the head it accepts, agrees with itself on every prefix
// (a prefix of a request is never a whole one), and accepts only fields it could forward.
inline std::string http_head_fault(const std::string& bytes) {
  http1::Limits limits;
  http1::Head head;
  auto whole = http1::parse_request_head(bytes.data(), bytes.size(), limits, head);
  if (whole.state == http1::HeadParse::State::refused) {
    int status = http1::describe(whole.refusal).status;
    if (status < 400 || status > 599) return "a refusal without an error status";
    return "";
  }
  if (whole.state == http1::HeadParse::State::incomplete) return "";
  if (whole.consumed == 0 || whole.consumed > bytes.size()) return "consumed outside the input";
  for (auto& f : head.fields) {
    if (!http1::is_token(f.first)) return "accepted a field name that is not a token";
    for (unsigned char c : f.second)
      if (!http1::is_field_value_byte(c)) return "accepted a control byte in a field value";
  }
  if (head.framing == http1::Framing::length && head.content_length > 999999999999999999ull)
    return "accepted a Content-Length of more than 18 digits";
  http1::Head again;
  auto exact = http1::parse_request_head(bytes.data(), whole.consumed, limits, again);
  if (exact.state != http1::HeadParse::State::complete || exact.consumed != whole.consumed)
    return "the head alone parses differently from the head with what follows";
  for (size_t cut : {whole.consumed - 1, whole.consumed / 2}) {
    http1::Head part;
    if (http1::parse_request_head(bytes.data(), cut, limits, part).state == http1::HeadParse::State::complete)
      return "a prefix of the head parsed as a whole head";
  }
  return "";
}

struct ChunkedOutcome {
  std::string body;
  size_t consumed = 0;
  bool done = false;
  http1::Refusal refusal = http1::Refusal::none;
};

inline ChunkedOutcome decode_chunked(const std::string& bytes, size_t piece) {
  http1::Limits limits;
  http1::ChunkedDecoder decoder(limits);
  ChunkedOutcome out;
  while (out.consumed < bytes.size() && !decoder.done() && decoder.refusal() == http1::Refusal::none) {
    size_t n = std::min(piece, bytes.size() - out.consumed);
    size_t used = decoder.decode(bytes.data() + out.consumed, n, out.body);
    out.consumed += used;
    if (used < n) break;  // stopped inside the piece: done or refused
  }
  out.done = decoder.done();
  out.refusal = decoder.refusal();
  return out;
}

// The chunked decoder gives the same body, end and refusal whether its input comes whole or
// byte by byte, and never consumes past the end of the coding.
inline std::string chunked_fault(const std::string& bytes) {
  auto whole = decode_chunked(bytes, bytes.size() + 1);
  auto bytewise = decode_chunked(bytes, 1);
  if (whole.body != bytewise.body || whole.done != bytewise.done || whole.refusal != bytewise.refusal)
    return "whole and byte-by-byte decoding disagree";
  if (whole.done && whole.consumed != bytewise.consumed) return "the end of the coding depends on how it arrived";
  if (whole.consumed > bytes.size() || whole.body.size() > bytes.size()) return "decoded more than it was given";
  if (whole.done && whole.refusal != http1::Refusal::none) return "both done and refused";
  return "";
}

#ifdef WRPC_HTTP_NGHTTP2_SUPPORT
// The head of a response the edge wrote for an HTTP/2 stream (HTTP/2 front): a refusal is an
// exception; a head it takes is whole, its fields are tokens and field values, and no prefix of
// it parses as a head.
inline std::string stream_response_head_fault(const std::string& bytes) {
  using wrpc_http::detail::StreamResponseHead;
  const size_t max_bytes = 64 * 1024;
  StreamResponseHead head;
  size_t used = 0;
  try {
    used = wrpc_http::detail::parse_stream_response_head(bytes, max_bytes, false, head);
  } catch (const std::runtime_error&) {
    return "";
  }
  if (used == 0) return bytes.size() > max_bytes + 4 ? "took no head from more than the limit" : "";
  if (used > bytes.size() || bytes.compare(used - 4, 4, "\r\n\r\n") != 0) return "a head that does not end its bytes";
  if (head.status < 0 || head.status > 999) return "a status of more than three digits";
  for (auto& f : head.fields) {
    if (!http1::is_token(f.first)) return "accepted a field name that is not a token";
    for (unsigned char c : f.second)
      if (!http1::is_field_value_byte(c)) return "accepted a control byte in a field value";
  }
  StreamResponseHead part;
  try {
    if (wrpc_http::detail::parse_stream_response_head(bytes.substr(0, used - 1), max_bytes, false, part) != 0)
      return "a prefix of the head parsed as a whole head";
  } catch (const std::runtime_error&) {
  }
  return "";
}
#endif

// ---------------------------------------------------------------------------------------
// A fuzz target's body: `check` on the fuzzer's input. A fault is a finding: printed, then an
// abort, so that libFuzzer stops and saves the input.
// ---------------------------------------------------------------------------------------

inline int check_fuzz_input(std::string (*check)(const std::string&), const uint8_t* data, size_t size) {
  const std::string fault = check(std::string(reinterpret_cast<const char*>(data), size));
  if (!fault.empty()) {
    std::fprintf(stderr, "finding: %s\n", fault.c_str());
    std::abort();
  }
  return 0;
}

}  // namespace fuzz_checks

#endif  // WRPC_HTTP_FUZZ_CHECKS_HPP
