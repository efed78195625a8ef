// Drives src/wshub/static/client.js against a real hub, for tests/test_client_js.py.
//
//   node --experimental-websocket tests/js/client_node_test.mjs ws://127.0.0.1:PORT/ws
//
// Commands arrive on stdin, one JSON object per line; events leave on stdout, one JSON object per
// line. The socket is wrapped to misbehave like a bad network on demand: `duplicate` delivers every
// frame of messages a second time after the next frame (stale duplicates), `dropAnswers` swallows
// `published` frames (answers lost on the way, so the client must resend).
import { createInterface } from "node:readline";
import { connect, memoryStore } from "../../src/wshub/static/client.js";

const url = process.argv[2];
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const flaky = { duplicate: true, dropAnswers: false };

class FlakyWebSocket extends WebSocket {
  #previous = "";

  set onmessage(listener) {
    super.onmessage = listener && ((event) => {
      let lines = event.data.split("\n");
      if (flaky.dropAnswers) lines = lines.filter((line) => !line.includes('"type":"published"'));
      if (lines.length) listener({ data: lines.join("\n") });
      if (flaky.duplicate && this.#previous) listener({ data: this.#previous });
      const messages = lines.filter((line) => line.includes('"type":"message"'));
      if (messages.length) this.#previous = messages.join("\n");
    });
  }

  get onmessage() {
    return super.onmessage;
  }
}

const store = memoryStore(); // shared by successive clients, like localStorage across page loads
const delivered = []; // {stream, epoch, offset} in delivery order, over every client
const gaps = [];
let waiting = null; // {stream, offset, resolve}: a report waiting for a message
let client;

function start() {
  client = connect(url, "node-1", {
    subscribe: ["news", "pub"],
    positions: store,
    WebSocketImpl: FlakyWebSocket,
    backoffBase: 50,
    backoffCap: 400,
  });
  client.on("open", ({ reconnected }) => emit({ event: "open", reconnected }));
  client.on("close", ({ code, reconnecting }) => emit({ event: "close", code, reconnecting }));
  client.on("error", (error) => emit({ event: "error", code: error.code, message: error.message }));
  client.on("gap", (gap) => {
    gaps.push(gap);
    emit({ event: "gap", ...gap });
  });
  client.on("message", ({ stream, epoch, offset }) => {
    delivered.push({ stream, epoch, offset });
    if (waiting && stream === waiting.stream && offset >= waiting.offset) waiting.resolve(epoch);
  });
}

/** Check the messages of `stream` in the epoch of its last message, offsets `from` to `to`. */
async function report({ stream, from, to }) {
  const last = delivered.findLast((m) => m.stream === stream);
  const epoch =
    last && last.offset >= to
      ? last.epoch
      : await new Promise((resolve) => (waiting = { stream, offset: to, resolve }));
  waiting = null;
  const ours = delivered.filter((m) => m.stream === stream && m.epoch === epoch);
  const inRange = ours.filter((m) => m.offset >= from && m.offset <= to).map((m) => m.offset);
  const seen = new Set(inRange);
  const covered = (offset) => gaps.some((g) => g.stream === stream && g.from <= offset && offset <= g.to);
  const lost = [];
  let gapCovered = 0;
  for (let offset = from; offset <= to; offset++) {
    if (seen.has(offset)) continue;
    if (covered(offset)) gapCovered++;
    else lost.push(offset);
  }
  const outOfOrder = ours.filter((m, i) => i > 0 && m.offset <= ours[i - 1].offset).length;
  const { duplicates, connects, messages } = client.statistics();
  const result = {
    event: "report", stream, epoch, received: seen.size, lost, duplicates: inRange.length - seen.size,
    outOfOrder, gapCovered, duplicatesDropped: duplicates, connects, messages,
  };
  console.error(`client.js ${stream} ${from}..${to}: received ${seen.size}, lost ${lost.length}, ` +
    `duplicates ${result.duplicates}, dropped ${duplicates} duplicate deliveries, gap ${gapCovered}`);
  emit(result);
}

async function publish({ stream, items }) {
  const answers = items.map((item) => client.publish(stream, item.data, item.id ? { id: item.id } : {}));
  emit({ event: "publishing", count: answers.length });
  try {
    emit({ event: "published", results: await Promise.all(answers) });
  } catch (error) {
    emit({ event: "publish-failed", code: error.code, message: error.message });
  }
}

const commands = {
  report,
  publish,
  flaky: async (settings) => (Object.assign(flaky, settings), emit({ event: "flaky", ...flaky })),
  pause: async () => (await client.close(), emit({ event: "paused" })),
  resume: async () => start(),
  exit: async () => (await client.close(), emit({ event: "bye" }), input.close()),
};

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  const { cmd, ...args } = JSON.parse(line);
  commands[cmd](args).catch((error) => {
    console.error(error);
    process.exit(2);
  });
});
start();
