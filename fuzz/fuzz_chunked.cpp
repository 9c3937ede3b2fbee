// libFuzzer target: the chunked transfer-coding decoder on request bodies any client sends
// (fuzz_checks.hpp says what is checked).
#include <cstddef>
#include <cstdint>

#include "fuzz_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz_checks::check_fuzz_input(fuzz_checks::chunked_fault, data, size);
}
