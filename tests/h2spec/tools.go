//go:build tools

// h2spec, the HTTP/2 conformance tester of tests/test_http2.cpp, pinned by this module's go.sum
// and built by make into build/h2spec.
package tools

import _ "github.com/summerwind/h2spec/cmd/h2spec"
