// The drop-in check: a file that includes only the header compiles with plain
// `g++ -std=c++17` (no feature macros, no project include paths).
#include "../wrpc_http_provider.hpp"

int main() { return wrpc_http::wrpc::handle_subject("default", "x").empty() ? 1 : 0; }
