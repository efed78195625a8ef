// The client's policies against a scripted fake WebSocket, on node:test's mock clock: exact
// backoff delays, close codes, hello contents, gaps, duplicates, publish retries, heartbeat.
//
//   node --test tests/js/client_unit_test.mjs      (run by tests/test_client_js.py)
import assert from "node:assert/strict";
import { test } from "node:test";
import { PublishError, WshubError, connect, memoryStore, tokenSubject } from "../../src/wshub/static/client.js";

/** A WebSocket whose peer is the test: `open()`, `receive(...frames)`, `drop(code)`, `fail()`. */
class FakeSocket {
  static all = [];

  constructor(url, protocol) {
    Object.assign(this, { url, protocol, sent: [], readyState: 0, closedWith: null });
    FakeSocket.all.push(this);
  }

  send(text) {
    assert.equal(this.readyState, 1, "sent on a socket that is not open");
    this.sent.push(JSON.parse(text));
  }

  close(code = 1005) {
    this.closedWith ??= code; // 1005: closed without a code
    this.readyState = 3;
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(...frames) {
    this.onmessage?.({ data: frames.map((frame) => JSON.stringify(frame)).join("\n") });
  }

  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  fail() {
    this.readyState = 3;
    this.onerror?.({}); // and no close event, as Node 20 does for a refused connection
  }

  sentOfType(type) {
    return this.sent.filter((frame) => frame.type === type);
  }
}

const flush = () => new Promise((resolve) => setImmediate(resolve)); // let pending promises run
const welcome = (streams = {}, heartbeat = 25) => ({
  type: "welcome", client_id: "alice", session: "s", heartbeat,
  streams: { "@alice": { epoch: "p", offset: 0, recovered: true }, ...streams },
});
const message = (stream, offset, data = offset) => ({ type: "message", stream, offset, id: `m${offset}`, data, ts: 1 });

/** A client on fake sockets with `random() = 1`, so every backoff delay is its upper bound. */
async function start(t, options = {}) {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"] });
  FakeSocket.all = [];
  const events = [];
  const client = connect("ws://hub/ws", "alice", { WebSocketImpl: FakeSocket, random: () => 1, ...options });
  for (const type of ["message", "gap", "open", "close", "error"]) client.on(type, (e) => events.push([type, e]));
  await flush();
  t.after(() => client.close());
  const socket = () => FakeSocket.all.at(-1);
  const tick = async (ms) => (t.mock.timers.tick(ms), await flush());
  const of = (type) => events.filter(([kind]) => kind === type).map(([, event]) => event);
  return { client, events, socket, tick, of };
}

test("the hello carries the subprotocol, token and positions", async (t) => {
  const positions = memoryStore({ news: { offset: 4, epoch: "e" }, "@alice": { offset: 2, epoch: "p" } });
  const { socket } = await start(t, { subscribe: ["news", "chat"], positions, token: async () => "secret" });
  socket().open();
  assert.equal(socket().protocol, "wshub.v1");
  assert.deepEqual(socket().sent, [{
    type: "hello", client_id: "alice", token: "secret",
    subscribe: { news: { offset: 4, epoch: "e" }, chat: null, "@alice": { offset: 2, epoch: "p" } },
  }]);
});

test("reconnect delays are full-jitter exponential and capped; a welcome resets them", async (t) => {
  const { socket, tick, of } = await start(t, { backoffBase: 100, backoffCap: 1000 });
  for (const bound of [100, 200, 400, 800, 1000, 1000]) {
    socket().fail();
    assert.equal(of("close").at(-1).delay, bound);
    await tick(bound - 1);
    const before = FakeSocket.all.length;
    await tick(1);
    assert.equal(FakeSocket.all.length, before + 1, `no new attempt after ${bound} ms`);
  }
  socket().open();
  socket().receive(welcome());
  socket().drop(1006);
  assert.equal(of("close").at(-1).delay, 100);
});

test("1001 after a welcome reconnects at once; 1001 and 1013 before one back off", async (t) => {
  const { socket, tick, of } = await start(t);
  socket().open();
  socket().receive(welcome());
  socket().drop(1001);
  assert.equal(of("close").at(-1).delay, 0);
  await tick(0);
  socket().open();
  socket().drop(1001); // refused while the hub drains: no welcome
  assert.equal(of("close").at(-1).delay, 100);
  await tick(100);
  socket().open();
  socket().drop(1013);
  assert.equal(of("close").at(-1).delay, 200);
  assert.equal(FakeSocket.all.length, 3);
});

test("1008 ends the client with an error", async (t) => {
  const { socket, of, client } = await start(t);
  socket().open();
  socket().drop(1008, "bad token");
  assert.equal(of("error")[0].code, "policy");
  assert.match(of("error")[0].message, /bad token/);
  assert.deepEqual(of("close").map((e) => e.reconnecting), [false]);
  assert.equal(client.statistics().state, "closed");
  await assert.rejects(client.publish("news", 1), { code: "closed" });
});

test("maxAttempts consecutive failures end the client with an error", async (t) => {
  const { socket, tick, of } = await start(t, { maxAttempts: 2 });
  socket().fail();
  await tick(100);
  socket().fail();
  assert.equal(of("error")[0].code, "gave_up");
  assert.deepEqual(of("close").map((e) => e.reconnecting), [true, false]);
  assert.equal(FakeSocket.all.length, 2);
});

test("a resume reports trimmed offsets and epoch changes as gaps, before the replay", async (t) => {
  const positions = memoryStore({ news: { offset: 10, epoch: "e" }, chat: { offset: 7, epoch: "old" } });
  const { socket, events, client } = await start(t, { subscribe: ["news", "chat"], positions });
  socket().open();
  socket().receive(
    welcome({ news: { epoch: "e", offset: 20, first: 15, recovered: false },
      chat: { epoch: "new", offset: 5, first: 3, recovered: false } }),
    message("news", 15), message("chat", 3),
  );
  assert.deepEqual(events.map(([type, e]) => [type, e.stream, e.from ?? e.offset, e.to ?? null]), [
    ["open", undefined, undefined, null],
    ["gap", "news", 11, 14],
    ["gap", "chat", 8, null],
    ["gap", "chat", 1, 2],
    ["message", "news", 15, null],
    ["message", "chat", 3, null],
  ]);
  assert.deepEqual(events[2][1], { stream: "chat", from: 8, to: null, epochChanged: true, oldEpoch: "old", newEpoch: "new" });
  assert.deepEqual(client.statistics().positions.chat, { offset: 3, epoch: "new" });
  assert.deepEqual(positions.load().news, { offset: 15, epoch: "e" });
});

test("duplicates are dropped, and a hole while connected is a gap", async (t) => {
  const { socket, of, client } = await start(t, { subscribe: ["news"] });
  socket().open();
  socket().receive(welcome({ news: { epoch: "e", offset: 0, recovered: true } }));
  socket().receive(message("news", 1), message("news", 2), message("news", 1), message("news", 2), message("news", 5));
  assert.deepEqual(of("message").map((m) => m.offset), [1, 2, 5]);
  assert.deepEqual(of("gap").map((g) => [g.from, g.to]), [[3, 4]]);
  assert.equal(client.statistics().duplicates, 2);
});

test("a publish is resent with the same id until answered, and retried when unavailable", async (t) => {
  const { client, socket, tick } = await start(t, { requestTimeout: 5000 });
  const answer = client.publish("news", { x: 1 }, { id: "k1" });
  socket().open();
  assert.equal(socket().sentOfType("publish").length, 0); // not before the welcome
  socket().receive(welcome());
  const [first] = socket().sentOfType("publish");
  assert.deepEqual(first, { type: "publish", stream: "news", data: { x: 1 }, id: "k1", ref: first.ref });
  socket().drop(1006); // the answer is lost with the connection
  await tick(100);
  socket().open();
  socket().receive(welcome());
  socket().receive({ type: "error", code: "unavailable", message: "later", ref: first.ref });
  await tick(200); // the backoff after a second send: base * 2
  await tick(5000); // no answer: sent again after requestTimeout
  assert.deepEqual(socket().sentOfType("publish").map((p) => [p.id, p.ref]), [["k1", first.ref], ["k1", first.ref], ["k1", first.ref]]);
  socket().receive({ type: "published", ref: first.ref, stream: "news", offset: 9, id: "k1", duplicate: true });
  assert.deepEqual(await answer, { stream: "news", offset: 9, id: "k1", duplicate: true });
  assert.equal(client.statistics().publishRetries, 3);
});

test("without an id the hub's content id is used: the frame has none, and a resend is the same frame", async (t) => {
  const { client, socket, tick } = await start(t, { requestTimeout: 5000 });
  socket().open();
  socket().receive(welcome());
  const answer = client.publish("news", { title: "hi" });
  const [first] = socket().sentOfType("publish");
  assert.deepEqual(first, { type: "publish", stream: "news", data: { title: "hi" }, ref: first.ref });
  socket().drop(1006); // the answer is lost with the connection
  await tick(100);
  socket().open();
  socket().receive(welcome());
  assert.deepEqual(socket().sentOfType("publish"), [first]); // identical: the hub stores it once
  const id = "6d1c0f3a5b2e4d71"; // whatever the hub computed
  socket().receive({ type: "published", ref: first.ref, stream: "news", offset: 1, id, duplicate: true });
  assert.deepEqual(await answer, { stream: "news", offset: 1, id, duplicate: true });
  const again = client.publish("news", { title: "hi" }); // the same data: the same content id
  assert.equal(socket().sentOfType("publish").at(-1).id, undefined);
  socket().receive({ type: "published", ref: socket().sent.at(-1).ref, stream: "news", offset: 1, id, duplicate: true });
  assert.equal((await again).duplicate, true);
});

test("with contentIds off a publish without an id gets a random one, kept across resends", async (t) => {
  const { client, socket, tick } = await start(t, { requestTimeout: 5000, contentIds: false });
  socket().open();
  socket().receive(welcome());
  const unanswered = [client.publish("news", 1), client.publish("news", 1)];
  unanswered.forEach((p) => p.catch(() => {})); // rejected with "closed" at the end
  await tick(5000); // both sent again after requestTimeout
  const ids = socket().sentOfType("publish").map((p) => [p.ref, p.id]);
  assert.equal(ids.length, 4);
  assert.ok(ids.every(([, id]) => typeof id === "string" && id.length >= 16));
  assert.deepEqual(ids.slice(2), ids.slice(0, 2)); // a resend keeps its id
  assert.notEqual(ids[0][1], ids[1][1]); // two calls, two messages
});

test("a conflict rejects with a PublishError and is never sent again", async (t) => {
  const { client, socket, tick } = await start(t, { requestTimeout: 5000 });
  socket().open();
  socket().receive(welcome());
  const refused = client.publish("news", { x: 2 }, { id: "evt-1" });
  const { ref } = socket().sentOfType("publish")[0];
  socket().receive({ type: "error", code: "conflict", message: "evt-1 holds other data", ref });
  await assert.rejects(refused, (error) => {
    assert.ok(error instanceof PublishError && error instanceof WshubError);
    assert.equal(error.code, "conflict");
    assert.equal(error.stream, "news");
    return true;
  });
  await tick(20000); // several request timeouts
  assert.equal(socket().sentOfType("publish").length, 1);
  assert.equal(client.statistics().publishRetries, 0);
});

test("a refused publish rejects; a too large one is never sent; close() rejects the rest", async (t) => {
  const { client, socket } = await start(t, { maxMessageBytes: 200 });
  socket().open();
  socket().receive(welcome());
  const refused = client.publish("news", 1);
  socket().receive({ type: "error", code: "forbidden", message: "no", ref: socket().sent.at(-1).ref });
  await assert.rejects(refused, { code: "forbidden", stream: "news" });
  await assert.rejects(client.publish("news", "x".repeat(300)), { code: "too_large" });
  await assert.rejects(client.publish("@bob", 1), TypeError);
  const unanswered = client.publish("news", 2);
  const closed = client.close();
  await assert.rejects(unanswered, { code: "closed" });
  await closed;
  assert.equal(socket().closedWith, 1000);
});

test("a refused subscription is an error event naming the stream, and is dropped", async (t) => {
  const { client, socket, of } = await start(t, { subscribe: ["news", "secret"] });
  socket().open();
  socket().receive(welcome({ news: { epoch: "e", offset: 0, recovered: true } }),
    { type: "error", code: "forbidden", message: "not for you" });
  assert.deepEqual(of("error").map((e) => [e.code, e.stream]), [["forbidden", "secret"]]);
  assert.deepEqual(client.statistics().subscriptions, ["news"]);
  client.subscribe("other"); // answered in order, after the hello's refusals
  assert.deepEqual(socket().sent.at(-1), { type: "subscribe", stream: "other" });
});

test("a ping every heartbeat; a hub that stops answering is left and reconnected", async (t) => {
  const { socket, tick, of } = await start(t);
  socket().open();
  socket().receive(welcome({}, 2));
  await tick(2000);
  assert.equal(socket().sentOfType("ping").length, 1);
  socket().receive({ type: "pong" });
  await tick(2000);
  assert.equal(socket().sentOfType("ping").length, 2);
  await tick(1999);
  assert.equal(socket().closedWith, null);
  await tick(1); // the second ping was not answered within a heartbeat
  assert.equal(socket().closedWith, 1005);
  assert.equal(of("close").at(-1).code, 1006);
  assert.equal(of("close").at(-1).reconnecting, true);
});

test("for await yields messages until the client closes", async (t) => {
  const { client, socket } = await start(t, { subscribe: ["news"] });
  socket().open();
  socket().receive(welcome({ news: { epoch: "e", offset: 0, recovered: true } }));
  const seen = (async () => {
    const offsets = [];
    for await (const m of client) offsets.push(m.offset);
    return offsets;
  })();
  socket().receive(message("news", 1), message("news", 2));
  await flush();
  await client.close();
  assert.deepEqual(await seen, [1, 2]);
});

// ------------------------------------------------------------------ tokens: provider and refresh

/** A JWT-shaped token with `claims` (the client reads `exp` without verifying; the hub verifies). */
const jwtWith = (claims) => ["eyJhbGciOiJIUzI1NiJ9", Buffer.from(JSON.stringify(claims)).toString("base64url"), "sig"].join(".");

/** A token provider minting 100 s tokens on the mocked clock; `failing` makes it throw. */
function provider() {
  const calls = [];
  const next = () => {
    calls.push(Date.now());
    if (next.failing) throw new Error("the token service is down");
    return jwtWith({ sub: "alice", exp: Date.now() / 1000 + 100, n: calls.length });
  };
  next.calls = calls;
  next.failing = false;
  return next;
}

test("a token provider is asked before each connection, and a JWT is refreshed at 80 %", async (t) => {
  const token = provider();
  const { socket, tick, client } = await start(t, { token });
  socket().open();
  assert.equal(JSON.parse(atob(socket().sent[0].token.split(".")[1])).n, 1);
  socket().receive(welcome());
  await tick(79_999);
  assert.equal(socket().sentOfType("refresh").length, 0);
  await tick(1);
  const [refresh] = socket().sentOfType("refresh");
  assert.equal(JSON.parse(atob(refresh.token.split(".")[1])).n, 2);
  socket().receive({ type: "refreshed", expires: 180 });
  await tick(79_999);
  assert.equal(socket().sentOfType("refresh").length, 1);
  await tick(1); // 80 % of the refreshed token's 100 s, counted from its answer
  assert.equal(socket().sentOfType("refresh").length, 2);
  assert.deepEqual(token.calls, [0, 80_000, 160_000]);
  assert.equal(client.statistics().refreshes, 1);
});

test("4005 after a welcome reconnects at once, with a fresh token", async (t) => {
  const token = provider();
  const { socket, tick, of } = await start(t, { token });
  socket().open();
  socket().receive(welcome());
  await tick(30_000);
  socket().drop(4005, "credential expired; reconnect with a fresh one");
  assert.equal(of("close").at(-1).delay, 0);
  await tick(0);
  socket().open();
  assert.equal(JSON.parse(atob(socket().sent[0].token.split(".")[1])).n, 2);
  assert.deepEqual(token.calls, [0, 30_000]);
});

test("a provider failing at refresh time is asked again halfway to the expiry", async (t) => {
  const token = provider();
  const { socket, tick, of } = await start(t, { token });
  socket().open();
  socket().receive(welcome());
  token.failing = true;
  await tick(80_000);
  assert.match(of("error").at(-1).message, /token service is down/);
  token.failing = false;
  await tick(10_000); // 20 s were left: asked again at 90 s
  assert.deepEqual(token.calls, [0, 80_000, 90_000]);
  assert.equal(socket().sentOfType("refresh").length, 1);
});

test("tokenSubject reads a JWT's sub without verifying it, and nothing from other credentials", () => {
  assert.equal(tokenSubject(jwtWith({ sub: "ops", exp: 1 })), "ops");
  for (const other of [jwtWith({ sub: 7 }), jwtWith({ sub: "" }), jwtWith({}), jwtWith([1])]) {
    assert.equal(tokenSubject(other), null);
  }
  for (const other of ["the-admin-key", "a.b.c", "", null, undefined, 42]) {
    assert.equal(tokenSubject(other), null);
  }
});

test("a fixed token or one without exp is never refreshed", async (t) => {
  const { socket, tick } = await start(t, { token: "the-admin-key" });
  socket().open();
  socket().receive(welcome());
  await tick(1_000_000);
  assert.equal(socket().sentOfType("refresh").length, 0);
});

test("an unasked unsubscribed (narrower rights) drops the stream; our own is just an answer", async (t) => {
  const { client, socket, of } = await start(t, { subscribe: ["news", "chat.a"] });
  socket().open();
  socket().receive(welcome({ news: { epoch: "e", offset: 0, recovered: true }, "chat.a": { epoch: "c", offset: 0, recovered: true } }));
  client.unsubscribe("news");
  client.subscribe("news"); // again, before the answer to the unsubscribe arrives
  socket().receive({ type: "unsubscribed", stream: "news" }, { type: "unsubscribed", stream: "chat.a" });
  assert.deepEqual(client.statistics().subscriptions, ["news"]);
  assert.deepEqual(of("error").map((e) => [e.code, e.stream]), [["forbidden", "chat.a"]]);
});
