// libFuzzer target: host data (the host's stdin line) and link definitions (JSON from the lattice)
// (fuzz_checks.hpp says what is checked).
#include <cstddef>
#include <cstdint>

#include "fuzz_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz_checks::check_fuzz_input(fuzz_checks::host_data_fault, data, size);
}
