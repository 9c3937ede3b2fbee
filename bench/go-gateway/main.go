// go-gateway is the comparison point for the benchmark: an HTTP server that
// forwards /proxy requests to a component over wRPC/NATS the same way the Go
// example this project mirrors does (wasmCloud/go examples/provider/http-server
// with go.wasmcloud.dev/provider/wrpchttp): fresh NATS subscriptions for every
// call, request body sent as a pending stream, response body streamed back.
// It is not a provider (no host handshake, no links): it only forwards.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

const (
	// The Go example's http.Client timeout, covering the whole call.
	callTimeout = 5 * time.Second
	// Upper bound for one request-body chunk; the server's max_payload
	// may lower it further.
	maxBodyChunk = 64 << 10
	// Room for a LEB128 length prefix in front of a chunk (u64 worst case).
	maxLEBLen = 10
)

type gateway struct {
	nc      *nats.Conn
	subject string // wRPC invocation subject of the target's handle function
	timeout time.Duration
}

func invocationSubject(lattice, target string) string {
	return lattice + "." + target + ".wrpc.0.0.1.wrpc:http/incoming-handler@0.1.0.handle"
}

func newMux(g *gateway) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/proxy", g)
	mux.Handle("/proxy/", g)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "Hello from the provider!")
	})
	return mux
}

func main() {
	natsURL := flag.String("nats", nats.DefaultURL, "NATS server URL")
	lattice := flag.String("lattice", "default", "lattice name (wRPC subject prefix)")
	target := flag.String("target", "http-http_component", "component id to forward /proxy to")
	address := flag.String("address", "127.0.0.1:8090", "HTTP listen address")
	flag.Parse()

	nc, err := nats.Connect(*natsURL, nats.Name("go-gateway"))
	if err != nil {
		log.Fatalf("connect to NATS at %s: %v", *natsURL, err)
	}
	defer nc.Close()
	g := &gateway{nc: nc, subject: invocationSubject(*lattice, *target), timeout: callTimeout}
	log.Printf("listening on %s, forwarding /proxy to %s", *address, g.subject)
	log.Fatal(http.ListenAndServe(*address, newMux(g)))
}

// statusError is a failure before the response head was written, so it can
// still be reported as an HTTP status.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func fail(status int, format string, args ...interface{}) error {
	return &statusError{status: status, msg: fmt.Sprintf(format, args...)}
}

// waitFailure turns a failed wait for a message into a status: running out of
// time is a gateway timeout, anything else a bad gateway.
func waitFailure(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fail(http.StatusGatewayTimeout, "timed out waiting for %s", what)
	}
	return fail(http.StatusBadGateway, "waiting for %s: %v", what, err)
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), g.timeout)
	defer cancel()
	var se *statusError
	if err := g.forward(ctx, w, r); errors.As(err, &se) {
		http.Error(w, se.msg, se.status)
	}
}

// forward performs one wRPC call of wrpc:http/incoming-handler.handle
// (PROTOCOL.md section 3). Errors before the response head are returned as
// *statusError; after it, the response is aborted so that the client sees a
// truncated body as an error instead of a complete one.
func (g *gateway) forward(ctx context.Context, w http.ResponseWriter, r *http.Request) error {
	// Subscribe to the handshake and every result channel before
	// publishing, so no reply can arrive before we listen.
	rc := nats.NewInbox()
	var subs [4]*nats.Subscription
	for i, subj := range []string{rc, rc + ".results", rc + ".results.0.0", rc + ".results.0.1"} {
		sub, err := g.nc.SubscribeSync(subj)
		if err != nil {
			return fail(http.StatusBadGateway, "subscribe %s: %v", subj, err)
		}
		defer sub.Unsubscribe()
		subs[i] = sub
	}
	handshake, results, body, trailers := subs[0], subs[1], subs[2], subs[3]

	maxPayload := int(g.nc.MaxPayload())
	params := encodeParams(requestHeadOf(r))
	first, rest := params, []byte(nil)
	if len(params) > maxPayload {
		first, rest = params[:maxPayload], params[maxPayload:]
	}
	if err := g.nc.PublishRequest(g.subject, rc, first); err != nil {
		return fail(http.StatusBadGateway, "publish invocation: %v", err)
	}

	// The callee accepts the call with an empty message whose reply
	// subject (R_s) is where the rest of the params go. Without a callee
	// the server sends a "503" status message instead, which nats.go
	// reports as ErrNoResponders.
	msg, err := handshake.NextMsgWithContext(ctx)
	if errors.Is(err, nats.ErrNoResponders) {
		return fail(http.StatusServiceUnavailable, "no responders on %s", g.subject)
	}
	if err != nil {
		return waitFailure("the handshake", err)
	}
	rs := msg.Reply
	if rs == "" {
		return fail(http.StatusBadGateway, "handshake without a reply subject")
	}

	for len(rest) > 0 {
		n := len(rest)
		if n > maxPayload {
			n = maxPayload
		}
		if err := g.nc.Publish(rs+".params", rest[:n]); err != nil {
			return fail(http.StatusBadGateway, "publish params: %v", err)
		}
		rest = rest[n:]
	}
	if err := g.sendBody(rs+".params.0.0", r.Body, maxPayload); err != nil {
		return err
	}
	// No request trailers: option none, then close the future's channel.
	for _, p := range [][]byte{{0}, nil} {
		if err := g.nc.Publish(rs+".params.0.1", p); err != nil {
			return fail(http.StatusBadGateway, "publish trailers: %v", err)
		}
	}
	if err := g.nc.Publish(rs+".params", nil); err != nil {
		return fail(http.StatusBadGateway, "close params: %v", err)
	}

	head, err := readResultHead(ctx, results)
	if err != nil {
		return err
	}
	if !head.ok {
		return fail(errorCodeStatus(head.errCase), "component returned wasi:http error-code case %d", head.errCase)
	}
	if head.status < 100 || head.status > 999 { // net/http would panic on these
		return fail(http.StatusBadGateway, "component returned invalid status %d", head.status)
	}
	for _, f := range head.headers {
		for _, v := range f.values {
			w.Header().Add(f.name, string(v))
		}
	}
	w.WriteHeader(int(head.status))

	flusher, _ := w.(http.Flusher)
	var chunks chunkReader
	for done := false; !done; {
		msg, err := body.NextMsgWithContext(ctx)
		if err != nil {
			abort("response body: %v", err)
		}
		if len(msg.Data) == 0 {
			abort("response body closed before its end chunk")
		}
		done, err = chunks.feed(msg.Data, func(p []byte) error {
			_, err := w.Write(p)
			return err
		})
		if err != nil {
			abort("response body: %v", err)
		}
		if flusher != nil {
			flusher.Flush()
		}
	}

	// Response trailers are read (as the Go example does) but not sent on:
	// an empty message closes their channel. Ready trailers came in the head.
	for head.trailersPending {
		msg, err := trailers.NextMsgWithContext(ctx)
		if err != nil || len(msg.Data) == 0 {
			break
		}
	}
	return nil
}

// abort ends a response whose head was already sent.
func abort(format string, args ...interface{}) {
	log.Printf("aborting response: "+format, args...)
	panic(http.ErrAbortHandler)
}

// requestHeadOf maps an incoming request onto wrpc:http's request record.
func requestHeadOf(r *http.Request) requestHead {
	path := r.URL.RequestURI()
	scheme := "HTTP"
	if r.TLS != nil {
		scheme = "HTTPS"
	}
	h := requestHead{method: r.Method, pathWithQuery: &path, scheme: &scheme}
	if r.Host != "" {
		h.authority = &r.Host
	}
	// The host rejects a repeated header name, so each lower-cased name is
	// sent once with all its values. Sorted only to make calls repeatable.
	values := make(map[string][][]byte, len(r.Header))
	for name, vs := range r.Header {
		name = strings.ToLower(name)
		for _, v := range vs {
			values[name] = append(values[name], []byte(v))
		}
	}
	for name, vs := range values {
		h.headers = append(h.headers, field{name: name, values: vs})
	}
	sort.Slice(h.headers, func(i, j int) bool { return h.headers[i].name < h.headers[j].name })
	return h
}

// sendBody streams the request body as a pending stream<u8>: one chunk
// (LEB128 length + bytes) per NATS message, the end chunk, then an empty
// message to close the channel.
func (g *gateway) sendBody(subject string, body io.Reader, maxPayload int) error {
	if body != http.NoBody {
		size := maxBodyChunk
		if size > maxPayload-maxLEBLen {
			size = maxPayload - maxLEBLen
		}
		// Read behind a gap and write the length prefix into it, so a
		// chunk message is built without copying the data.
		buf := make([]byte, maxLEBLen+size)
		var prefix [maxLEBLen]byte
		for {
			n, err := body.Read(buf[maxLEBLen:])
			if n > 0 {
				p := appendULEB(prefix[:0], uint64(n))
				start := maxLEBLen - len(p)
				copy(buf[start:], p)
				if err := g.nc.Publish(subject, buf[start:maxLEBLen+n]); err != nil {
					return fail(http.StatusBadGateway, "publish body: %v", err)
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return fail(http.StatusBadRequest, "read request body: %v", err)
			}
		}
	}
	for _, p := range [][]byte{{0}, nil} {
		if err := g.nc.Publish(subject, p); err != nil {
			return fail(http.StatusBadGateway, "publish body: %v", err)
		}
	}
	return nil
}

// readResultHead collects R_c.results messages until the result head
// decodes: the bytes may be split across messages anywhere.
func readResultHead(ctx context.Context, results *nats.Subscription) (resultHead, error) {
	var buf []byte
	for {
		msg, err := results.NextMsgWithContext(ctx)
		if err != nil {
			return resultHead{}, waitFailure("the result", err)
		}
		if len(msg.Data) == 0 {
			// Closed before a whole result: the callee failed.
			return resultHead{}, fail(http.StatusBadGateway, "results closed after %d bytes, before a whole result", len(buf))
		}
		buf = append(buf, msg.Data...)
		head, err := decodeResultHead(buf)
		if err == errShort {
			continue
		}
		if err != nil {
			return resultHead{}, fail(http.StatusBadGateway, "decode result: %v", err)
		}
		return head, nil
	}
}

// errorCodeStatus maps a wasi:http@0.2.0 error-code case to an HTTP status.
func errorCodeStatus(c uint32) int {
	switch c {
	case 0, 8, 9, 10, 33: // DNS-timeout, connection(-read/-write)-timeout, HTTP-response-timeout
		return http.StatusGatewayTimeout
	case 15: // HTTP-request-denied
		return http.StatusForbidden
	case 16: // HTTP-request-length-required
		return http.StatusLengthRequired
	case 17: // HTTP-request-body-size
		return http.StatusRequestEntityTooLarge
	case 18: // HTTP-request-method-invalid
		return http.StatusMethodNotAllowed
	case 19: // HTTP-request-URI-invalid
		return http.StatusBadRequest
	case 20: // HTTP-request-URI-too-long
		return http.StatusRequestURITooLong
	case 21, 22: // HTTP-request-header-section-size, HTTP-request-header-size
		return http.StatusRequestHeaderFieldsTooLarge
	case 37, 38: // configuration-error, internal-error
		return http.StatusInternalServerError
	default: // the destination/connection/protocol failures
		return http.StatusBadGateway
	}
}
