// Subscribes to an SSE/Mercure URL with the npm `eventsource` package (a
// client nobody in this repository wrote) and prints one JSON line per line of
// output on stdout, for tests/it/node_client.rs:
//   {"open":true}                         once the response headers arrived
//   {"id":…,"type":…,"data":…}            each event received
//   {"error":…,"code":<HTTP status>}      a failed connection (then exit 2)
// Exits 0 after `count` events, 1 at the deadline.
//
// Usage: node subscribe.mjs '<json options>'
//   url        the full URL, topics included
//   token      optional: sent as `Authorization: Bearer <token>`
//   lastEventId optional: sent as the `Last-Event-ID` header on the first request
//   count      events to wait for
//   deadlineMs give up after this many milliseconds (default 10000)
//   types      optional: SSE event names to listen to besides `message`
import { EventSource } from "eventsource";

const options = JSON.parse(process.argv[2] ?? "{}");
const { url, token, lastEventId, count = 1, deadlineMs = 10000, types = [] } = options;

let first = true;
const source = new EventSource(url, {
  fetch: (input, init) => {
    const headers = { ...(init?.headers ?? {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    // The library sends Last-Event-ID itself on reconnects; the first request
    // resumes from the id the test gives.
    if (first && lastEventId) headers["Last-Event-ID"] = lastEventId;
    first = false;
    return fetch(input, { ...init, headers });
  },
});

const print = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
let received = 0;

const finish = (code) => {
  source.close();
  process.exitCode = code;
  // stdout is flushed before exit because writes to a pipe are queued in order.
  setImmediate(() => process.exit(code));
};

const onEvent = (event) => {
  print({ id: event.lastEventId, type: event.type, data: event.data });
  received += 1;
  if (received >= count) finish(0);
};

source.addEventListener("open", () => print({ open: true }));
source.addEventListener("message", onEvent);
for (const type of types) source.addEventListener(type, onEvent);
source.addEventListener("error", (event) => {
  // `code` is set when the server answered with a non-200 status; a plain
  // network error leaves the library reconnecting on its own.
  if (event.code !== undefined) {
    print({ error: event.message ?? "error", code: event.code });
    finish(2);
  }
});

setTimeout(() => {
  print({ error: `deadline: ${received} of ${count} events`, code: 0 });
  finish(1);
}, deadlineMs);
