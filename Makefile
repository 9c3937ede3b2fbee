# wrpc-http-provider: a wasmCloud HTTP server provider in one C++ header.
#
#   make            build/http-server, build/demo-component, build/nats_lite, build/make_par
#   make test       every test, under AddressSanitizer+UBSan (installs missing Debian packages first)
#   make test-httplib  the edge tests built against cpp-httplib 0.18.7 (Debian 13) and 0.41.0
#                   (Debian sid), header-only; one of them: make test-httplib-0.41.0
#   make test-plain the same tests on optimized binaries
#   make demo       nats-server + demo component + provider on loopback, then two curls
#   make par        build/http-server.par.gz for `wash app deploy wadm.yaml`
#   make test-tsan  the tests under ThreadSanitizer
#   make bench      the benchmark against wasmCloud's Rust provider and a Go gateway (bench/results.md)
#   make bench-host the same in front of a real wasmCloud host and a Wasm component (bench/results-host.md)
#   make bench-ab BASELINE=<rev>  `/` and `/proxy` before (rev) and after (this tree), interleaved
#   make soak       wrk load through cycles of link, config, collector and NATS cluster events (SOAK_SECONDS, SOAK_CYCLES)
#   make interop    the provider against a wasmCloud host, wadm and wash, Rust's wRPC and a Wasm component (long first build)

CXX      ?= g++
CXXSTD   := -std=c++17
WARN     := -Wall -Wextra
HTTPLIB_CFLAGS := $(shell pkg-config --cflags cpp-httplib 2>/dev/null || echo -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT)
FEATURES := -DWRPC_HTTP_OPENSSL_SUPPORT -DWRPC_HTTP_SODIUM_SUPPORT -DWRPC_HTTP_NGHTTP2_SUPPORT
CXXFLAGS ?= -O2 -g
ALL_CXXFLAGS = $(CXXSTD) $(WARN) $(CXXFLAGS) $(FEATURES) $(HTTPLIB_CFLAGS) -I.
LDLIBS   := -lcpp-httplib -lssl -lcrypto -lsodium -lnghttp2 -lz -pthread

HEADER   := wrpc_http_provider.hpp
BUILD    ?= build
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian 12 package names: what the binaries and the demo need, and what only the tests add.
DEMO_PACKAGES := g++ make pkg-config libcpp-httplib-dev nlohmann-json3-dev libssl-dev libsodium-dev libnghttp2-dev zlib1g-dev \
                 nats-server curl
TEST_PACKAGES := doctest-dev openssl nghttp2-client golang-go golang-github-nats-io-go-nats-dev dpkg-dev libbrotli-dev libzstd-dev chromium
PACKAGES := $(DEMO_PACKAGES) $(TEST_PACKAGES)

BINARIES := $(BUILD)/http-server $(BUILD)/demo-component $(BUILD)/nats_lite $(BUILD)/make_par
TEST_SOURCES := $(wildcard tests/test_*.cpp)  # tests/dropin.cpp is compiled on its own
TEST_OBJECTS := $(patsubst tests/%.cpp,$(BUILD)/tests/%.o,$(TEST_SOURCES))

.PHONY: all deps test test-plain test-unit test-edge test-httplib test-go test-asan test-tsan demo par bench bench-host bench-ab \
        soak fuzz interop interop-build clean

all: $(BINARIES)

# Installs whatever of PACKAGES is missing (a fresh Debian 12 needs only this).
deps:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(BUILD)/http-server: main.cpp $(HEADER)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS)

$(BUILD)/demo-component: demo/demo_component.cpp $(HEADER)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS)

$(BUILD)/nats_lite: nats_lite/nats_lite.cpp $(HEADER)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS)

$(BUILD)/make_par: par/make_par.cpp $(HEADER)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS)

$(BUILD)/fault-component: tests/fault_component.cpp $(HEADER)
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) $< -o $@ $(LDLIBS)

$(BUILD)/tests/%.o: tests/%.cpp $(HEADER) tests/support.hpp tests/lattice.hpp \
                    fuzz/fuzz_checks.hpp
	@mkdir -p $(@D)
	$(CXX) $(ALL_CXXFLAGS) -c $< -o $@

# The drop-in check: the header alone, plain C++17, no feature macros.
$(BUILD)/tests/dropin.o: tests/dropin.cpp $(HEADER)
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -Wall -Wextra -c $< -o $@

$(BUILD)/tests/run-tests: $(TEST_OBJECTS)
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDLIBS)

# The HTTP edge tests alone (tests/test_edge.cpp), in a test binary of their own.
$(BUILD)/tests/run-edge-tests: $(BUILD)/tests/test_main.o $(BUILD)/tests/test_edge.o
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/nats_peer: tests/interop/nats_peer.go tests/go_build.sh
	tests/go_build.sh tests/interop $@

$(BUILD)/go-gateway: $(wildcard bench/go-gateway/*.go) tests/go_build.sh
	tests/go_build.sh bench/go-gateway $@

# The OpenTelemetry Collector of the telemetry tests (OTLP/HTTP receiver, file exporter), built
# once from the Go module proxy at the versions tests/otel/go.sum pins (a few minutes the
# first time), then cached in build/otel whatever BUILD is.
OTEL_COLLECTOR := build/otel/otel-file-collector
$(OTEL_COLLECTOR): tests/otel/main.go tests/otel/go.mod tests/otel/go.sum
	@mkdir -p $(@D)
	cd tests/otel && GOFLAGS=-mod=readonly nice -n 10 go build -o $(CURDIR)/$@ .

# h2spec, the HTTP/2 conformance tester of tests/test_http2.cpp, from the Go module proxy at
# the version tests/h2spec/go.sum pins, cached in build/h2spec whatever BUILD is.
H2SPEC := build/h2spec/h2spec
$(H2SPEC): tests/h2spec/tools.go tests/h2spec/go.mod tests/h2spec/go.sum
	@mkdir -p $(@D)
	cd tests/h2spec && GOFLAGS=-mod=readonly nice -n 10 go build -o $(CURDIR)/$@ github.com/summerwind/h2spec/cmd/h2spec

# The gRPC client of tests/test_http2.cpp (google.golang.org/grpc at the version
# tests/grpc/go.sum pins), cached in build/grpc whatever BUILD is.
GRPC_CLIENT := build/grpc/grpc-client
$(GRPC_CLIENT): tests/grpc/main.go tests/grpc/go.mod tests/grpc/go.sum
	@mkdir -p $(@D)
	cd tests/grpc && GOFLAGS=-mod=readonly nice -n 10 go build -o $(CURDIR)/$@ .

$(BUILD)/nats-probe: $(wildcard bench/nats-probe/*.go) tests/go_build.sh
	tests/go_build.sh bench/nats-probe $@

# wasmCloud's Rust HTTP server provider from crates.io, a benchmark anchor (bench/rust-provider,
# versions pinned by its Cargo.lock). A long build on 2 cores, so niced and cached here.
BENCH_CACHE   := build/bench-cache
RUST_PROVIDER := $(BENCH_CACHE)/rust-target/release/rust-http-server-provider
$(RUST_PROVIDER): $(wildcard bench/rust-provider/Cargo.*) $(wildcard bench/rust-provider/src/*.rs)
	cd bench/rust-provider && CARGO_TARGET_DIR=$(CURDIR)/$(BENCH_CACHE)/rust-target \
	  nice -n 10 cargo build --release --locked

# Every test, on binaries built with AddressSanitizer and UBSan (any finding fails the run).
SANITIZE_ASAN := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
test: deps
	$(MAKE) -j2 test-unit BUILD=build/asan CXXFLAGS="$(SANITIZE_ASAN)"
	$(MAKE) test-httplib
	$(MAKE) test-go

# The doctest suite: unit tests and integration tests against real processes.
test-unit: $(BINARIES) $(BUILD)/fault-component $(BUILD)/tests/dropin.o $(BUILD)/tests/run-tests $(BUILD)/nats_peer \
           $(OTEL_COLLECTOR) $(H2SPEC) $(GRPC_CLIENT)
	WRPC_HTTP_BUILD=$(BUILD) WRPC_HTTP_OTEL_COLLECTOR=$(OTEL_COLLECTOR) WRPC_HTTP_H2SPEC=$(H2SPEC) \
	  WRPC_HTTP_GRPC_CLIENT=$(GRPC_CLIENT) $(BUILD)/tests/run-tests
	tests/par_test.sh $(BUILD)/make_par $(BUILD)/http-server

test-edge: $(BUILD)/http-server $(BUILD)/demo-component $(BUILD)/fault-component $(BUILD)/tests/run-edge-tests
	WRPC_HTTP_BUILD=$(BUILD) $(BUILD)/tests/run-edge-tests -ts=edge

# The edge tests (ASan+UBSan) against newer cpp-httplib versions than Debian 12's, each used
# header-only from its Debian source package (tests/httplib_source.sh VERSION SUITE: apt-get
# source with a private apt directory, cached in build/httplib-VERSION), with the defines that
# suite builds its libcpp-httplib with. One recipe, test-httplib-VERSION, for each of them.
HTTPLIB_HEADER_ONLY := 0.18.7:trixie 0.41.0:sid
HTTPLIB_TESTS := $(foreach v,$(HTTPLIB_HEADER_ONLY),test-httplib-$(word 1,$(subst :, ,$(v))))
httplib_suite = $(word 2,$(subst :, ,$(filter $(1):%,$(HTTPLIB_HEADER_ONLY))))
HTTPLIB_HEADER_DEFINES := -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT \
                          -DCPPHTTPLIB_USE_POLL
HTTPLIB_HEADER_LDLIBS := -lssl -lcrypto -lsodium -lnghttp2 -lz -lbrotlienc -lbrotlidec -pthread
# sid builds 0.41.0 with zstd as well (its Build-Depends has libzstd-dev).
HTTPLIB_ZSTD_0.41.0 := yes
.PHONY: $(HTTPLIB_TESTS)
test-httplib: $(HTTPLIB_TESTS)
$(HTTPLIB_TESTS): test-httplib-%: deps
	include=$$(tests/httplib_source.sh $* $(call httplib_suite,$*)) && \
	$(MAKE) -j2 test-edge BUILD=build/httplib-$*/asan CXXFLAGS="$(SANITIZE_ASAN)" \
	  HTTPLIB_CFLAGS="-I$$include $(HTTPLIB_HEADER_DEFINES) $(if $(HTTPLIB_ZSTD_$*),-DCPPHTTPLIB_ZSTD_SUPPORT)" \
	  LDLIBS="$(HTTPLIB_HEADER_LDLIBS) $(if $(HTTPLIB_ZSTD_$*),-lzstd)"

test-go:
	cache=$$(mktemp -d) && cd bench/go-gateway && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
	  GOPROXY=off GOCACHE=$$cache go test -count=1 .; status=$$?; rm -rf $$cache; exit $$status

test-asan: test

# The same tests on optimized binaries without sanitizers.
test-plain: deps
	$(MAKE) -j2 test-unit
	$(MAKE) test-go

# Races in the child processes (provider, components, nats_lite) are logged to
# build/tsan/reports; any report fails the run.
test-tsan: deps
	rm -rf build/tsan/reports && mkdir -p build/tsan/reports
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp log_path=$(CURDIR)/build/tsan/reports/race" \
	  $(MAKE) -j2 test-unit BUILD=build/tsan CXXFLAGS="-O1 -g -fsanitize=thread"
	@if ls build/tsan/reports/race.* >/dev/null 2>&1; then cat build/tsan/reports/race.*; exit 1; fi

# Only what the demo needs is installed first (no test tools, no browser).
demo:
	$(MAKE) deps PACKAGES="$(DEMO_PACKAGES)"
	$(MAKE) all
	demo/run.sh $(BUILD)

KEYS_DIR ?= $(if $(WASH_KEYS),$(WASH_KEYS),$(HOME)/.wash/keys)
par: $(BUILD)/http-server.par.gz

$(BUILD)/http-server.par.gz: $(BUILD)/http-server $(BUILD)/make_par
	$(BUILD)/make_par --bin $(BUILD)/http-server --name http-server --vendor wrpc-http-provider \
	  --version 0.1.0 --rev 0 --keys-dir $(KEYS_DIR) --out $@

bench: deps all $(BUILD)/go-gateway $(BUILD)/nats-probe $(RUST_PROVIDER)
	bench/run.sh $(BUILD) $(RUST_PROVIDER)

# Before/after: `/` and `/proxy` through this tree's provider and BASELINE's (a git revision).
bench-ab: deps all
	@test -n "$(BASELINE)" || { echo "usage: make bench-ab BASELINE=<git revision>"; exit 2; }
	bench/ab.sh $(BUILD) $(BASELINE)

# The same benchmark in front of a real wasmCloud host (0.27.1, the interop's build) serving the
# interop's Wasm component instead of build/demo-component: GET and POST 1 KiB, no streaming
# (bench/results-host.md). Reuses the interop's cached builds.
bench-host: deps all $(BUILD)/go-gateway $(BUILD)/nats-probe $(RUST_PROVIDER)
	$(MAKE) interop-build INTEROP_HOST_VERSIONS=0.27.1
	BENCH_HOST=$(call interop_host_bin,0.27.1) BENCH_CTL=$(BUILD)/interop/cargo/release/interop-ctl \
	  BENCH_COMPONENT_WASM=$(BUILD)/interop/component/component.wasm BENCH_NATS_SERVER=$(INTEROP_NATS_SERVER) \
	  bench/run.sh $(BUILD) $(RUST_PROVIDER)

# The soak (bench/soak.sh, not part of `make test`): a 3-node NATS cluster, the demo component,
# the provider (host data on stdin, telemetry to the collector) under steady wrk load on `/` and
# `/proxy` while the link is deleted and put back, the config changes (CORS only), the collector
# and NATS nodes restart and the provider's node goes lame duck, that cycle of events
# SOAK_CYCLES times (at least 2). Fails on a failed request no by-design rule explains, or when
# RSS, threads or fds grow by 10% or more from the end of the first cycle (the warm-up of every
# path) to the end. `make soak SOAK_SECONDS=60` for a short run (phases of 5 s).
SOAK_SECONDS ?= 300
SOAK_CYCLES ?= 3
soak: deps all $(BUILD)/nats_lite $(OTEL_COLLECTOR)
	$(MAKE) deps PACKAGES="wrk"
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_CYCLES=$(SOAK_CYCLES) bench/soak.sh $(BUILD) $(OTEL_COLLECTOR)

# The provider against peers written elsewhere (interop/run.sh): wasmCloud 1.x hosts, Rust's
# wRPC over NATS, Wasm components built with componentize-js (componentize-py for host 0.20.0),
# and the user's flow with wadm and wash (`wash app deploy wadm.yaml`). Builds are cached in
# $(BUILD)/interop (first build: wasmtime, the hosts and wash, long); not part of `make test`.
INTEROP_CARGO := CARGO_TARGET_DIR=$(CURDIR)/$(BUILD)/interop/cargo CARGO_BUILD_JOBS=2 \
                 RUSTC_WRAPPER=$(CURDIR)/interop/rust/rustc-wrapper.sh nice -n 10 cargo build --release --locked
# The lattice's nats-server: wadm 0.21's streams use sources with subject transforms, which need
# nats-server >= 2.10 (Debian 12 has 2.9.10), so a pinned release is built from its Go module.
INTEROP_NATS_VERSION := v2.11.3
INTEROP_NATS_SERVER  := $(BUILD)/interop/nats-server-$(INTEROP_NATS_VERSION)/nats-server
$(INTEROP_NATS_SERVER):
	GOBIN=$(CURDIR)/$(@D) GOFLAGS=-mod=mod nice -n 10 go install github.com/nats-io/nats-server/v2@$(INTEROP_NATS_VERSION)
# wash, the 1.x CLI users run, from crates.io with the Cargo.lock it was published with.
INTEROP_WASH_VERSION := 0.43.0
INTEROP_WASH := $(BUILD)/interop/wash-$(INTEROP_WASH_VERSION)/bin/wash
$(INTEROP_WASH):
	CARGO_TARGET_DIR=$(CURDIR)/$(BUILD)/interop/cargo-wash CARGO_BUILD_JOBS=2 nice -n 10 \
	  cargo install --locked wash --version $(INTEROP_WASH_VERSION) --root $(CURDIR)/$(BUILD)/interop/wash-$(INTEROP_WASH_VERSION)

# The host versions the host and wash sections run against: 0.27.1 (wasmCloud 1.9) is
# interop/rust/host; each other VERSION is interop/hosts/VERSION, its own crate and Cargo.lock
# with the same main, built into $(BUILD)/interop/cargo-hosts.
INTEROP_HOST_VERSIONS ?= 0.27.1 0.25.0 0.24.0 0.20.0
interop_host_bin = $(if $(filter 0.27.1,$(1)),$(BUILD)/interop/cargo/release/interop-host,$(BUILD)/interop/cargo-hosts/release/interop-host-$(subst .,-,$(1)))
# The component each host serves: 0.20.0 serves only a wasi:http 0.2.0 export, so it gets
# interop/component-wasi-0.2.0 (the same paths in Python); the others the componentize-js one.
WASI_020_COMPONENT := $(BUILD)/interop/component-wasi-0.2.0/component.wasm
interop_host_component = $(if $(filter 0.20.0,$(1)),$(WASI_020_COMPONENT),$(BUILD)/interop/component/component.wasm)
INTEROP_HOSTS = $(foreach v,$(INTEROP_HOST_VERSIONS),$(v)=$(call interop_host_bin,$(v))=$(call interop_host_component,$(v)))

interop-build: all par $(INTEROP_NATS_SERVER) $(INTEROP_WASH)
	interop/component/build.sh $(BUILD)/interop/component
	cd interop/rust && $(INTEROP_CARGO)
	cd interop/wadm && $(INTEROP_CARGO)
	set -e; for v in $(filter-out 0.27.1,$(INTEROP_HOST_VERSIONS)); do \
	  (cd interop/hosts/$$v && $(INTEROP_CARGO:$(BUILD)/interop/cargo=$(BUILD)/interop/cargo-hosts)); done
	$(if $(filter 0.20.0,$(INTEROP_HOST_VERSIONS)),interop/component-wasi-0.2.0/build.sh $(dir $(WASI_020_COMPONENT)))

interop: deps
	$(MAKE) interop-build
	INTEROP_NATS_SERVER=$(INTEROP_NATS_SERVER) INTEROP_WASH=$(INTEROP_WASH) INTEROP_HOSTS="$(INTEROP_HOSTS)" \
	  interop/run.sh $(BUILD)

# libFuzzer targets (fuzz/): each parser of untrusted input under ASan+UBSan. `make fuzz` runs
# each for FUZZ_SECONDS on a scratch copy of its seed corpus and fails on the first finding.
FUZZ_TARGETS := wrpc_decoder nats_parser host_data http_head chunked stream_response_head
FUZZ_SECONDS ?= 300
FUZZ_CXXFLAGS = $(CXXSTD) $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined $(FEATURES) $(HTTPLIB_CFLAGS) -I.

$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.cpp fuzz/fuzz_checks.hpp $(HEADER)
	@mkdir -p $(@D)
	clang++ $(FUZZ_CXXFLAGS) $< -o $@

fuzz:
	$(MAKE) deps PACKAGES="clang libclang-rt-14-dev"
	$(MAKE) $(patsubst %,$(BUILD)/fuzz/fuzz_%,$(FUZZ_TARGETS))
	fuzz/run.sh $(BUILD)/fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf build
