/**
 * A once-a-second sweep over the gateway's sockets, instead of per-socket timers:
 *
 * - Slow consumers. A client that stops reading makes Socket.IO queue its packets in
 *   memory without limit (engine.io's write buffer, then ws's buffered bytes). A socket
 *   over either bound is cut; the client reconnects and catches up from history, and the
 *   gateway's memory stays bounded.
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
  const timer = setInterval(() => {
    const nowSeconds = Date.now() / 1000
    for (const socket of io.of('/').sockets.values()) {
      const { packets, bytes } = backlogOf(socket)
      if (packets > options.maxPendingPackets || bytes > options.maxBufferedBytes) {
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
