// Drives src/wshub/static/client.js with a token provider against a real hub with [auth], for
// tests/security/test_client_js_tokens.py. The provider asks the test for each token (it mints
// them with PyJWT): it emits {"event": "token?"} and waits for {"cmd": "token", "token": "..."}.
//
//   node --experimental-websocket tests/js/client_token_node.mjs ws://127.0.0.1:PORT/ws
import { createInterface } from "node:readline";
import { connect } from "../../src/wshub/static/client.js";

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
let waiting = []; // resolvers of the provider calls not yet answered

const client = connect(process.argv[2], "alice", {
  subscribe: ["news"],
  backoffBase: 50,
  backoffCap: 400,
  token: () => new Promise((resolve) => {
    waiting.push(resolve);
    emit({ event: "token?" });
  }),
});
client.on("open", ({ reconnected }) => emit({ event: "open", reconnected }));
client.on("close", ({ code, reason, reconnecting }) => emit({ event: "close", code, reason, reconnecting }));
client.on("error", (error) => emit({ event: "error", code: error.code, message: error.message }));
client.on("message", ({ stream, offset, data }) => emit({ event: "message", stream, offset, data }));

for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  if (command.cmd === "token") {
    const answered = waiting;
    waiting = [];
    answered.forEach((resolve) => resolve(command.token));
  } else if (command.cmd === "stats") {
    emit({ event: "stats", ...client.statistics() });
  } else if (command.cmd === "close") {
    await client.close();
    process.exit(0);
  }
}
