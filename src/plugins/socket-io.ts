/**
 * Socket.IO on the fastify server through fastify-socket.io. Its default preClose
 * (disconnect every socket) is replaced by the gateway's own drain.
 */
import type { EventEmitter } from 'node:events'
import fp from 'fastify-plugin'
import fastifySocketIOModule from 'fastify-socket.io'
import type { Server } from 'socket.io'
import type { Config } from '../config.js'
import type { AppIo } from '../gateway/types.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Typed once here; see gateway/types.ts. */
    io: AppIo
  }
}

// fastify-socket.io is CommonJS with `exports.default`; from ESM the plugin is one level down.
const fastifySocketIO = fastifySocketIOModule.default

/** What engine.io's connection event gives, as far as we touch it. */
interface EngineSocket {
  request: { headers?: unknown, rawHeaders?: unknown } | null
  transport?: { socket?: WsLike }
  once?: (event: 'upgrade', listener: () => void) => unknown
}
interface WsLike {
  _socket?: EventEmitter
  rawListeners: EventEmitter['rawListeners']
  removeListener: EventEmitter['removeListener']
}

/**
 * engine.io's upgrade leaves two listeners behind for the life of every WebSocket: an
 * `error` listener on the ws (`onUpgradeError`, whose closure holds the HTTP request)
 * and a `close` listener on the TCP socket that keeps its WebSocketResponse (which holds
 * the request too). The transport has its own `error` listener by then, and nothing
 * listens to that response. Matched by shape, so a changed engine.io is left alone;
 * test/gateway/memory.test.ts fails if the request is kept again.
 */
function releaseUpgrade (raw: EngineSocket): void {
  const ws = raw.transport?.socket
  if (ws === undefined) return
  const errorListeners = ws.rawListeners('error')
  // Never leave a ws without an error listener: an unheard 'error' would end the process.
  if (errorListeners.length > 1) {
    for (const fn of errorListeners) {
      if ((fn as { name?: string }).name === 'onUpgradeError') ws.removeListener('error', fn as (...args: unknown[]) => void)
    }
  }
  const tcp = ws._socket
  if (tcp === undefined) return
  for (const fn of tcp.rawListeners('close')) {
    const inner = (fn as { listener?: unknown }).listener ?? fn
    if (String(inner) === '() => this.emit("close")') tcp.removeListener('close', fn as (...args: unknown[]) => void)
  }
}

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
  io.engine.on('connection', (raw: EngineSocket) => {
    if (raw.request !== null) {
      raw.request.headers = {}
      raw.request.rawHeaders = []
    }
    raw.request = null
    releaseUpgrade(raw)
    // A socket that starts on polling has no WebSocket yet.
    raw.once?.('upgrade', () => { releaseUpgrade(raw) })
  })
}, { name: 'socket-io', fastify: '5.x' })
