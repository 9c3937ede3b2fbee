// nats-probe measures the NATS side of the benchmark for bench/run.sh.
//
//	nats-probe ceiling --nats URL --requesters N --seconds S [--payload BYTES]
//
// The request/reply ceiling of the machine: one nats.go connection answers every request on a
// subject, another sends requests from N goroutines at once for S seconds. Nothing else runs
// through the server meanwhile, so this is the most NATS allows a forwarding process: a /proxy
// call needs at least one such round trip. Prints one line:
//
//	requesters=N round_trips=R seconds=S round_trips_per_s=X p50_us=Y p99_us=Z
//
//	nats-probe stream --nats URL [--bytes N] [--chunk BYTES]
//
// The streaming ceiling of the machine: one nats.go connection publishes N bytes (default
// 1 GiB) in messages of BYTES (default 1 MiB, the server's max_payload, as the component
// sends a body) on one subject, another receives them all; nothing else runs through the
// server meanwhile. A 1 GiB transfer through a forwarder crosses the server once this way
// (forwarder and component each have one connection), so this is the most it can move.
// Prints one line:
//
//	bytes=N seconds=S mib_per_s=X
//
//	nats-probe tap --nats URL
//
// Prints every message that crosses the server, one line each, "SUBJECT REPLY BYTES" ("-" for
// no reply), until SIGTERM or SIGINT; "listening" on stderr once the subscription is active.
// bench/run.sh reads one /proxy call from it: who sent which message, and how often the
// direction changed (the round trips of the call).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	url := flags.String("nats", nats.DefaultURL, "NATS server URL")
	switch os.Args[1] {
	case "ceiling":
		requesters := flags.Int("requesters", 32, "requests in flight at once")
		seconds := flags.Int("seconds", 4, "length of the run")
		payload := flags.Int("payload", 64, "request and reply size in bytes")
		flags.Parse(os.Args[2:])
		ceiling(*url, *requesters, time.Duration(*seconds)*time.Second, *payload)
	case "stream":
		total := flags.Int64("bytes", 1<<30, "bytes to move")
		chunk := flags.Int("chunk", 1<<20, "bytes per message")
		flags.Parse(os.Args[2:])
		stream(*url, *total, *chunk)
	case "tap":
		flags.Parse(os.Args[2:])
		tap(*url)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: nats-probe ceiling --nats URL [--requesters N] [--seconds S] [--payload BYTES]\n"+
		"       nats-probe stream --nats URL [--bytes N] [--chunk BYTES]\n"+
		"       nats-probe tap --nats URL")
	os.Exit(2)
}

func connect(url, name string) *nats.Conn {
	nc, err := nats.Connect(url, nats.Name(name))
	if err != nil {
		log.Fatalf("connect to %s: %v", url, err)
	}
	return nc
}

func ceiling(url string, requesters int, length time.Duration, payload int) {
	responder := connect(url, "nats-probe-responder")
	defer responder.Close()
	const subject = "bench.ceiling"
	if _, err := responder.Subscribe(subject, func(m *nats.Msg) { m.Respond(m.Data) }); err != nil {
		log.Fatalf("subscribe: %v", err)
	}
	if err := responder.Flush(); err != nil {
		log.Fatalf("flush: %v", err)
	}
	requester := connect(url, "nats-probe-requester")
	defer requester.Close()

	data := make([]byte, payload)
	start := time.Now()
	deadline := start.Add(length)
	latencies := make([][]time.Duration, requesters) // one slice per goroutine: no lock
	var wg sync.WaitGroup
	for i := range latencies {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				t := time.Now()
				if _, err := requester.Request(subject, data, 2*time.Second); err != nil {
					log.Fatalf("request: %v", err)
				}
				latencies[i] = append(latencies[i], time.Since(t))
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	quantile := func(q float64) int64 { return all[int(q*float64(len(all)-1))].Microseconds() }
	fmt.Printf("requesters=%d round_trips=%d seconds=%.2f round_trips_per_s=%.0f p50_us=%d p99_us=%d\n",
		requesters, len(all), elapsed, float64(len(all))/elapsed, quantile(0.5), quantile(0.99))
}

func stream(url string, total int64, chunk int) {
	receiver := connect(url, "nats-probe-receiver")
	defer receiver.Close()
	const subject = "bench.stream"
	done := make(chan struct{})
	var received atomic.Int64
	sub, err := receiver.Subscribe(subject, func(m *nats.Msg) {
		if received.Add(int64(len(m.Data))) >= total {
			close(done)
		}
	})
	if err != nil {
		log.Fatalf("subscribe: %v", err)
	}
	// Held messages instead of nats.go's slow-consumer drops: the measure is the server's pace.
	sub.SetPendingLimits(-1, -1)
	if err := receiver.Flush(); err != nil {
		log.Fatalf("flush: %v", err)
	}
	sender := connect(url, "nats-probe-sender")
	defer sender.Close()

	data := make([]byte, chunk)
	start := time.Now()
	for sent, n := int64(0), 0; sent < total; sent, n = sent+int64(chunk), n+1 {
		if err := sender.Publish(subject, data); err != nil {
			log.Fatalf("publish: %v", err)
		}
		if n%16 == 15 { // a round trip now and then: the sender does not run far ahead of the server
			if err := sender.Flush(); err != nil {
				log.Fatalf("flush: %v", err)
			}
		}
	}
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		log.Fatalf("received %d of %d bytes in 120 s", received.Load(), total)
	}
	elapsed := time.Since(start).Seconds()
	fmt.Printf("bytes=%d seconds=%.2f mib_per_s=%.0f\n", total, elapsed, float64(total)/elapsed/(1<<20))
}

func tap(url string) {
	nc := connect(url, "nats-probe-tap")
	defer nc.Close()
	messages := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(">", messages)
	if err != nil {
		log.Fatalf("subscribe: %v", err)
	}
	if err := nc.Flush(); err != nil {
		log.Fatalf("flush: %v", err)
	}
	fmt.Fprintln(os.Stderr, "listening")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	print := func(m *nats.Msg) {
		reply := m.Reply
		if reply == "" {
			reply = "-"
		}
		fmt.Fprintf(out, "%s %s %d\n", m.Subject, reply, len(m.Data))
	}
	for {
		select {
		case m := <-messages:
			print(m)
		case <-stop:
			// A flush returns after the server delivered everything it had sent before it.
			nc.Flush()
			sub.Unsubscribe()
			for {
				select {
				case m := <-messages:
					print(m)
				default:
					return
				}
			}
		}
	}
}
