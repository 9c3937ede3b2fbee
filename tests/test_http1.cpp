// The HTTP edge's request-head parser and chunked decoder (RFC 9112), byte by byte.
#include <doctest/doctest.h>

#include "../wrpc_http_provider.hpp"

namespace {

using namespace wrpc_http::detail::http1;

struct Parsed {
  HeadParse result;
  Head head;
};

Parsed parse(const std::string &bytes, const Limits &limits = {}) {
  Parsed p;
  p.result = parse_request_head(bytes.data(), bytes.size(), limits, p.head);
  return p;
}

Refusal refusal_of(const std::string &bytes, const Limits &limits = {}) {
  auto p = parse(bytes, limits);
  REQUIRE(p.result.state == HeadParse::State::refused);
  return p.result.refusal;
}

struct Decoded {
  std::string body;
  size_t consumed = 0;
  bool done = false;
  Refusal refusal = Refusal::none;
  FieldList trailers;
};

Decoded decode(const std::string &bytes, size_t piece = SIZE_MAX) {
  ChunkedDecoder decoder{Limits{}};
  Decoded d;
  while (d.consumed < bytes.size() && !decoder.done() && decoder.refusal() == Refusal::none) {
    size_t n = std::min(piece, bytes.size() - d.consumed);
    size_t used = decoder.decode(bytes.data() + d.consumed, n, d.body);
    d.consumed += used;
    if (used < n) break;
  }
  d.done = decoder.done();
  d.refusal = decoder.refusal();
  d.trailers = decoder.trailers();
  return d;
}

}  // namespace

TEST_SUITE("http1") {

TEST_CASE("a complete head is parsed with its fields byte-exact and stops at the empty line") {
  std::string head = "GET /a?b=%41 HTTP/1.1\r\nHost: ex%41mple.com\r\nX-V:  a%0d%0ab \r\n\r\n";
  auto p = parse(head + "NEXT");
  REQUIRE(p.result.state == HeadParse::State::complete);
  CHECK(p.result.consumed == head.size());
  CHECK(p.head.method == "GET");
  CHECK(p.head.path_with_query == "/a?b=%41");
  CHECK(p.head.authority == "ex%41mple.com");
  REQUIRE(p.head.fields.size() == 2);
  CHECK(p.head.fields[1] == std::make_pair(std::string("X-V"), std::string("a%0d%0ab")));
  CHECK(p.head.framing == Framing::none);
  CHECK(p.head.keep_alive);
}

TEST_CASE("a head not yet complete asks for more bytes") {
  CHECK(parse("GET / HTTP/1.1\r\nHost: x\r\n").result.state == HeadParse::State::incomplete);
  CHECK(parse("GET / HT").result.state == HeadParse::State::incomplete);
}

TEST_CASE("empty lines before the request line are skipped") {
  auto p = parse("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(p.result.state == HeadParse::State::complete);
}

TEST_CASE("a bare LF ends no line") {
  CHECK(refusal_of("GET / HTTP/1.1\nHost: x\n\n") == Refusal::bare_line_feed);
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\n\r\n") == Refusal::bare_line_feed);
}

TEST_CASE("obs-fold is refused") {
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n") == Refusal::obs_fold);
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n") == Refusal::obs_fold);
}

TEST_CASE("whitespace before the colon is refused") {
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n") == Refusal::space_before_colon);
}

TEST_CASE("control bytes in field names and values are refused") {
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nX\x01: a\r\n\r\n") == Refusal::bad_field_name);
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nX: a\x7f\r\n\r\n") == Refusal::bad_field_value);
  CHECK(refusal_of(std::string("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", 36)) == Refusal::bad_field_value);
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n") == Refusal::bad_field_value);
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n") == Refusal::bad_field_name);
}

TEST_CASE("a horizontal tab in a field value is kept") {
  auto p = parse("GET / HTTP/1.1\r\nHost: x\r\nX: a\tb\r\n\r\n");
  REQUIRE(p.result.state == HeadParse::State::complete);
  CHECK(p.head.fields[1].second == "a\tb");
}

TEST_CASE("the request line is method SP target SP version, nothing else") {
  CHECK(refusal_of("GET  / HTTP/1.1\r\nHost: x\r\n\r\n") == Refusal::bad_request_line);
  CHECK(refusal_of("GET / HTTP/1.1 \r\nHost: x\r\n\r\n") == Refusal::bad_request_line);
  CHECK(refusal_of("GET\r\nHost: x\r\n\r\n") == Refusal::bad_request_line);
  CHECK(refusal_of("G(T / HTTP/1.1\r\nHost: x\r\n\r\n") == Refusal::bad_method);
  CHECK(refusal_of("GET / HTTP/1.2x\r\nHost: x\r\n\r\n") == Refusal::bad_version);
  CHECK(refusal_of("GET / HTTP/2.0\r\nHost: x\r\n\r\n") == Refusal::unsupported_version);
  CHECK(refusal_of("GET nopath HTTP/1.1\r\nHost: x\r\n\r\n") == Refusal::bad_target);
}

TEST_CASE("any method token is accepted; CONNECT is not implemented") {
  auto p = parse("PURGE /x HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(p.result.state == HeadParse::State::complete);
  CHECK(p.head.method == "PURGE");
  CHECK(refusal_of("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n") == Refusal::unsupported_method);
}

TEST_CASE("an absolute-form target gives the authority and the origin-form path") {
  auto p = parse("GET http://example.com:8080?q=1 HTTP/1.1\r\nHost: other\r\n\r\n");
  REQUIRE(p.result.state == HeadParse::State::complete);
  CHECK(p.head.authority == "example.com:8080");
  CHECK(p.head.path_with_query == "/?q=1");
  CHECK(p.head.scheme == "http");
  CHECK(refusal_of("GET http://user@example.com/ HTTP/1.1\r\nHost: x\r\n\r\n") == Refusal::bad_target);
}

TEST_CASE("the asterisk form belongs to OPTIONS only") {
  CHECK(parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").result.state == HeadParse::State::complete);
  CHECK(refusal_of("GET * HTTP/1.1\r\nHost: x\r\n\r\n") == Refusal::bad_target);
}

TEST_CASE("HTTP/1.1 needs exactly one Host") {
  CHECK(refusal_of("GET / HTTP/1.1\r\n\r\n") == Refusal::missing_host);
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == Refusal::duplicate_host);
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n") == Refusal::bad_host);
  CHECK(parse("GET / HTTP/1.0\r\n\r\n").result.state == HeadParse::State::complete);
}

TEST_CASE("Content-Length is one value of at most 18 digits") {
  auto p = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\n\r\n");
  REQUIRE(p.result.state == HeadParse::State::complete);
  CHECK(p.head.framing == Framing::length);
  CHECK(p.head.content_length == 42);
  for (const char *bad : {"+5", "0x5", "-1", "", "5 5", "5,5", "1234567890123456789"})
    CHECK(refusal_of(std::string("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ") + bad + "\r\n\r\n") ==
          Refusal::bad_content_length);
  CHECK(refusal_of("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n") ==
        Refusal::duplicate_content_length);
}

TEST_CASE("Content-Length with Transfer-Encoding is refused") {
  CHECK(refusal_of("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n") ==
        Refusal::content_length_with_transfer_encoding);
}

TEST_CASE("Transfer-Encoding is exactly chunked, or refused") {
  auto p = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
  REQUIRE(p.result.state == HeadParse::State::complete);
  CHECK(p.head.framing == Framing::chunked);
  for (const char *coding : {"gzip", "foo", "identity, chunked", "chunked, chunked", "gzip, chunked"})
    CHECK(refusal_of(std::string("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ") + coding + "\r\n\r\n") ==
          Refusal::unsupported_transfer_encoding);
  CHECK(refusal_of("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") ==
        Refusal::bad_transfer_encoding);
  CHECK(refusal_of("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chu nked\r\n\r\n") == Refusal::bad_transfer_encoding);
  CHECK(refusal_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == Refusal::bad_transfer_encoding);
  CHECK(describe(Refusal::unsupported_transfer_encoding).status == 501);
}

TEST_CASE("Connection close and HTTP/1.0 end keep-alive") {
  CHECK_FALSE(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n").head.keep_alive);
  CHECK_FALSE(parse("GET / HTTP/1.0\r\n\r\n").head.keep_alive);
  CHECK(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").head.keep_alive);
}

TEST_CASE("Expect is 100-continue or refused with 417") {
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n").head.expect_continue);
  CHECK(refusal_of("POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n") == Refusal::unsupported_expectation);
  CHECK(describe(Refusal::unsupported_expectation).status == 417);
}

TEST_CASE("a head over the byte limit is refused with 431, complete or not") {
  Limits limits;
  limits.max_head_bytes = 64;
  std::string big = "GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(64, 'a') + "\r\n\r\n";
  CHECK(refusal_of(big, limits) == Refusal::head_too_large);
  CHECK(refusal_of(big.substr(0, 70), limits) == Refusal::head_too_large);
  CHECK(describe(Refusal::head_too_large).status == 431);
}

TEST_CASE("more fields than the limit are refused with 431") {
  Limits limits;
  limits.max_fields = 3;
  CHECK(refusal_of("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits) == Refusal::too_many_fields);
}

TEST_CASE("a request target over its limit is refused with 414") {
  Limits limits;
  limits.max_target_bytes = 8;
  CHECK(refusal_of("GET /123456789 HTTP/1.1\r\nHost: x\r\n\r\n", limits) == Refusal::target_too_long);
}

TEST_CASE("chunked bodies decode the same whole or byte by byte, stopping at their end") {
  std::string coding = "5;name=value\r\nhello\r\nA \t;x\r\n0123456789\r\n0\r\n\r\n";
  for (size_t piece : {size_t(1), size_t(3), SIZE_MAX}) {
    auto d = decode(coding + "GET / HTTP/1.1\r\n", piece);
    CHECK(d.done);
    CHECK(d.body == "hello0123456789");
    CHECK(d.consumed == coding.size());
  }
}

TEST_CASE("chunk sizes are hex digits only") {
  for (const char *bad : {"0x5\r\nhello\r\n", " 5\r\nhello\r\n", "+5\r\nhello\r\n", "5zz\r\nhello\r\n", "5 \r\nhello\r\n",
                          "\r\n"})
    CHECK(decode(bad).refusal == Refusal::bad_chunk_size);
  CHECK(decode("00000000000000005\r\n").refusal == Refusal::chunk_size_too_long);
}

TEST_CASE("chunk data not followed by CRLF is refused") {
  CHECK(decode("5\r\nhelloGET / HTTP/1.1\r\n").refusal == Refusal::missing_chunk_crlf);
  CHECK(decode("5\r\nhello\rX").refusal == Refusal::missing_chunk_crlf);
}

TEST_CASE("chunk extensions are skipped within a bound") {
  CHECK(decode("1;" + std::string(WRPC_HTTP_MAX_CHUNK_EXTENSION_BYTES + 1, 'a') + "\r\nx\r\n0\r\n\r\n").refusal ==
        Refusal::bad_chunk_extension);
  CHECK(decode("1;a\x01\r\nx\r\n0\r\n\r\n").refusal == Refusal::bad_chunk_extension);
}

TEST_CASE("trailers are parsed like header fields") {
  auto d = decode("0\r\nX-Checksum: abc\r\nX-Two:  2 \r\n\r\n");
  CHECK(d.done);
  REQUIRE(d.trailers.size() == 2);
  CHECK(d.trailers[0] == std::make_pair(std::string("X-Checksum"), std::string("abc")));
  CHECK(d.trailers[1].second == "2");
  CHECK(decode("0\r\nX : a\r\n\r\n").refusal == Refusal::space_before_colon);
  CHECK(decode("0\r\nX: a\n\r\n").refusal == Refusal::bare_line_feed);
}

TEST_CASE("a trailer section over the head limit is refused") {
  CHECK(decode("0\r\nX: " + std::string(WRPC_HTTP_MAX_REQUEST_HEAD_BYTES, 'a') + "\r\n\r\n").refusal ==
        Refusal::trailers_too_large);
}

}  // TEST_SUITE
