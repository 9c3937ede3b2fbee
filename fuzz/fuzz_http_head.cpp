// libFuzzer target: the HTTP/1.1 request-head parser on bytes any client sends
// (fuzz_checks.hpp says what is checked).
#include <cstddef>
#include <cstdint>

#include "fuzz_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz_checks::check_fuzz_input(fuzz_checks::http_head_fault, data, size);
}
