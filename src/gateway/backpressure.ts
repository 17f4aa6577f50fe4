/**
 * Slow consumers. A client that stops reading makes Socket.IO queue its packets in
 * memory without limit (engine.io's write buffer, then ws's buffered bytes). A sweep
 * cuts any socket over either bound; the client reconnects and catches up from
 * history, and the gateway's memory stays bounded.
 */
import type { Logger } from '../log.js'
import type { AppIo, AppSocket } from './types.js'

export interface SlowConsumerLimits {
  maxPendingPackets: number
  maxBufferedBytes: number
  intervalMs: number
}

/** Packets engine.io holds for the socket, and bytes ws has not handed to the kernel yet. */
export function backlogOf (socket: AppSocket): { packets: number, bytes: number } {
  // engine.io's Socket and transport are untyped for these members.
  const conn = socket.conn as unknown as { writeBuffer?: unknown[], transport?: { socket?: { bufferedAmount?: number } } }
  return { packets: conn.writeBuffer?.length ?? 0, bytes: conn.transport?.socket?.bufferedAmount ?? 0 }
}

/** Starts the sweep; returns a function that stops it. */
export function watchSlowConsumers (io: AppIo, limits: SlowConsumerLimits, log: Logger, onCut: () => void): () => void {
  const timer = setInterval(() => {
    for (const socket of io.of('/').sockets.values()) {
      const { packets, bytes } = backlogOf(socket)
      if (packets <= limits.maxPendingPackets && bytes <= limits.maxBufferedBytes) continue
      log.warn({ userId: socket.data.userId, packets, bytes }, 'disconnecting a slow consumer')
      onCut()
      // A graceful close would wait for the stuck buffer to drain: terminate the TCP socket.
      const ws = (socket.conn as unknown as { transport?: { socket?: { terminate?: () => void } } }).transport?.socket
      if (typeof ws?.terminate === 'function') ws.terminate()
      else socket.disconnect(true)
    }
  }, limits.intervalMs)
  timer.unref()
  return () => clearInterval(timer)
}
