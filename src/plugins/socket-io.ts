/**
 * Socket.IO on the fastify server through fastify-socket.io. Its default preClose
 * (disconnect every socket) is replaced by the gateway's own drain.
 */
import fp from 'fastify-plugin'
import fastifySocketIOModule from 'fastify-socket.io'
import type { Server } from 'socket.io'
import type { Config } from '../config.js'
import { releaseUpgradeRequest, type EngineSocket } from '../gateway/engine-memory.js'
import type { AppIo } from '../gateway/types.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Typed once here; see gateway/types.ts. */
    io: AppIo
  }
}

// fastify-socket.io is CommonJS with `exports.default`; from ESM the plugin is one level down.
const fastifySocketIO = fastifySocketIOModule.default

export default fp<{ config: Config }>(async (app, { config }) => {
  await app.register(fastifySocketIO, {
    transports: config.SOCKET_TRANSPORTS === 'websocket' ? ['websocket'] : ['websocket', 'polling'],
    // Compression costs ~18x the memory per socket (engine.io#559) for little gain on short messages.
    perMessageDeflate: false,
    httpCompression: false,
    maxHttpBufferSize: config.MAX_PAYLOAD_BYTES,
    connectTimeout: 10_000,
    pingInterval: 25_000,
    pingTimeout: 20_000,
    serveClient: false,
    cleanupEmptyChildNamespaces: true,
    // The gateway drains sockets itself (plugins/gateway.ts).
    // eslint-disable-next-line @typescript-eslint/no-unsafe-function-type -- the plugin types it as Function
    preClose: (done: Function) => { done() }
  })
  const io = app.io as unknown as Server
  // The HTTP request of a connected socket is never used again; drop it and what else
  // holds it, to save memory (authentication reads `auth`, not headers).
  // @see https://socket.io/docs/v4/memory-usage/
  io.engine.on('connection', (raw: EngineSocket & { request: { headers?: unknown, rawHeaders?: unknown } | null }) => {
    if (raw.request !== null) {
      raw.request.headers = {}
      raw.request.rawHeaders = []
    }
    raw.request = null
    releaseUpgradeRequest(raw)
  })
}, { name: 'socket-io', fastify: '5.x' })
