package main

// The few pieces of the component-model value encoding (as wRPC uses it,
// see PROTOCOL.md section 4) that forwarding wrpc:http/incoming-handler.handle
// needs: an encoder for the request params and decoders for the result head
// and for the stream<u8> chunks of the response body.

import (
	"errors"
	"fmt"
)

// field is one entry of wasi:http `fields`: a name with all its values.
type field struct {
	name   string
	values [][]byte
}

// requestHead is everything of wrpc:http's `request` record except body and
// trailers, which this gateway always sends pending. nil means option none.
type requestHead struct {
	method        string // HTTP method as on the wire, e.g. "GET"
	pathWithQuery *string
	scheme        *string // "HTTP", "HTTPS" or any other scheme name
	authority     *string
	headers       []field
}

// wasi:http method cases 0..8; anything else is other(string), case 9.
var methodCase = map[string]uint64{
	"GET": 0, "HEAD": 1, "POST": 2, "PUT": 3, "DELETE": 4,
	"CONNECT": 5, "OPTIONS": 6, "TRACE": 7, "PATCH": 8,
}

func appendULEB(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// appendBytes encodes a string or a list<u8>: LEB128 length, then the bytes.
func appendBytes(b []byte, p []byte) []byte {
	return append(appendULEB(b, uint64(len(p))), p...)
}

func appendString(b []byte, s string) []byte {
	return append(appendULEB(b, uint64(len(s))), s...)
}

func appendOptionString(b []byte, s *string) []byte {
	if s == nil {
		return append(b, 0)
	}
	return appendString(append(b, 1), *s)
}

func appendFields(b []byte, fs []field) []byte {
	b = appendULEB(b, uint64(len(fs)))
	for _, f := range fs {
		b = appendString(b, f.name)
		b = appendULEB(b, uint64(len(f.values)))
		for _, v := range f.values {
			b = appendBytes(b, v)
		}
	}
	return b
}

// encodeParams encodes the root params of handle(request): the request record
// with body (stream) and trailers (future) both pending, so their contents go
// later on the params.0.0 and params.0.1 paths.
func encodeParams(r requestHead) []byte {
	b := []byte{0, 0} // body pending, trailers pending
	if c, ok := methodCase[r.method]; ok {
		b = appendULEB(b, c)
	} else {
		b = appendString(appendULEB(b, 9), r.method)
	}
	b = appendOptionString(b, r.pathWithQuery)
	switch {
	case r.scheme == nil:
		b = append(b, 0)
	case *r.scheme == "HTTP":
		b = append(b, 1, 0)
	case *r.scheme == "HTTPS":
		b = append(b, 1, 1)
	default:
		b = appendString(append(b, 1, 2), *r.scheme)
	}
	b = appendOptionString(b, r.authority)
	return appendFields(b, r.headers)
}

// errShort means "not enough bytes yet": wRPC channels are byte streams split
// into NATS messages anywhere, so the caller waits for more and retries.
var errShort = errors.New("incomplete value")

type decoder struct {
	b   []byte
	off int
}

func (d *decoder) byte() (byte, error) {
	if d.off >= len(d.b) {
		return 0, errShort
	}
	d.off++
	return d.b[d.off-1], nil
}

// uleb decodes an unsigned LEB128 value that must fit in the given bits.
func (d *decoder) uleb(bits uint) (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		c, err := d.byte()
		if err != nil {
			return 0, err
		}
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			if v>>bits != 0 {
				break
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("LEB128 value overflows u%d", bits)
}

func (d *decoder) bytes() ([]byte, error) {
	n, err := d.uleb(32)
	if err != nil {
		return nil, err
	}
	if uint64(len(d.b)-d.off) < n {
		return nil, errShort
	}
	d.off += int(n)
	return d.b[d.off-int(n) : d.off], nil
}

func (d *decoder) fields() ([]field, error) {
	n, err := d.uleb(32)
	if err != nil {
		return nil, err
	}
	var fs []field
	for i := uint64(0); i < n; i++ {
		name, err := d.bytes()
		if err != nil {
			return nil, err
		}
		nv, err := d.uleb(32)
		if err != nil {
			return nil, err
		}
		f := field{name: string(name)}
		for j := uint64(0); j < nv; j++ {
			v, err := d.bytes()
			if err != nil {
				return nil, err
			}
			f.values = append(f.values, v)
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// resultHead is the decoded start of result<response, error-code>.
type resultHead struct {
	ok              bool
	status          uint16  // when ok
	headers         []field // when ok
	trailersPending bool    // when ok: trailers follow on R_c.results.0.1
	errCase         uint32  // wasi:http error-code discriminant, when !ok
}

// decodeResultHead decodes the result up to and including the response
// headers, or errShort if b does not hold all of it yet. The error-code
// payload (if any) is not needed to pick an HTTP status, so it is not read.
func decodeResultHead(b []byte) (resultHead, error) {
	d := decoder{b: b}
	tag, err := d.byte()
	if err != nil {
		return resultHead{}, err
	}
	switch tag {
	case 0:
	case 1:
		c, err := d.uleb(32)
		return resultHead{errCase: uint32(c)}, err
	default:
		return resultHead{}, fmt.Errorf("bad result tag %#x", tag)
	}
	// Peers send the body stream pending; the inline form is ambiguous
	// between implementations (PROTOCOL.md section 4), so it is refused.
	if body, err := d.byte(); err != nil {
		return resultHead{}, err
	} else if body != 0 {
		return resultHead{}, fmt.Errorf("response body not sent pending (%#x)", body)
	}
	// Trailers may be pending (0) or ready: 1 + option<fields>.
	trailersPending := false
	switch trailers, err := d.byte(); {
	case err != nil:
		return resultHead{}, err
	case trailers == 0:
		trailersPending = true
	case trailers == 1:
		some, err := d.byte()
		if err != nil {
			return resultHead{}, err
		}
		if some == 1 {
			if _, err := d.fields(); err != nil {
				return resultHead{}, err
			}
		}
	case trailers != 0:
		return resultHead{}, fmt.Errorf("bad trailers future status %#x", trailers)
	}
	status, err := d.uleb(16)
	if err != nil {
		return resultHead{}, err
	}
	headers, err := d.fields()
	if err != nil {
		return resultHead{}, err
	}
	return resultHead{ok: true, status: uint16(status), headers: headers, trailersPending: trailersPending}, nil
}

// chunkReader decodes a pending stream<u8>: chunks of LEB128 length + bytes,
// ended by a zero-length chunk. It keeps state across feed calls because a
// chunk, or even its length prefix, may be split across NATS messages.
type chunkReader struct {
	remaining uint64 // bytes left in the current chunk
	length    uint64 // length prefix being decoded
	shift     uint
	done      bool // end chunk seen
}

// feed passes the stream's bytes in p to emit, and reports whether the end
// chunk has been seen.
func (c *chunkReader) feed(p []byte, emit func([]byte) error) (bool, error) {
	for len(p) > 0 && !c.done {
		if c.remaining > 0 {
			n := uint64(len(p))
			if n > c.remaining {
				n = c.remaining
			}
			if err := emit(p[:n]); err != nil {
				return false, err
			}
			c.remaining -= n
			p = p[n:]
			continue
		}
		b := p[0]
		p = p[1:]
		if c.shift >= 32 {
			return false, errors.New("stream chunk length overflows u32")
		}
		c.length |= uint64(b&0x7f) << c.shift
		c.shift += 7
		if b >= 0x80 {
			continue
		}
		c.done = c.length == 0
		c.remaining, c.length, c.shift = c.length, 0, 0
	}
	if len(p) > 0 {
		return true, errors.New("bytes after the end of the stream")
	}
	return c.done, nil
}
