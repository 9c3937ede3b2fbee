// libFuzzer target: the parser of the HTTP/1.1 response heads the edge writes for HTTP/2
// streams (fuzz_checks.hpp says what is checked).
#include <cstddef>
#include <cstdint>

#include "fuzz_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz_checks::check_fuzz_input(fuzz_checks::stream_response_head_fault, data, size);
}
