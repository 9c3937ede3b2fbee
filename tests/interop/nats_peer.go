// nats_peer is a second, independent NATS client (the official nats.go) that
// the integration tests run against our hand-rolled C++ client, so that
// interoperability is proven against a real implementation and not only
// against the C++ client talking to itself.
//
// Usage:
//
//	nats_peer --server URL reply SUBJECT DATA [--count N]
//	nats_peer --server URL req   SUBJECT DATA [--timeout-ms N]
//	nats_peer --server URL sub   SUBJECT [--count N]
//	nats_peer --server URL pub   SUBJECT DATA
//
// "reply" and "sub" print a line "ready" once the subscription is known to
// the server, so a test can wait for that line instead of sleeping. A count
// of 0 means "until SIGTERM/SIGINT". Errors are one line on stderr, exit 1;
// usage errors exit 2.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

type options struct {
	server    string
	count     int
	timeout   time.Duration
	positions []string // command, subject, data
}

func usage(msg string) {
	fmt.Fprintln(os.Stderr, "nats_peer:", msg)
	fmt.Fprintln(os.Stderr, "usage: nats_peer --server URL (reply SUBJECT DATA [--count N] | req SUBJECT DATA [--timeout-ms N] | sub SUBJECT [--count N] | pub SUBJECT DATA)")
	os.Exit(2)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "nats_peer: "+format+"\n", args...)
	os.Exit(1)
}

// parseArgs accepts the options anywhere on the line, so tests can append
// them after the positional arguments as the usage shows.
func parseArgs(args []string) options {
	o := options{server: nats.DefaultURL, timeout: 2 * time.Second}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch a {
		case "--server", "--count", "--timeout-ms":
			if i+1 >= len(args) {
				usage(a + " needs a value")
			}
			i++
			v := args[i]
			if a == "--server" {
				o.server = v
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				usage(a + " needs a non-negative integer")
			}
			if a == "--count" {
				o.count = n
			} else {
				o.timeout = time.Duration(n) * time.Millisecond
			}
		default:
			o.positions = append(o.positions, a)
		}
	}
	return o
}

func main() {
	o := parseArgs(os.Args[1:])
	if len(o.positions) < 2 {
		usage("missing command or subject")
	}
	cmd, subject := o.positions[0], o.positions[1]
	wantArgs := map[string]int{"reply": 3, "req": 3, "sub": 2, "pub": 3}[cmd]
	if wantArgs == 0 {
		usage("unknown command " + strconv.Quote(cmd))
	}
	if len(o.positions) != wantArgs {
		usage(cmd + ": wrong number of arguments")
	}
	var data []byte
	if wantArgs == 3 {
		data = []byte(o.positions[2])
	}

	// No reconnects: if the server under test goes away, the peer must
	// exit instead of hanging a test forever.
	closed := make(chan struct{})
	nc, err := nats.Connect(o.server,
		nats.Name("nats_peer"),
		nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		fail("connect %s: %v", o.server, err)
	}

	switch cmd {
	case "pub":
		if err := nc.Publish(subject, data); err != nil {
			fail("publish: %v", err)
		}
		if err := nc.Flush(); err != nil {
			fail("flush: %v", err)
		}
	case "req":
		msg, err := nc.Request(subject, data, o.timeout)
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			fail("no responders on %s", subject)
		case errors.Is(err, nats.ErrTimeout):
			fail("timeout after %v waiting for a reply on %s", o.timeout, subject)
		case err != nil:
			fail("request: %v", err)
		}
		fmt.Printf("%s\n", msg.Data)
	case "reply", "sub":
		serve(nc, cmd, subject, data, o.count, closed)
	}
	nc.Close()
}

// serve handles "reply" and "sub": both receive on a subscription, announce
// "ready" and stop after count messages or on a signal.
func serve(nc *nats.Conn, cmd, subject string, data []byte, count int, closed <-chan struct{}) {
	msgs := make(chan *nats.Msg, 1024)
	if _, err := nc.ChanSubscribe(subject, msgs); err != nil {
		fail("subscribe: %v", err)
	}
	// Flush round-trips a PING, so the server has processed our SUB
	// before the test is told we are ready.
	if err := nc.Flush(); err != nil {
		fail("flush: %v", err)
	}
	fmt.Println("ready")

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	for n := 0; count == 0 || n < count; n++ {
		select {
		case msg := <-msgs:
			if cmd == "sub" {
				fmt.Printf("%s\n", msg.Data)
				continue
			}
			if err := msg.Respond(data); err != nil {
				fail("respond: %v", err)
			}
		case <-signals:
			return
		case <-closed:
			fail("connection to the server closed")
		}
	}
	// Make sure the last replies left our buffer before we close.
	if err := nc.Flush(); err != nil {
		fail("flush: %v", err)
	}
}
