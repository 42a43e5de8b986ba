// A small y-websocket server, broken on purpose in one way, for the conformance suite to catch:
//   node broken.mjs last-update   keeps only the last update it received, not the merged document
//   node broken.mjs no-step2      ignores the sync step 2 a client answers with (offline edits)
//   node broken.mjs no-awareness  never relays awareness, nor removes it on disconnect
// Anything else it does as the stock server does: step 1 on connect, step 2 for a step 1, updates
// relayed to every other client of the document. It listens on 127.0.0.1:$PORT; the document is
// the URL's path.
import http from 'node:http'
import { WebSocketServer } from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'

const mode = process.argv[2]
if (!['last-update', 'no-step2', 'no-awareness'].includes(mode)) {
  console.error('usage: node broken.mjs last-update|no-step2|no-awareness')
  process.exit(2)
}

const documents = new Map() // name -> { doc, clients: Set<socket> }

function documentNamed (name) {
  if (!documents.has(name)) {
    const doc = new Y.Doc()
    const entry = { doc, clients: new Set() }
    doc.on('update', (update, origin) => {
      const message = encoding.createEncoder()
      encoding.writeVarUint(message, 0)
      syncProtocol.writeUpdate(message, update)
      const bytes = encoding.toUint8Array(message)
      for (const client of entry.clients) if (client !== origin) client.send(bytes)
    })
    documents.set(name, entry)
  }
  return documents.get(name)
}

function handleSync (entry, socket, decoder) {
  const reply = encoding.createEncoder()
  encoding.writeVarUint(reply, 0)
  const kind = decoding.readVarUint(decoder)
  const payload = decoding.readVarUint8Array(decoder)
  if (kind === 0) {
    syncProtocol.writeSyncStep2(reply, entry.doc, payload)
    socket.send(encoding.toUint8Array(reply))
  } else if (kind === 1 && mode === 'no-step2') {
    // The broken part: a client's step 2 is dropped.
  } else if (mode === 'last-update') {
    // The broken part: the document becomes the last update alone.
    const fresh = new Y.Doc()
    Y.applyUpdate(fresh, payload)
    const old = entry.doc
    entry.doc = fresh
    old.destroy()
    const relay = encoding.createEncoder()
    encoding.writeVarUint(relay, 0)
    syncProtocol.writeUpdate(relay, payload)
    const bytes = encoding.toUint8Array(relay)
    for (const client of entry.clients) if (client !== socket) client.send(bytes)
  } else {
    Y.applyUpdate(entry.doc, payload, socket)
  }
}

const sockets = new WebSocketServer({ noServer: true })
sockets.on('connection', (socket, request) => {
  socket.binaryType = 'arraybuffer'
  const entry = documentNamed(request.url.slice(1).split('?')[0])
  entry.clients.add(socket)
  const announced = new Map() // client id -> clock
  socket.on('message', (data) => {
    const decoder = decoding.createDecoder(new Uint8Array(data))
    const type = decoding.readVarUint(decoder)
    if (type === 0) handleSync(entry, socket, decoder)
    if (type === 1 && mode !== 'no-awareness') {
      const update = decoding.readVarUint8Array(decoder)
      const inner = decoding.createDecoder(update)
      const count = decoding.readVarUint(inner)
      for (let i = 0; i < count; i++) {
        const id = decoding.readVarUint(inner)
        const clock = decoding.readVarUint(inner)
        const state = decoding.readVarString(inner)
        if (state === 'null') announced.delete(id); else announced.set(id, clock)
      }
      for (const client of entry.clients) if (client !== socket) client.send(new Uint8Array(data))
    }
  })
  socket.on('close', () => {
    entry.clients.delete(socket)
    if (announced.size === 0) return
    const update = encoding.createEncoder()
    encoding.writeVarUint(update, announced.size)
    for (const [id, clock] of announced) {
      encoding.writeVarUint(update, id)
      encoding.writeVarUint(update, clock + 1)
      encoding.writeVarString(update, 'null')
    }
    const message = encoding.createEncoder()
    encoding.writeVarUint(message, 1)
    encoding.writeVarUint8Array(message, encoding.toUint8Array(update))
    const bytes = encoding.toUint8Array(message)
    for (const client of entry.clients) client.send(bytes)
  })
  const step1 = encoding.createEncoder()
  encoding.writeVarUint(step1, 0)
  syncProtocol.writeSyncStep1(step1, entry.doc)
  socket.send(encoding.toUint8Array(step1))
})

const server = http.createServer((_request, response) => response.end('okay'))
server.on('upgrade', (request, socket, head) => {
  sockets.handleUpgrade(request, socket, head, (ws) => sockets.emit('connection', ws, request))
})
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log(`running on port ${process.env.PORT}`))
