// libFuzzer target: the wRPC value decoders on bytes a peer sends: request params, response result, trailers
// and body stream chunks (fuzz_checks.hpp says what is checked).
#include <cstddef>
#include <cstdint>

#include "fuzz_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz_checks::check_fuzz_input(fuzz_checks::wrpc_decoder_fault, data, size);
}
