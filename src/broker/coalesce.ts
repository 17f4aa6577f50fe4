/**
 * One socket write per event-loop turn instead of one per AMQP command.
 *
 * rabbitmq-client writes every command (a publish is three frames, an ack one) with
 * its own cork/uncork, i.e. its own syscall; with Nagle off (noDelay, for latency)
 * each becomes its own TCP segment, and the broker pays per segment. The benchmark
 * measured RabbitMQ as the largest CPU cost per message. Corking the socket on the
 * first write of a turn and uncorking it when the turn ends (setImmediate) sends
 * everything written in that turn — a batch of deliveries, a burst of acks — in
 * one writev, at no added latency beyond the current turn. Node counts corks, so the
 * client's own cork/uncork pairs nest inside ours.
 */
import type { Socket } from 'node:net'
import type { Connection } from 'rabbitmq-client'

const patched = new WeakSet<Socket>()

export function coalesceWrites (connection: Connection): void {
  const patch = () => {
    // rabbitmq-client keeps its socket in an internal field and makes a new one per
    // reconnect; without it (another version) this is a no-op.
    const socket = (connection as unknown as { _socket?: Socket })._socket
    if (socket === undefined || patched.has(socket) || typeof socket.cork !== 'function') return
    patched.add(socket)
    const write = socket.write
    let corked = false
    const uncork = () => {
      corked = false
      if (!socket.destroyed) socket.uncork()
    }
    socket.write = function (this: Socket, ...args: Parameters<Socket['write']>) {
      if (!corked && !socket.destroyed) {
        corked = true
        socket.cork()
        setImmediate(uncork)
      }
      return write.apply(this, args)
    } as Socket['write']
  }
  connection.on('connection', patch)
  patch()
}
