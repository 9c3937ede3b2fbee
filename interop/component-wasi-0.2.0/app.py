# The interop Wasm component for hosts that serve only wasi:http@0.2.0 (wasmcloud-host 0.20.0):
# interop/component/component.js in Python, built with componentize-py against the wasi 0.2.0 WIT.
# The same paths and answers:
#   GET  /proxy              "Hello from the component!"
#   POST /proxy (PUT, PATCH) the request body echoed as it streams in
#   /proxy/bytes/N           N bytes of the pattern a..z repeated, streamed
#   /proxy/count             consumes the request body, answers "N bytes"
#   /proxy/inspect           the request head as JSON
#   /proxy/status/N          an empty response with status N
#   /proxy/trailers          a body followed by the trailer x-checksum: abc123
#   /proxy/error             the wasi:http error-code internal-error("boom")
import json
import re

from component import exports
from component.imports import streams
from component.imports.types import (
    ErrorCode_InternalError, Fields, IncomingBody, IncomingRequest, Method_Other, Method_Patch,
    Method_Post, Method_Put, OutgoingBody, OutgoingResponse, ResponseOutparam, Scheme_Https,
    Scheme_Other)
from component.types import Err, Ok

READ_BYTES = 65536
WRITE_BYTES = 4096  # blocking-write-and-flush takes at most 4096 bytes
PATTERN = bytes(97 + i % 26 for i in range(65536))
PLAIN = [("content-type", "text/plain")]


def read_body(request, on_chunk):
    """Calls on_chunk for each chunk of the request body until it ends."""
    body = request.consume()
    with body.stream() as stream:
        while True:
            try:
                chunk = stream.blocking_read(READ_BYTES)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
            if chunk:
                on_chunk(chunk)
    # The request trailers are not used; finishing the body releases it.
    with IncomingBody.finish(body):
        pass


def respond(response_out, status, headers, produce=None, trailers=None):
    """Sends the response head at once (so bodies stream), then lets produce(write) write the body."""
    response = OutgoingResponse(Fields.from_list([(n, v.encode()) for n, v in headers]))
    response.set_status_code(status)
    body = response.body()
    output = body.write()
    ResponseOutparam.set(response_out, Ok(response))

    def write(data):
        view = memoryview(data)
        for at in range(0, len(view), WRITE_BYTES):
            output.blocking_write_and_flush(bytes(view[at:at + WRITE_BYTES]))

    with output:
        if produce:
            produce(write)
    OutgoingBody.finish(body, Fields.from_list([(n, v.encode()) for n, v in trailers]) if trailers else None)


def number_after(path, prefix):
    if not path.startswith(prefix):
        return None
    text = path[len(prefix):]
    return int(text) if re.fullmatch(r"[0-9]{1,15}", text) else None


def method_name(method):
    if isinstance(method, Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").lower()


def scheme_name(scheme):
    if scheme is None:
        return None
    if isinstance(scheme, Scheme_Other):
        return "other"
    return "HTTPS" if isinstance(scheme, Scheme_Https) else "HTTP"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        path = (request.path_with_query() or "/").split("?")[0]

        if path == "/proxy/error":
            ResponseOutparam.set(response_out, Err(ErrorCode_InternalError("boom")))
            return
        status = number_after(path, "/proxy/status/")
        if status is not None:
            return respond(response_out, status, PLAIN)

        size = number_after(path, "/proxy/bytes/")
        if size is not None:
            def produce_bytes(write):
                left = size
                while left > 0:
                    write(PATTERN if left >= len(PATTERN) else PATTERN[:left])
                    left -= len(PATTERN)
            return respond(response_out, 200, [("content-type", "application/octet-stream")],
                           produce_bytes)
        if path == "/proxy/count":
            total = 0

            def count(chunk):
                nonlocal total
                total += len(chunk)
            read_body(request, count)
            return respond(response_out, 200, PLAIN, lambda write: write(f"{total} bytes".encode()))
        if path == "/proxy/inspect":
            head = {
                "method": method_name(method),
                "path": request.path_with_query() or "",
                "authority": request.authority() or "",
                "scheme": scheme_name(request.scheme()),
                "headers": [[n, v.decode()] for n, v in request.headers().entries()],
            }
            read_body(request, lambda chunk: None)
            return respond(response_out, 200, [("content-type", "application/json")],
                           lambda write: write(json.dumps(head, separators=(",", ":")).encode()))
        if path == "/proxy/trailers":
            return respond(response_out, 200, PLAIN, lambda write: write(b"body before trailers\n"),
                           [("x-checksum", "abc123")])
        if isinstance(method, (Method_Post, Method_Put, Method_Patch)):
            content_type = request.headers().get("content-type")
            headers = [("content-type", content_type[0].decode())] if content_type else PLAIN
            return respond(response_out, 200, headers, lambda write: read_body(request, write))
        read_body(request, lambda chunk: None)
        return respond(response_out, 200, PLAIN, lambda write: write(b"Hello from the component!"))
