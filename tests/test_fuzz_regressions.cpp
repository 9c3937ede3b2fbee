// Inputs from fuzzing (fuzz/, `make fuzz`) replayed through the checks the fuzz targets run:
// the committed seeds, and every input that ever crashed or misbehaved, one test per finding.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../fuzz/fuzz_checks.hpp"

namespace {

// The seed files of one fuzz target, read from the repository root where the tests run.
std::vector<std::pair<std::string, std::string>> seeds_of(const std::string &target) {
  std::vector<std::pair<std::string, std::string>> seeds;
  for (const auto &entry : std::filesystem::directory_iterator("fuzz/corpus/" + target)) {
    std::ifstream in(entry.path(), std::ios::binary);
    seeds.emplace_back(entry.path().filename().string(),
                       std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  }
  std::sort(seeds.begin(), seeds.end());
  return seeds;
}

template <class Check>
void check_seeds(const std::string &target, Check fault_of) {
  const auto seeds = seeds_of(target);
  REQUIRE(seeds.size() >= 10);
  for (const auto &seed : seeds) {
    INFO("seed ", target, "/", seed.first);
    CHECK(fault_of(seed.second) == "");
  }
}

}  // namespace

TEST_CASE("fuzz seeds: the wRPC decoder seeds pass the decoder checks") {
  check_seeds("wrpc_decoder", fuzz_checks::wrpc_decoder_fault);
}

TEST_CASE("fuzz seeds: the NATS protocol seeds pass the parser checks") {
  check_seeds("nats_parser", fuzz_checks::nats_parser_fault);
}

TEST_CASE("fuzz seeds: the host data and link seeds pass the host data checks") {
  check_seeds("host_data", fuzz_checks::host_data_fault);
}

// Found by fuzz_wrpc_decoder: read_s32 after a failed read_char consumed the next byte and
// returned 5, where a failed reader must return the default and consume nothing.
TEST_CASE("fuzz regression: a signed integer read after a failure consumes nothing and returns zero") {
  // Two reads (char, then s32) of the data ff 05: ff is no UTF-8 lead byte.
  CHECK(fuzz_checks::value_reader_fault(std::string("\x02\x0a\x06\xff\x05", 5)) == "");

  wrpc_http::detail::ValueReader reader("\xff\x05", 2);
  reader.read_char();
  REQUIRE(reader.status() == wrpc_http::detail::DecodeStatus::error);
  CHECK(reader.read_s32() == 0);
  CHECK(reader.position() == 0);
}

// Found by fuzz_nats_parser: "INFO \r\n" threw std::out_of_range out of NatsParser::feed.
TEST_CASE("fuzz regression: a NATS operation followed only by blanks is the operation without arguments") {
  CHECK(fuzz_checks::nats_parser_fault("PING \r\nINFO \t\r\n-ERR \r\n") == "");
  const auto log = fuzz_checks::parse_nats("PING \r\nINFO \t\r\n-ERR \r\n", false);
  CHECK_FALSE(log.rejected);
  CHECK(log.events == "PING\nINFO \n-ERR \n");
}

// Found by a hand-made input the fuzzer cannot reach within 16 KiB: copying JSON recurses per level.
TEST_CASE("fuzz regression: host data nested hundreds of thousands of levels deep is refused, not a stack overflow") {
  const size_t depth = 300000;
  std::string text = R"({"provider_key":"p","otel_config":)";
  for (size_t i = 0; i < depth; ++i) text += R"({"a":)";
  text += "1" + std::string(depth, '}') + "}";
  CHECK(fuzz_checks::host_data_fault(text) == "");
  CHECK_THROWS_AS(wrpc_http::HostData::parse_json(text), std::invalid_argument);
}

TEST_CASE("fuzz seeds: the HTTP/2 stream response head seeds pass the parser checks") {
  check_seeds("stream_response_head", fuzz_checks::stream_response_head_fault);
}
