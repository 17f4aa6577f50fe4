/**
 * engine.io's upgrade path leaves two listeners behind for the life of every WebSocket:
 * an `error` listener on the ws (`onUpgradeError`, whose closure holds the HTTP request)
 * and a `close` listener on the TCP socket that keeps its WebSocketResponse (which holds
 * the request too): 1.3 KB of live heap per idle socket. Knows nothing of fastify.
 */
import type { EventEmitter } from 'node:events'

/** What engine.io's connection event gives, as far as we touch it. */
export interface EngineSocket {
  transport?: { name?: string, socket?: WsLike }
  once?: (event: 'upgrade', listener: () => void) => unknown
}
interface WsLike {
  _socket?: EventEmitter
  rawListeners: EventEmitter['rawListeners']
  removeListener: EventEmitter['removeListener']
}

/**
 * Drops both listeners once the socket is on WebSocket: now, or at its upgrade from
 * polling. The transport has its own `error` listener by then, and nothing listens to
 * that response: the gateway registers no `io.engine.use()` middleware (one that waits
 * for the response's `close`, such as pino-http, would need the listener kept).
 * Matched by shape, so a changed engine.io is left alone; test/gateway/memory.test.ts
 * fails if the request is kept again.
 */
export function releaseUpgradeRequest (raw: EngineSocket): void {
  if (raw.transport?.name === 'websocket') release(raw.transport.socket)
  else raw.once?.('upgrade', () => { release(raw.transport?.socket) })
}

function release (ws: WsLike | undefined): void {
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
