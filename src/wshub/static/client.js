// wshub JavaScript client: subscribe and publish over the wshub.v1 protocol, resuming without
// loss across reconnects. An ES module without dependencies, for browsers and Node >= 20
// (`node --experimental-websocket` on Node 20, or pass `WebSocketImpl`).
//
// Theory of operation (the same as the Python client, wshub.client):
// - The client keeps, per stream, the position {offset, epoch} of the last message it handed to
//   the application, and sends those positions in every `hello`: the hub replays what was missed.
// - Each stream status (in `welcome` or `subscribed`) is compared with the position: an epoch
//   change or offsets trimmed from the history become `gap` events, emitted before the replay.
// - A message at or below the position (same epoch) is dropped, so listeners see each
//   (stream, offset) once, in increasing order.
// - A publish waits in `#pending` until a `published` or `error` frame answers its `ref`; it is
//   sent again with the same id on every new connection and after `requestTimeout`, and the hub
//   stores it once. `unavailable` and `rate_limited` answers are retried after a backoff; any
//   other refusal (`conflict` included) rejects with a PublishError carrying its code.
// - A publish without an id is sent without one (`contentIds`, the default, as the hub's
//   `dedup.content_ids`): the hub identifies it by its content, so identical data published
//   twice is one message, as through the hub's API and HTTP, and a resend is the same message.
// - A lost connection is retried after a full-jitter exponential backoff; close 1001 or 4005 after
//   a welcome retries at once, 1008 gives up. Only `close()` or giving up ends the client.
// - `token` may be a function (sync or async): it is called before every connection, and when its
//   token is a JWT with `exp` (read without verifying: the hub verifies), again at 80 % of the
//   token's lifetime, to send a `refresh` on the open connection. The hub's `refreshed` answer
//   gives the next expiry. A token that expires anyway gets 4005: the client reconnects at once
//   with a fresh token.

const SUBPROTOCOL = "wshub.v1";
const EVENTS = ["message", "gap", "open", "close", "error"];
const CLIENT_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
const STREAM = /^(?:@[A-Za-z0-9_.:-]{1,128}|\$?[A-Za-z0-9_.:-]{1,200})$/;
const TOPIC = /^[A-Za-z0-9_.:-]{1,200}$/;
const REFRESH_AT = 0.8; // a token is refreshed at this fraction of its lifetime
const MIN_REFRESH_MS = 1000; // never more often: a client clock far ahead must not storm the hub

/** An error from the hub (`code` is its error code, e.g. "forbidden") or from the client. */
export class WshubError extends Error {
  /**
   * @param {string} code a protocol error code, or "policy", "gave_up", "closed", "bad_frame"
   * @param {string} message a human-readable reason
   * @param {object} [detail] fields copied onto the error: `stream`, `closeCode`, `ref`
   */
  constructor(code, message, detail = {}) {
    super(message);
    this.name = "WshubError";
    this.code = code;
    Object.assign(this, detail);
  }
}

/** The hub refused a publish: `code` is its error code ("conflict", "forbidden", ...). */
export class PublishError extends WshubError {
  constructor(code, message, detail = {}) {
    super(code, message, detail);
    this.name = "PublishError";
  }
}

const isPosition = (p) =>
  p != null && Number.isInteger(p.offset) && p.offset >= 0 && typeof p.epoch === "string" && p.epoch !== "";

/**
 * A positions store in memory (the default): positions last as long as the page or process.
 * @param {Object<string, {offset: number, epoch: string}>} [initial]
 */
export function memoryStore(initial = {}) {
  const positions = { ...initial };
  return { load: () => ({ ...positions }), save: (stream, position) => (positions[stream] = position) };
}

/**
 * A positions store in `localStorage`, one key per stream (`prefix + stream`), so that a reloaded
 * page resumes where it left off. Use one prefix per client id, e.g. `"wshub:alice:"`.
 * @param {string} [prefix]
 * @param {Storage} [storage] defaults to `globalThis.localStorage`
 */
export function localStorageStore(prefix = "wshub:", storage = globalThis.localStorage) {
  return {
    load() {
      const positions = {};
      for (let i = 0; i < storage.length; i++) {
        const key = storage.key(i);
        if (!key?.startsWith(prefix)) continue;
        try {
          const position = JSON.parse(storage.getItem(key));
          if (isPosition(position)) positions[key.slice(prefix.length)] = position;
        } catch {
          // a corrupt entry is ignored: that stream starts from now on
        }
      }
      return positions;
    },
    save: (stream, position) => storage.setItem(prefix + stream, JSON.stringify(position)),
  };
}

function newId() {
  const crypto = globalThis.crypto;
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts (https, localhost) and Node
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // plain http pages have this one
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Connect to a wshub server and stay connected until `close()`.
 *
 * @param {string} url e.g. "wss://example.com/ws"
 * @param {string} clientId [A-Za-z0-9_.:-]{1,128}; its personal stream "@clientId" is always subscribed
 * @param {object} [options]
 * @param {string[] | Object<string, ?{offset: number, epoch: string}>} [options.subscribe] stream
 *   names, or names mapped to a position to start after (null: the stored position, else from now on)
 * @param {string | (() => string | Promise<string>)} [options.token] credential sent in every hello;
 *   a function is called before every connection and, for a JWT with `exp`, again at 80 % of its
 *   lifetime to `refresh` the connection's credential
 * @param {number} [options.backoffBase=100] ms: retry n waits a random time in [0, min(cap, base * 2^n)]
 * @param {number} [options.backoffCap=10000] ms
 * @param {number} [options.maxAttempts=Infinity] consecutive failed connections before giving up
 * @param {number} [options.connectTimeout=10000] ms from connecting to `welcome`
 * @param {number} [options.requestTimeout=30000] ms before an unanswered publish is sent again
 * @param {boolean} [options.contentIds=true] as the hub's `dedup.content_ids`: a publish without
 *   an id is identified by its content (true), or gets a random id (false)
 * @param {number} [options.maxMessageBytes=65536] larger publishes are refused with "too_large"
 * @param {{load(): object | Promise<object>, save(stream: string, position: object): void}}
 *   [options.positions] where positions are kept: `memoryStore()` (default) or `localStorageStore()`
 * @param {typeof WebSocket} [options.WebSocketImpl=globalThis.WebSocket]
 * @param {() => number} [options.random=Math.random] the jitter source
 * @returns {WshubClient}
 * @throws {TypeError} for an invalid client id or stream name, or when there is no WebSocket
 */
export function connect(url, clientId, options = {}) {
  return new WshubClient(url, clientId, options);
}

/** A connection to a wshub server that survives drops. Create it with `connect()`. */
export class WshubClient {
  #url;
  #clientId;
  #personal;
  #options;
  #store;
  #listeners = new Map(EVENTS.map((type) => [type, new Set()]));
  #given = new Map(); // stream -> the position options.subscribe gave for it
  #subscriptions = new Set();
  #positions = new Map(); // stream -> {offset, epoch} of the last message handed over
  #epochs = new Map(); // stream -> its epoch on the current connection
  #inHello = []; // the streams the last hello subscribed
  #awaiting = []; // subscriptions sent and not yet answered, in order (refusals carry no ref)
  #pending = new Map(); // ref -> {ref, stream, frame, resolve, reject, sends, timer}
  #nextRef = 1;
  #socket = null;
  #state = "connecting"; // connecting | open | waiting | closed
  #failures = 0; // consecutive connections that were not welcomed
  #retries = 0; // reconnections since the last welcome: the backoff exponent
  #loaded = false;
  #timers = { reconnect: null, heartbeat: null, connect: null, refresh: null };
  #token = { expires: null, at: 0 }; // the last token's `exp` (s), and when it was obtained (ms)
  #unsubscribing = new Map(); // stream -> unsubscribes sent on this connection, not yet answered
  #lastHeard = 0;
  #pingSentAt = 0;
  #stats = {
    attempts: 0, failedAttempts: 0, connects: 0, resumes: 0, gaps: 0, messages: 0, duplicates: 0,
    published: 0, publishRetries: 0, refreshes: 0, lastError: null,
  };

  constructor(url, clientId, options = {}) {
    const { subscribe = [], WebSocketImpl = globalThis.WebSocket } = options;
    if (typeof WebSocketImpl !== "function") {
      const hint = "use a browser, Node >= 22, Node 20 with --experimental-websocket, or pass WebSocketImpl";
      throw new TypeError(`no WebSocket implementation: ${hint}`);
    }
    if (!CLIENT_ID.test(clientId)) {
      throw new TypeError(`clientId must match [A-Za-z0-9_.:-]{1,128}, got ${JSON.stringify(clientId)}`);
    }
    this.#url = url;
    this.#clientId = clientId;
    this.#personal = "@" + clientId;
    this.#options = {
      backoffBase: 100, backoffCap: 10000, maxAttempts: Infinity, connectTimeout: 10000,
      requestTimeout: 30000, maxMessageBytes: 65536, contentIds: true, random: Math.random, ...options,
      WebSocketImpl,
    };
    this.#store = options.positions ?? memoryStore();
    const wanted = Array.isArray(subscribe) ? subscribe.map((s) => [s, null]) : Object.entries(subscribe);
    for (const [stream, position] of wanted) {
      checkStream(stream);
      this.#subscriptions.add(stream);
      if (isPosition(position)) this.#given.set(stream, position);
    }
    this.#connect();
  }

  /**
   * Listen to an event:
   * - "message": {stream, offset, epoch, id, data, ts}, each (stream, offset) once, in offset order
   * - "gap": {stream, from, to, epochChanged, oldEpoch, newEpoch}: offsets `from`..`to` will never
   *   come (`to` is null when the epoch changed: the old epoch's history is lost from `from` on)
   * - "open": {clientId, session, reconnected} once per welcomed connection
   * - "close": {code, reason, reconnecting, delay} once per lost connection; `reconnecting` is false
   *   only for the last one (after `close()`, close code 1008, or `maxAttempts`)
   * - "error": a WshubError (refused subscription, rejected client, ...) or a listener's exception
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    const listeners = this.#listeners.get(type);
    if (!listeners) throw new TypeError(`unknown event ${JSON.stringify(type)}; the events are ${EVENTS}`);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  /** Remove a listener added with `on()`. */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  /** Subscribe to `stream`: after the client's position in it if it has one, else from now on. */
  subscribe(stream) {
    checkStream(stream);
    if (this.#subscriptions.has(stream)) return;
    this.#subscriptions.add(stream);
    if (this.#state === "open") this.#sendSubscribe(stream);
  }

  /** Stop receiving `stream`. Its position is kept: subscribing again resumes after it. */
  unsubscribe(stream) {
    if (stream === this.#personal) throw new TypeError("the personal stream is always subscribed");
    if (!this.#subscriptions.delete(stream)) return;
    if (this.#state !== "open") return;
    this.#unsubscribing.set(stream, (this.#unsubscribing.get(stream) ?? 0) + 1);
    this.#send({ type: "unsubscribe", stream });
  }

  /**
   * Publish `data` (any JSON value) to a topic. It is sent again with the same id on every new
   * connection until answered, and the hub stores it once.
   * @param {string} stream a topic
   * @param {*} data
   * @param {{id?: string}} [options] the idempotency key. Without one the hub identifies the
   *   message by its content (stream and data): identical data published again within the hub's
   *   `dedup.window` is not stored twice. With the `contentIds: false` option, a random id.
   * @returns {Promise<{stream: string, offset: number, id: string, duplicate: boolean}>}
   *   `duplicate` is true when an earlier send was already stored. Rejects with a PublishError
   *   when the hub refuses it, with its code ("conflict": the id was used for other data;
   *   "forbidden", "bad_request", "too_large"), a WshubError "closed" when the client closes
   *   first, and a TypeError for a stream that is not a topic or data that is not JSON.
   */
  async publish(stream, data, { id = this.#options.contentIds ? undefined : newId() } = {}) {
    if (this.#state === "closed") throw new WshubError("closed", "the client is closed");
    if (!TOPIC.test(stream)) throw new TypeError(`clients publish to topics only: ${JSON.stringify(stream)}`);
    const ref = this.#nextRef++;
    // TypeError: not JSON. Without an id the field is left out: the hub gives the content id.
    const frame = JSON.stringify({ type: "publish", stream, data, ...(id !== undefined && { id }), ref });
    if (new TextEncoder().encode(frame).length > this.#options.maxMessageBytes) {
      const message = `the frame exceeds ${this.#options.maxMessageBytes} bytes`;
      throw new PublishError("too_large", message, { stream });
    }
    return new Promise((resolve, reject) => {
      const pending = { ref, stream, frame, resolve, reject, sends: 0, timer: null };
      this.#pending.set(ref, pending);
      this.#sendPublish(pending);
    });
  }

  /**
   * Close for good: unanswered publishes reject with code "closed", iterators end, and a last
   * "close" event is emitted. Resolves once the WebSocket is closed (at most 2 s).
   * @returns {Promise<void>}
   */
  close() {
    const socket = this.#socket;
    if (this.#state !== "closed") this.#finish(1000, "closed by the client", null);
    if (!socket || socket.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 2000);
      socket.onclose = () => resolve(clearTimeout(timer));
    });
  }

  /**
   * Counters since `connect()` and the current state: `reconnects` counts welcomed connections after
   * the first, `resumes` stream resumptions that lost nothing, `duplicates` messages dropped as
   * already delivered, `publishRetries` publish frames sent again.
   */
  statistics() {
    return {
      ...this.#stats,
      state: this.#state,
      connected: this.#state === "open",
      reconnects: Math.max(0, this.#stats.connects - 1),
      pendingPublishes: this.#pending.size,
      subscriptions: [...this.#subscriptions],
      positions: Object.fromEntries(this.#positions),
    };
  }

  /** `for await (const message of client)`: the messages from now until the client closes. */
  [Symbol.asyncIterator]() {
    const buffer = [];
    let wake = () => {};
    let done = this.#state === "closed";
    const offMessage = this.on("message", (message) => (buffer.push(message), wake()));
    const offClose = this.on("close", ({ reconnecting }) => ((done ||= !reconnecting), wake()));
    const finish = () => {
      offMessage();
      offClose();
      done = true;
      return { done: true, value: undefined };
    };
    return {
      async next() {
        while (buffer.length === 0 && !done) await new Promise((resolve) => (wake = resolve));
        return buffer.length ? { done: false, value: buffer.shift() } : finish();
      },
      return: async () => finish(),
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // ------------------------------------------------------------------ connecting

  async #connect() {
    this.#state = "connecting";
    this.#stats.attempts++;
    let token;
    try {
      if (!this.#loaded) await this.#loadPositions();
      const option = this.#options.token;
      token = typeof option === "function" ? await option() : option;
      this.#token = { expires: tokenExpiry(token), at: Date.now() };
    } catch (error) {
      this.#emitError(error);
      return this.#lost(null, 1006, "could not prepare the hello");
    }
    if (this.#state === "closed") return; // closed meanwhile
    let socket, opened = false;
    try {
      socket = this.#socket = new this.#options.WebSocketImpl(this.#url, SUBPROTOCOL);
    } catch (error) {
      const message = `cannot connect to ${this.#url}: ${error.message}`;
      return this.#finish(1006, "", new WshubError("bad_url", message));
    }
    const late = () => this.#abandon(socket, "no welcome in time");
    this.#timers.connect = setTimeout(late, this.#options.connectTimeout);
    socket.onopen = () => ((opened = true), socket.send(this.#hello(token)));
    socket.onmessage = (event) => this.#receive(socket, event.data);
    socket.onclose = (event) => this.#lost(socket, event.code, event.reason);
    // Once open, a close event follows every error. A failed connection fires no close event in
    // Node 20's WebSocket (nodejs/undici#3546), so an error before open counts as the close.
    socket.onerror = () => opened || this.#abandon(socket, "connection failed");
  }

  async #loadPositions() {
    const stored = (await this.#store.load()) ?? {};
    for (const [stream, position] of Object.entries(stored)) {
      if (isPosition(position)) this.#positions.set(stream, position);
    }
    for (const [stream, position] of this.#given) this.#positions.set(stream, position);
    this.#loaded = true;
  }

  #hello(token) {
    const subscribe = {};
    for (const stream of this.#subscriptions) subscribe[stream] = this.#positions.get(stream) ?? null;
    if (this.#positions.has(this.#personal)) subscribe[this.#personal] = this.#positions.get(this.#personal);
    this.#inHello = Object.keys(subscribe);
    const hello = { type: "hello", client_id: this.#clientId, ...(token != null && { token }), subscribe };
    return JSON.stringify(hello);
  }

  #lost(socket, code, reason) {
    if (socket !== this.#socket || this.#state === "closed") return;
    const welcomed = this.#state === "open";
    this.#socket = null;
    this.#clearTimers();
    this.#stats.lastError = `connection closed (${code}${reason ? ": " + reason : ""})`;
    if (code === 1008) {
      const message = `the hub rejected this client (1008): ${reason || "no reason"}`;
      return this.#finish(code, reason, new WshubError("policy", message, { closeCode: code }));
    }
    if (!welcomed) {
      this.#stats.failedAttempts++;
      if (++this.#failures >= this.#options.maxAttempts) {
        const message = `gave up after ${this.#failures} failed connection attempts (last close ${code})`;
        return this.#finish(code, reason, new WshubError("gave_up", message, { closeCode: code }));
      }
    }
    // 1001: the node is going away; 4005: the token expired (the next hello gets a fresh one).
    const delay = (code === 1001 || code === 4005) && welcomed ? 0 : this.#backoff(this.#retries++);
    this.#state = "waiting";
    this.#emit("close", { code, reason, reconnecting: true, delay });
    this.#timers.reconnect = setTimeout(() => this.#connect(), delay);
  }

  /** Give up on a socket without waiting for its close handshake (it may never come). */
  #abandon(socket, reason) {
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close(); // no code: the hub's own codes (4000 and up) mean something else
    } catch {
      // not closable in its state: it is going away anyway
    }
    this.#lost(socket, 1006, reason);
  }

  #backoff(retry) {
    const { backoffBase, backoffCap, random } = this.#options;
    return random() * Math.min(backoffCap, backoffBase * 2 ** Math.min(retry, 30));
  }

  #finish(code, reason, error) {
    this.#state = "closed";
    this.#clearTimers();
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close(1000);
    }
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(error ?? new WshubError("closed", "the client is closed"));
    }
    this.#pending.clear();
    if (error) this.#emitError(error);
    this.#emit("close", { code, reason, reconnecting: false, delay: null });
  }

  #clearTimers() {
    clearTimeout(this.#timers.reconnect);
    clearTimeout(this.#timers.connect);
    clearTimeout(this.#timers.refresh);
    clearInterval(this.#timers.heartbeat);
  }

  // ------------------------------------------------------------------ refreshing the token

  /** Plan the next refresh of a token that expires at `expires` (Unix s), obtained at `at` (ms). */
  #planRefresh(socket, expires, at) {
    clearTimeout(this.#timers.refresh);
    if (typeof this.#options.token !== "function" || expires == null) return;
    const expiresAt = expires * 1000;
    const due = at + Math.max((expiresAt - at) * REFRESH_AT, MIN_REFRESH_MS);
    this.#timers.refresh = setTimeout(() => this.#refresh(socket, expiresAt), Math.max(0, due - Date.now()));
  }

  async #refresh(socket, expiresAt) {
    let token;
    try {
      token = await this.#options.token();
    } catch (error) {
      this.#emitError(error);
      const left = expiresAt - Date.now(); // try again halfway to the expiry, while there is time
      if (socket === this.#socket && left > MIN_REFRESH_MS) {
        this.#timers.refresh = setTimeout(() => this.#refresh(socket, expiresAt), left / 2);
      }
      return;
    }
    if (socket !== this.#socket || this.#state !== "open" || token == null) return;
    this.#send({ type: "refresh", token });
  }

  // ------------------------------------------------------------------ receiving

  #receive(socket, text) {
    this.#lastHeard = Date.now();
    for (const line of String(text).split("\n")) {
      if (socket !== this.#socket) return; // a listener closed the client
      if (!line.trim()) continue;
      let frame;
      try {
        frame = JSON.parse(line);
      } catch {
        this.#emitError(new WshubError("bad_frame", `the hub sent invalid JSON: ${line.slice(0, 80)}`));
        continue;
      }
      if (frame.type === "welcome") this.#welcomed(socket, frame);
      else if (frame.type === "message") this.#deliver(frame);
      else if (frame.type === "subscribed") this.#subscribed(frame);
      else if (frame.type === "published") this.#answered(frame);
      else if (frame.type === "error") this.#refused(frame);
      else if (frame.type === "refreshed") this.#refreshed(socket, frame);
      else if (frame.type === "unsubscribed") this.#unsubscribed(frame);
      // pong and unknown types only show that the connection is alive
    }
  }

  #welcomed(socket, { client_id, session, heartbeat, streams = {} }) {
    const reconnected = this.#stats.connects > 0;
    this.#state = "open";
    this.#failures = this.#retries = 0;
    this.#stats.connects++;
    clearTimeout(this.#timers.connect);
    this.#startHeartbeat(socket, (heartbeat > 0 ? heartbeat : 25) * 1000);
    this.#planRefresh(socket, this.#token.expires, this.#token.at);
    this.#unsubscribing.clear(); // answers of a lost connection never come
    this.#epochs.clear();
    this.#awaiting = this.#inHello.filter((stream) => !(stream in streams)); // refusals follow
    const gaps = [];
    for (const [stream, status] of Object.entries(streams)) {
      if (stream === this.#personal || this.#subscriptions.has(stream)) {
        gaps.push(...this.#status(stream, status));
      } else {
        this.#send({ type: "unsubscribe", stream }); // unsubscribed while the hello was on its way
      }
    }
    for (const stream of this.#subscriptions) {
      if (!this.#inHello.includes(stream)) this.#sendSubscribe(stream); // subscribed meanwhile
    }
    for (const pending of this.#pending.values()) this.#sendPublish(pending);
    this.#emit("open", { clientId: client_id, session, reconnected });
    gaps.forEach((gap) => this.#emitGap(gap));
  }

  #startHeartbeat(socket, interval) {
    // A ping every `heartbeat` seconds (hubs behind ASGI see no WebSocket pings, only frames).
    // Silence is judged from our last ping, not from the clock alone: background tabs throttle
    // timers to once a minute, and a late tick must not condemn a healthy connection.
    this.#pingSentAt = 0;
    this.#timers.heartbeat = setInterval(() => {
      const unanswered = this.#pingSentAt > this.#lastHeard; // #pingSentAt: the oldest such ping
      if (unanswered && Date.now() - this.#pingSentAt >= interval) {
        return this.#abandon(socket, "no answer to ping");
      }
      if (!unanswered) this.#pingSentAt = Date.now();
      this.#send({ type: "ping" });
    }, interval);
  }

  /** Take a stream status into account; returns the gaps it reveals, to emit before its replay. */
  #status(stream, { epoch, offset, first }) {
    this.#epochs.set(stream, epoch);
    const held = this.#positions.get(stream);
    if (!held) {
      this.#setPosition(stream, { offset, epoch }); // a first subscription starts from now on
      return [];
    }
    const gaps = [];
    let seen = held.offset;
    if (held.epoch !== epoch || seen > offset) {
      // The stream's history was lost (say, a hub restart): its offsets start again.
      gaps.push(gap(stream, seen + 1, null, held.epoch, epoch));
      seen = 0;
    }
    const oldest = first ?? offset + 1; // the replay starts here
    if (oldest > seen + 1) gaps.push(gap(stream, seen + 1, oldest - 1, epoch, epoch));
    if (gaps.length) this.#setPosition(stream, { offset: oldest - 1, epoch });
    else this.#stats.resumes++;
    return gaps;
  }

  #refreshed(socket, { expires }) {
    this.#stats.refreshes++;
    this.#planRefresh(socket, Number.isFinite(expires) ? expires : null, Date.now());
  }

  #unsubscribed({ stream }) {
    const asked = this.#unsubscribing.get(stream) ?? 0;
    if (asked > 1) this.#unsubscribing.set(stream, asked - 1);
    else if (asked === 1) this.#unsubscribing.delete(stream);
    else if (this.#subscriptions.delete(stream)) {
      // Not asked for: the rights of a refreshed token no longer allow the stream.
      const message = `unsubscribed from ${stream}: the refreshed token does not allow it`;
      this.#emitError(new WshubError("forbidden", message, { stream }));
    }
  }

  #subscribed(frame) {
    this.#awaiting = this.#awaiting.filter((stream) => stream !== frame.stream);
    if (!this.#subscriptions.has(frame.stream)) return;
    for (const gap of this.#status(frame.stream, frame)) this.#emitGap(gap);
  }

  #deliver({ stream, offset, id, data, ts }) {
    const epoch = this.#epochs.get(stream);
    const held = this.#positions.get(stream);
    if (!epoch || !held || (stream !== this.#personal && !this.#subscriptions.has(stream))) return;
    if (held.epoch === epoch && offset <= held.offset) {
      this.#stats.duplicates++;
      return;
    }
    if (held.epoch === epoch && offset > held.offset + 1) {
      // The hub promises no gap on a connection; should one happen anyway, say so.
      this.#emitGap(gap(stream, held.offset + 1, offset - 1, epoch, epoch));
    }
    this.#stats.messages++;
    this.#positions.set(stream, { offset, epoch });
    this.#emit("message", { stream, offset, epoch, id, data, ts });
    this.#store.save(stream, { offset, epoch }); // after the listeners: at least once
  }

  #answered({ ref, stream, offset, id, duplicate }) {
    const pending = this.#pending.get(ref);
    if (!pending) return; // an answer to a send that was already answered
    this.#pending.delete(ref);
    clearTimeout(pending.timer);
    this.#stats.published++;
    pending.resolve({ stream, offset, id, duplicate });
  }

  #refused({ code, message, ref }) {
    if (ref !== undefined) return this.#publishRefused(this.#pending.get(ref), code, message);
    if (code !== "rate_limited" && this.#awaiting.length) {
      // Subscription refusals carry no ref; the hub answers subscriptions in order. A forbidden
      // stream is dropped; an unavailable one is tried again on the next connection.
      const stream = this.#awaiting.shift();
      if (code === "forbidden") this.#subscriptions.delete(stream);
      this.#emitError(new WshubError(code, `subscription to ${stream} refused: ${message}`, { stream }));
    } else {
      // rate_limited: a frame was dropped unread, the hub cannot say which; unanswered publishes
      // are sent again after requestTimeout.
      this.#emitError(new WshubError(code, message));
    }
  }

  #publishRefused(pending, code, message) {
    if (!pending) return; // an answer to a send that was already answered
    clearTimeout(pending.timer);
    if (code === "unavailable" || code === "rate_limited") {
      const delay = this.#backoff(Math.min(pending.sends - 1, 10));
      pending.timer = setTimeout(() => this.#sendPublish(pending), delay); // the same id, later
      return;
    }
    this.#pending.delete(pending.ref); // final: "conflict", "forbidden", "bad_request", ...
    pending.reject(new PublishError(code, message, { stream: pending.stream }));
  }

  // ------------------------------------------------------------------ helpers

  #sendPublish(pending) {
    clearTimeout(pending.timer);
    if (this.#state !== "open") return; // the next welcome sends it
    if (pending.sends++ > 0) this.#stats.publishRetries++;
    this.#socket.send(pending.frame);
    pending.timer = setTimeout(() => this.#sendPublish(pending), this.#options.requestTimeout);
  }

  #sendSubscribe(stream) {
    const position = this.#positions.get(stream);
    this.#awaiting.push(stream);
    this.#send({ type: "subscribe", stream, ...(position && { position }) });
  }

  #send(frame) {
    if (this.#state === "open") this.#socket.send(JSON.stringify(frame));
  }

  #setPosition(stream, position) {
    this.#positions.set(stream, position);
    this.#store.save(stream, position);
  }

  #emitGap(gap) {
    this.#stats.gaps++;
    this.#emit("gap", gap);
  }

  #emit(type, value) {
    for (const listener of [...this.#listeners.get(type)]) {
      try {
        listener(value);
      } catch (error) {
        if (type === "error") console.error("wshub: an error listener threw", error);
        else this.#emitError(error);
      }
    }
  }

  #emitError(error) {
    this.#stats.lastError = `${error.code ?? error.name}: ${error.message}`;
    if (this.#listeners.get("error").size) this.#emit("error", error);
    else console.error("wshub:", error);
  }
}

function checkStream(stream) {
  if (typeof stream !== "string" || !STREAM.test(stream)) {
    throw new TypeError(`invalid stream name ${JSON.stringify(stream)}`);
  }
}

/** The claims of a JWT, read without verifying it (the hub verifies); else null. */
function unverifiedClaims(token) {
  const payload = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!payload) return null;
  try {
    const claims = JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/")));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null; // not a JWT: an API key, or an opaque token a hook reads
  }
}

/** The `exp` claim (Unix s) of a JWT, read without verifying it (the hub verifies); else null. */
function tokenExpiry(token) {
  const exp = unverifiedClaims(token)?.exp;
  return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
}

/**
 * The `sub` claim of a JWT, read without verifying it (the hub verifies): with `[auth]` the hub
 * admits a token only under the client id its `sub` names, so connect as that id.
 * @param {unknown} token
 * @returns {string | null} null when `token` is not a JWT with a string `sub` (an API key, say)
 */
export function tokenSubject(token) {
  const sub = unverifiedClaims(token)?.sub;
  return typeof sub === "string" && sub !== "" ? sub : null;
}

// `to` is null when the stream's numbering started again: every offset from `from` on is gone.
const gap = (stream, from, to, oldEpoch, newEpoch) =>
  ({ stream, from, to, epochChanged: to === null, oldEpoch, newEpoch });
