package main

import (
	"bytes"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// hexBytes reads the space-separated hex notation of WRPC_VECTORS.md.
func hexBytes(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func str(s string) *string { return &s }

func mustRequest(t *testing.T, method, url string, header http.Header) *http.Request {
	t.Helper()
	r := httptest.NewRequest(method, url, nil)
	r.Header = header
	return r
}

func TestEncodeParamsVector1(t *testing.T) {
	got := encodeParams(requestHead{
		method:        "GET",
		pathWithQuery: str("/proxy?x=1"),
		scheme:        str("HTTP"),
		authority:     str("localhost:8080"),
		headers: []field{
			{name: "accept", values: [][]byte{[]byte("*/*")}},
			{name: "x-multi", values: [][]byte{[]byte("a"), []byte("b")}},
		},
	})
	want := hexBytes("00 00 00 01 0a 2f 70 72 6f 78 79 3f 78 3d 31 01 00 01 0e 6c 6f 63 61 6c 68 6f 73 74 3a 38 30 38 30 02 06 61 63 63 65 70 74 01 03 2a 2f 2a 07 78 2d 6d 75 6c 74 69 02 01 61 01 62")
	if !bytes.Equal(got, want) {
		t.Fatalf("got  % x\nwant % x", got, want)
	}
}

func TestEncodeParamsVector2(t *testing.T) {
	got := encodeParams(requestHead{method: "PURGE", pathWithQuery: str("/")})
	want := hexBytes("00 00 09 05 50 55 52 47 45 01 01 2f 00 00 00")
	if !bytes.Equal(got, want) {
		t.Fatalf("got  % x\nwant % x", got, want)
	}
}

func TestRequestHeadMergesHeaderNames(t *testing.T) {
	h := requestHeadOf(mustRequest(t, "GET", "http://example.com/proxy/a?b=c",
		map[string][]string{"X-Multi": {"a"}, "x-multi": {"b"}, "Accept": {"*/*"}}))
	if *h.pathWithQuery != "/proxy/a?b=c" || *h.authority != "example.com" || *h.scheme != "HTTP" {
		t.Fatalf("bad head %+v", h)
	}
	want := []field{
		{name: "accept", values: [][]byte{[]byte("*/*")}},
		{name: "x-multi", values: [][]byte{[]byte("a"), []byte("b")}},
	}
	// Map order decides which spelling's values come first.
	if got := h.headers; len(got) == 2 && string(got[1].values[0]) == "b" {
		want[1].values[0], want[1].values[1] = want[1].values[1], want[1].values[0]
	}
	if !reflect.DeepEqual(h.headers, want) {
		t.Fatalf("headers %q, want %q", h.headers, want)
	}
}

// The body vector (section 3): chunk "hello", end chunk, as the gateway
// decodes it on the response side, split at every possible point.
func TestChunkReaderVector3(t *testing.T) {
	stream := hexBytes("05 68 65 6c 6c 6f 00")
	for split := 0; split <= len(stream); split++ {
		var c chunkReader
		var out []byte
		emit := func(p []byte) error { out = append(out, p...); return nil }
		done1, err1 := c.feed(stream[:split], emit)
		done2, err2 := c.feed(stream[split:], emit)
		if err1 != nil || err2 != nil || done1 != (split == len(stream)) || !done2 && split < len(stream) {
			t.Fatalf("split %d: done %v %v, errors %v %v", split, done1, done2, err1, err2)
		}
		if string(out) != "hello" {
			t.Fatalf("split %d: got %q", split, out)
		}
	}
}

func TestChunkReaderMultiByteLength(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 300)
	stream := append(appendULEB(nil, 300), data...) // 300 = ac 02
	stream = append(stream, 0)
	var c chunkReader
	var out []byte
	for _, b := range stream { // one byte per message
		if _, err := c.feed([]byte{b}, func(p []byte) error { out = append(out, p...); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if !c.done || !bytes.Equal(out, data) {
		t.Fatalf("done %v, %d bytes", c.done, len(out))
	}
}

func TestDecodeResultHeadVector5(t *testing.T) {
	b := hexBytes("00 00 00 c8 01 01 0c 63 6f 6e 74 65 6e 74 2d 74 79 70 65 01 0a 74 65 78 74 2f 70 6c 61 69 6e")
	for i := 0; i < len(b); i++ {
		if _, err := decodeResultHead(b[:i]); err != errShort {
			t.Fatalf("prefix of %d bytes: err %v, want errShort", i, err)
		}
	}
	head, err := decodeResultHead(b)
	if err != nil {
		t.Fatal(err)
	}
	want := resultHead{ok: true, status: 200, headers: []field{{name: "content-type", values: [][]byte{[]byte("text/plain")}}}, trailersPending: true}
	if !reflect.DeepEqual(head, want) {
		t.Fatalf("got %+v", head)
	}
}

func TestDecodeResultHeadStatuses(t *testing.T) {
	for hexStatus, want := range map[string]uint16{"94 03": 404, "a2 03": 418} {
		head, err := decodeResultHead(hexBytes("00 00 00 " + hexStatus + " 00"))
		if err != nil || head.status != want {
			t.Fatalf("%s: got %d, %v", hexStatus, head.status, err)
		}
	}
	// Trailers sent ready (some, one field) before the status.
	head, err := decodeResultHead(hexBytes("00 00 01 01 01 05 78 2d 73 75 6d 01 01 31 cc 01 00"))
	if err != nil || head.status != 204 || head.trailersPending {
		t.Fatalf("ready trailers: got %+v, %v", head, err)
	}
	if _, err := decodeResultHead(hexBytes("00 00 00 80 80 04 00")); err == nil || err == errShort {
		t.Fatalf("status 65536 accepted: %v", err)
	}
}

func TestDecodeResultHeadVector6(t *testing.T) {
	for s, want := range map[string]uint32{"01 26 01 04 62 6f 6f 6d": 38, "01 08": 8} {
		head, err := decodeResultHead(hexBytes(s))
		if err != nil || head.ok || head.errCase != want {
			t.Fatalf("%s: got %+v, %v", s, head, err)
		}
	}
	if got := errorCodeStatus(38); got != 500 {
		t.Fatalf("internal-error -> %d", got)
	}
	if got := errorCodeStatus(2); got != 502 {
		t.Fatalf("destination-not-found -> %d", got)
	}
}
