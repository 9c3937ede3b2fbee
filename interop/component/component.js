// The Wasm component of `make interop`: wasi:http/incoming-handler written against the wasi:http
// resources themselves (not StarlingMonkey's fetch event), because only they reach the response
// trailers. Paths as the native demo component (demo/demo_component.cpp):
//   GET  /proxy              "Hello from the component!"
//   POST /proxy (PUT, PATCH) the request body echoed as it streams in
//   /proxy/bytes/N           N bytes of the pattern a..z repeated, streamed
//   /proxy/count             consumes the request body, answers "N bytes"
//   /proxy/inspect           the request head as JSON
//   /proxy/status/N          an empty response with status N
//   /proxy/trailers          a body followed by the trailer x-checksum: abc123
//   /proxy/error             the wasi:http error-code internal-error("boom")
import { Fields, IncomingBody, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const READ_BYTES = 65536n;
const WRITE_BYTES = 4096; // blocking-write-and-flush takes at most 4096 bytes

function isClosed(e) {
  return e && e.payload && e.payload.tag === 'closed';
}

// Calls onChunk for each chunk of the request body until it ends.
function readBody(request, onChunk) {
  const body = request.consume();
  const input = body.stream();
  try {
    for (;;) {
      let chunk;
      try {
        chunk = input.blockingRead(READ_BYTES);
      } catch (e) {
        if (isClosed(e)) break;
        throw e;
      }
      if (chunk.length > 0) onChunk(chunk);
    }
  } finally {
    input[Symbol.dispose]();
  }
  // The request trailers are not used; finishing the body releases it.
  IncomingBody.finish(body)[Symbol.dispose]();
}

function writeAll(output, bytes) {
  for (let at = 0; at < bytes.length; at += WRITE_BYTES) {
    output.blockingWriteAndFlush(bytes.subarray(at, Math.min(at + WRITE_BYTES, bytes.length)));
  }
}

// Sends the response head at once (so bodies stream), then lets produce(write) write the body.
function respond(responseOut, status, headers, produce, trailers) {
  const response = new OutgoingResponse(
    Fields.fromList(headers.map(([name, value]) => [name, encoder.encode(value)])),
  );
  response.setStatusCode(status);
  const body = response.body();
  const output = body.write();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  try {
    if (produce) produce((bytes) => writeAll(output, bytes));
  } finally {
    output[Symbol.dispose]();
  }
  OutgoingBody.finish(
    body,
    trailers ? Fields.fromList(trailers.map(([name, value]) => [name, encoder.encode(value)])) : undefined,
  );
}

function numberAfter(path, prefix) {
  if (!path.startsWith(prefix)) return undefined;
  const text = path.slice(prefix.length);
  return /^[0-9]{1,15}$/.test(text) ? Number(text) : undefined;
}

function handle(request, responseOut) {
  const method = request.method();
  const path = (request.pathWithQuery() ?? '/').split('?')[0];
  const plain = [['content-type', 'text/plain']];

  if (path === '/proxy/error') {
    ResponseOutparam.set(responseOut, { tag: 'err', val: { tag: 'internal-error', val: 'boom' } });
    return;
  }
  const status = numberAfter(path, '/proxy/status/');
  if (status !== undefined) return respond(responseOut, status, plain);

  const size = numberAfter(path, '/proxy/bytes/');
  if (size !== undefined) {
    const pattern = new Uint8Array(65536);
    for (let i = 0; i < pattern.length; i++) pattern[i] = 97 + (i % 26);
    return respond(responseOut, 200, [['content-type', 'application/octet-stream']], (write) => {
      for (let left = size; left > 0; left -= pattern.length) {
        write(left >= pattern.length ? pattern : pattern.subarray(0, left));
      }
    });
  }
  if (path === '/proxy/count') {
    let total = 0;
    readBody(request, (chunk) => (total += chunk.length));
    return respond(responseOut, 200, plain, (write) => write(encoder.encode(`${total} bytes`)));
  }
  if (path === '/proxy/inspect') {
    const head = {
      method: method.tag === 'other' ? method.val : method.tag,
      path: request.pathWithQuery() ?? '',
      authority: request.authority() ?? '',
      scheme: request.scheme() ? request.scheme().tag : null,
      headers: request.headers().entries().map(([name, value]) => [name, decoder.decode(value)]),
    };
    readBody(request, () => {});
    return respond(responseOut, 200, [['content-type', 'application/json']], (write) =>
      write(encoder.encode(JSON.stringify(head))),
    );
  }
  if (path === '/proxy/trailers') {
    return respond(responseOut, 200, plain, (write) => write(encoder.encode('body before trailers\n')), [
      ['x-checksum', 'abc123'],
    ]);
  }
  if (method.tag === 'post' || method.tag === 'put' || method.tag === 'patch') {
    const type = request.headers().get('content-type');
    const headers = type.length > 0 ? [['content-type', decoder.decode(type[0])]] : plain;
    return respond(responseOut, 200, headers, (write) => readBody(request, write));
  }
  readBody(request, () => {});
  return respond(responseOut, 200, plain, (write) => write(encoder.encode('Hello from the component!')));
}

export const incomingHandler = { handle };
