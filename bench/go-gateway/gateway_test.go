package main

// End-to-end tests: a real nats-server, the gateway behind httptest, and a
// minimal in-test wRPC responder playing the component's side of
// PROTOCOL.md section 3.

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

var testSubject = invocationSubject("default", "http-http_component")

// startNATS runs nats-server on a free port; maxPayload > 0 lowers the
// server's max_payload to force chunking and split params.
func startNATS(t *testing.T, maxPayload int) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatal("nats-server not found (apt-get install nats-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port)}
	if maxPayload > 0 {
		conf := filepath.Join(t.TempDir(), "nats.conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf("max_payload: %d\n", maxPayload)), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-c", conf)
	}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		nc, err := nats.Connect(url)
		if err == nil {
			nc.Close()
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server did not come up on %s: %v", url, err)
		}
	}
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// startGateway serves the gateway's mux, forwarding to testSubject.
func startGateway(t *testing.T, url string, timeout time.Duration) *httptest.Server {
	g := &gateway{nc: connect(t, url), subject: testSubject, timeout: timeout}
	srv := httptest.NewServer(newMux(g))
	t.Cleanup(srv.Close)
	return srv
}

// call is what the responder received in one invocation.
type call struct {
	params   []byte   // root params: invocation payload + R_s.params
	bodyMsgs [][]byte // raw messages on R_s.params.0.0, close excluded
	body     []byte   // the decoded request body
	trailers []byte   // bytes on R_s.params.0.1
	err      error
}

// startResponder plays the component: it accepts each call, reads all params
// channels until closed, then lets reply publish the results to R_c.
func startResponder(t *testing.T, url string, reply func(nc *nats.Conn, rc string)) <-chan call {
	nc := connect(t, url)
	calls := make(chan call, 16)
	_, err := nc.Subscribe(testSubject, func(m *nats.Msg) {
		go func() {
			c := serveCall(nc, m)
			if c.err == nil {
				reply(nc, m.Reply)
			}
			calls <- c
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return calls
}

func serveCall(nc *nats.Conn, m *nats.Msg) (c call) {
	rs := nats.NewInbox()
	sub, err := nc.SubscribeSync(rs + ".>")
	if err != nil {
		return call{err: err}
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(m.Reply, rs, nil); err != nil {
		return call{err: err}
	}
	c.params = append(c.params, m.Data...)
	var body chunkReader
	open := map[string]bool{"params": true, "params.0.0": true, "params.0.1": true}
	for len(open) > 0 {
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			c.err = fmt.Errorf("reading params: %v (still open: %v)", err, open)
			return c
		}
		path := strings.TrimPrefix(msg.Subject, rs+".")
		if !open[path] {
			c.err = fmt.Errorf("message on %s, which is not open", path)
			return c
		}
		if len(msg.Data) == 0 {
			delete(open, path)
			continue
		}
		switch path {
		case "params":
			c.params = append(c.params, msg.Data...)
		case "params.0.0":
			c.bodyMsgs = append(c.bodyMsgs, msg.Data)
			if _, err := body.feed(msg.Data, func(p []byte) error { c.body = append(c.body, p...); return nil }); err != nil {
				c.err = err
				return c
			}
		case "params.0.1":
			c.trailers = append(c.trailers, msg.Data...)
		}
	}
	if !body.done {
		c.err = fmt.Errorf("request body closed without its end chunk")
	}
	return c
}

// publishAll sends each payload on subject, then the empty closing message.
func publishAll(nc *nats.Conn, subject string, payloads ...[]byte) {
	for _, p := range append(payloads, nil) {
		nc.Publish(subject, p)
	}
}

// helloReply answers 200 text/plain "Hello from the component!", splitting
// the head and the body chunk across messages as a real peer may.
func helloReply(nc *nats.Conn, rc string) {
	head := hexBytes("00 00 00 c8 01 01 0c 63 6f 6e 74 65 6e 74 2d 74 79 70 65 01 0a 74 65 78 74 2f 70 6c 61 69 6e")
	publishAll(nc, rc+".results", head[:4], head[4:])
	body := append(appendString(nil, "Hello from the component!"), 0)
	publishAll(nc, rc+".results.0.0", body[:1], body[1:10], body[10:])
	publishAll(nc, rc+".results.0.1", []byte{0})
}

func receive(t *testing.T, calls <-chan call) call {
	t.Helper()
	select {
	case c := <-calls:
		if c.err != nil {
			t.Fatal("responder:", c.err)
		}
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("responder saw no call")
		return call{}
	}
}

func do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestHelloFromProvider(t *testing.T) {
	srv := startGateway(t, startNATS(t, 0), time.Second)
	resp, body := do(t, newRequest(t, "GET", srv.URL+"/", nil))
	if resp.StatusCode != 200 || body != "Hello from the provider!" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestProxyGet(t *testing.T) {
	url := startNATS(t, 0)
	calls := startResponder(t, url, helloReply)
	srv := startGateway(t, url, 5*time.Second)

	req := newRequest(t, "GET", srv.URL+"/proxy?x=1", nil)
	req.Header.Add("X-Multi", "a")
	req.Header.Add("X-Multi", "b")
	resp, body := do(t, req)
	if resp.StatusCode != 200 || body != "Hello from the component!" || resp.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}

	c := receive(t, calls)
	host := strings.TrimPrefix(srv.URL, "http://")
	want := append(hexBytes("00 00 00 01 0a 2f 70 72 6f 78 79 3f 78 3d 31 01 00 01"), appendString(nil, host)...)
	if !bytes.HasPrefix(c.params, want) {
		t.Errorf("params % x\ndo not start with % x", c.params, want)
	}
	if multi := hexBytes("07 78 2d 6d 75 6c 74 69 02 01 61 01 62"); !bytes.Contains(c.params, multi) {
		t.Errorf("params % x\nlack x-multi: a, b as one field", c.params)
	}
	if len(c.bodyMsgs) != 1 || !bytes.Equal(c.bodyMsgs[0], []byte{0}) || !bytes.Equal(c.trailers, []byte{0}) {
		t.Errorf("body messages % x, trailers % x; want just the end chunk and none", c.bodyMsgs, c.trailers)
	}
}

// The request body goes out exactly as WRPC_VECTORS.md section 3 shows.
func TestProxyPostBodyVector(t *testing.T) {
	url := startNATS(t, 0)
	calls := startResponder(t, url, helloReply)
	srv := startGateway(t, url, 5*time.Second)

	resp, _ := do(t, newRequest(t, "POST", srv.URL+"/proxy/echo", strings.NewReader("hello")))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c := receive(t, calls)
	want := [][]byte{hexBytes("05 68 65 6c 6c 6f"), {0}}
	if fmt.Sprintf("% x", c.bodyMsgs) != fmt.Sprintf("% x", want) {
		t.Fatalf("body messages % x, want % x", c.bodyMsgs, want)
	}
}

// With a small max_payload, params spill over to R_s.params and a large body
// is chunked; both must arrive byte-exact.
func TestProxyPostLargeBody(t *testing.T) {
	const maxPayload = 4096
	url := startNATS(t, maxPayload)
	calls := startResponder(t, url, helloReply)
	srv := startGateway(t, url, 5*time.Second)

	payload := make([]byte, 1<<20+123)
	rand.Read(payload)
	big := strings.Repeat("b", 2*maxPayload)
	req := newRequest(t, "POST", srv.URL+"/proxy", bytes.NewReader(payload))
	req.Header.Set("X-Big", big)
	resp, body := do(t, req)
	if resp.StatusCode != 200 || body != "Hello from the component!" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	c := receive(t, calls)
	if !bytes.Equal(c.body, payload) {
		t.Fatalf("body: got %d bytes, want %d, equal prefix? %v", len(c.body), len(payload), bytes.HasPrefix(payload, c.body))
	}
	for _, m := range c.bodyMsgs {
		if len(m) > maxPayload {
			t.Fatalf("body message of %d bytes exceeds max_payload", len(m))
		}
	}
	if !bytes.Contains(c.params, appendString([]byte("x-big\x01"), big)) {
		t.Fatal("split params lack the x-big header")
	}
}

func TestNoResponders(t *testing.T) {
	srv := startGateway(t, startNATS(t, 0), 5*time.Second)
	if resp, body := do(t, newRequest(t, "GET", srv.URL+"/proxy", nil)); resp.StatusCode != 503 {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestTimeout(t *testing.T) {
	url := startNATS(t, 0)
	// Subscribed, so not "no responders", but never answers.
	silent := connect(t, url)
	if _, err := silent.SubscribeSync(testSubject); err != nil {
		t.Fatal(err)
	}
	silent.Flush()
	srv := startGateway(t, url, 200*time.Millisecond)
	if resp, body := do(t, newRequest(t, "GET", srv.URL+"/proxy", nil)); resp.StatusCode != 504 {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestErrorCodeResult(t *testing.T) {
	url := startNATS(t, 0)
	startResponder(t, url, func(nc *nats.Conn, rc string) {
		// internal-error(some("boom")), WRPC_VECTORS.md section 6
		publishAll(nc, rc+".results", hexBytes("01 26 01 04 62 6f 6f 6d"))
	})
	srv := startGateway(t, url, 5*time.Second)
	if resp, body := do(t, newRequest(t, "GET", srv.URL+"/proxy", nil)); resp.StatusCode != 500 {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}
