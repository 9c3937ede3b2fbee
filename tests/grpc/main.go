// grpc-client: the gRPC client of tests/test_http2.cpp (google.golang.org/grpc, pinned by this
// module's go.sum), over h2c to the provider, whose demo component speaks gRPC framing on
// /proxy/grpc/echo.Echo/{Say,Count}. Messages are raw bytes (no protobuf: the component only
// frames them). Prints one line per result:
//
//	grpc-client HOST:PORT
//	  unary: <reply> status=<code> trailer=<x-served-by>
//	  stream: <message>           (one line each)
//	  stream: status=<code>
//	  unknown: status=<code>
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec sends and receives messages as the bytes they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-client HOST:PORT")
		os.Exit(2)
	}
	conn, err := grpc.NewClient(os.Args[1], grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	in, out := []byte("hello"), []byte(nil)
	var trailer metadata.MD
	err = conn.Invoke(ctx, "/proxy/grpc/echo.Echo/Say", &in, &out, grpc.Trailer(&trailer))
	fmt.Printf("unary: %s status=%s trailer=%v\n", out, status.Code(err), trailer.Get("x-served-by"))

	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/proxy/grpc/echo.Echo/Count")
	if err == nil {
		count := []byte("3")
		err = stream.SendMsg(&count)
	}
	if err == nil {
		err = stream.CloseSend()
	}
	for err == nil {
		var msg []byte
		if err = stream.RecvMsg(&msg); err == nil {
			fmt.Printf("stream: %s\n", msg)
		}
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	fmt.Printf("stream: status=%s\n", status.Code(err))

	err = conn.Invoke(ctx, "/proxy/grpc/echo.Echo/Nope", &in, &out)
	fmt.Printf("unknown: status=%s\n", status.Code(err))
}
