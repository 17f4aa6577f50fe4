/**
 * Graceful drain. Every socket is told at once to reconnect elsewhere after a
 * random delay within the window (so the other gateways see a ramp, not a storm),
 * and is disconnected when its delay is up. Sockets keep working until then: a
 * message sent during the drain is published and acked as usual.
 */
import type { Logger } from '../log.js'
import type { AppIo } from './types.js'

export async function drainSockets (io: AppIo, windowMs: number, log: Logger): Promise<void> {
  const sockets = [...io.of('/').sockets.values()]
  log.info({ sockets: sockets.length, windowMs }, 'draining: telling clients to reconnect elsewhere')
  await Promise.all(sockets.map((socket) => new Promise<void>((resolve) => {
    const reconnectInMs = Math.floor(Math.random() * windowMs)
    socket.emit('session:end', { code: 'DRAINING', message: 'this server is shutting down; reconnect', reconnectInMs })
    if (socket.disconnected) {
      resolve()
      return
    }
    const timer = setTimeout(() => {
      socket.disconnect(true)
      resolve()
    }, reconnectInMs)
    socket.once('disconnect', () => {
      clearTimeout(timer)
      resolve()
    })
  })))
  // Anything that slipped in meanwhile.
  io.local.disconnectSockets(true)
}
