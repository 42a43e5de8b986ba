// Starts @hocuspocus/server on 127.0.0.1:$PORT with its defaults: a real Yjs server that is not
// y-websocket compatible (it names the document in every message and waits for authentication).
import { Server } from '@hocuspocus/server'

const server = new Server({ port: Number(process.env.PORT), address: '127.0.0.1', quiet: true })
await server.listen()
console.log(`running on port ${process.env.PORT}`)
