/**
 * A once-a-second sweep over the gateway's sockets, instead of per-socket timers:
 *
 * - Slow consumers. A client that stops reading makes Socket.IO queue its packets in
 *   memory without limit (engine.io's write buffer, then ws's buffered bytes). A socket
 *   over either bound that made no progress since the last sweep is cut, and one over
 *   four times a bound is cut at once; the client reconnects and catches up from history,
 *   and the gateway's memory stays bounded. A socket still draining a large answer (a
 *   full history page can exceed the byte bound) is left alone.
 * - Token expiry. A socket whose token's `exp` has passed is told TOKEN_EXPIRED and
 *   disconnected (a timer per socket would cost memory at 19,000 sockets).
 */
import type { Logger } from '../log.js'
import type { AppIo, AppSocket } from './types.js'

export interface SweepOptions {
  maxPendingPackets: number
  maxBufferedBytes: number
  intervalMs: number
  onSlowConsumer: () => void
}

/** Packets engine.io holds for the socket, and bytes ws has not handed to the kernel yet. */
export function backlogOf (socket: AppSocket): { packets: number, bytes: number } {
  // engine.io's Socket and transport are untyped for these members.
  const conn = socket.conn as unknown as { writeBuffer?: unknown[], transport?: { socket?: { bufferedAmount?: number } } }
  return { packets: conn.writeBuffer?.length ?? 0, bytes: conn.transport?.socket?.bufferedAmount ?? 0 }
}

/** Starts the sweep; returns a function that stops it. */
export function sweepSockets (io: AppIo, options: SweepOptions, log: Logger): () => void {
  /** The backlog of sockets that were over a bound at the last sweep. */
  const over = new WeakMap<AppSocket, { packets: number, bytes: number }>()
  const timer = setInterval(() => {
    const nowSeconds = Date.now() / 1000
    for (const socket of io.of('/').sockets.values()) {
      const backlog = backlogOf(socket)
      const { packets, bytes } = backlog
      const isOver = packets > options.maxPendingPackets || bytes > options.maxBufferedBytes
      const before = over.get(socket)
      if (isOver) over.set(socket, backlog)
      else if (before !== undefined) over.delete(socket)
      const stuck = isOver && before !== undefined && packets >= before.packets && bytes >= before.bytes
      const far = packets > 4 * options.maxPendingPackets || bytes > 4 * options.maxBufferedBytes
      if (stuck || far) {
        over.delete(socket)
        log.warn({ userId: socket.data.userId, packets, bytes }, 'disconnecting a slow consumer')
        options.onSlowConsumer()
        // A graceful close would wait for the stuck buffer to drain: terminate the TCP socket.
        const ws = (socket.conn as unknown as { transport?: { socket?: { terminate?: () => void } } }).transport?.socket
        if (typeof ws?.terminate === 'function') ws.terminate()
        else socket.disconnect(true)
        continue
      }
      const exp = socket.data.exp
      if (exp !== undefined && exp <= nowSeconds) {
        socket.emit('session:end', { code: 'TOKEN_EXPIRED', message: 'the token expired; reconnect with a new one' })
        socket.disconnect(true)
      }
    }
  }, options.intervalMs)
  timer.unref()
  return () => clearInterval(timer)
}
