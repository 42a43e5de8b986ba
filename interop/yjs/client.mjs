// A stock Yjs client (yjs + y-websocket from npm, no roomlab code) for tests/yjs_interop.rs.
//
// node client.mjs <ws-base> <field> <token> <marker> <edits> <expected-length>
//
// Connects to <ws-base>/<field> (the y-websocket endpoint /yjs/{room}/{doc}/{field}), waits for the
// sync, inserts <marker><i> <edits> times at pseudo-random places while the other clients edit too,
// then waits until its text has at least <expected-length> UTF-16 units, and prints one JSON line per step:
// {"event":"synced"} and {"event":"done","text":...}. Exits 1 with {"event":"error"} on a timeout.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [base, field, token, marker, editsArg, expectedArg] = process.argv.slice(2)
const edits = Number(editsArg)
const expected = Number(expectedArg)
const say = (event) => console.log(JSON.stringify(event))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const doc = new Y.Doc()
const text = doc.getText(field)
const provider = new WebsocketProvider(base, field, doc, {
  params: { token },
  WebSocketPolyfill: WebSocket,
  // Each provider must talk through the server only, not to its siblings in this process.
  disableBc: true
})

const deadline = Date.now() + 60_000
const waitFor = async (what, ready) => {
  while (!ready()) {
    if (Date.now() > deadline) {
      say({ event: 'error', what, text: text.toString() })
      process.exit(1)
    }
    await sleep(5)
  }
}

await waitFor('sync', () => provider.synced)
say({ event: 'synced' })
// A small linear congruential generator, so a run's edit places depend on its marker only.
let state = [...marker].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7)
const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0)
for (let i = 0; i < edits; i++) {
  text.insert(next() % (text.length + 1), `${marker}${i};`)
  await sleep(next() % 8)
}
// At least: a text longer than expected (edits that should never have arrived) ends the wait too,
// so the test can say what went wrong instead of timing out.
await waitFor('convergence', () => text.length >= expected)
// Let the last updates leave before the socket closes.
await sleep(200)
say({ event: 'done', text: text.toString() })
provider.destroy()
process.exit(0)
