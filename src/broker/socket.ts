/**
 * What we do with an AMQP connection's TCP socket: coalesce its writes, and know whether
 * it is open.
 *
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
const open = new WeakMap<Connection, boolean>()

/**
 * True between a connection's handshake and the loss of its socket. Not
 * `connection.ready`: rabbitmq-client reports a corked socket as not ready (it corks on
 * connection.blocked), and coalescing corks the socket for the rest of every turn that
 * writes.
 */
export function isOpen (connection: Connection): boolean {
  return open.get(connection) ?? connection.ready
}

/** Coalesces the connection's writes and tracks `isOpen`; call once, right after creating it. */
export function coalesceWrites (connection: Connection): void {
  // rabbitmq-client keeps its socket in an internal field and makes a new one per
  // reconnect; without it (another version) coalescing is a no-op.
  const current = () => (connection as unknown as { _socket?: Socket })._socket
  const patch = () => {
    const socket = current()
    if (socket === undefined || patched.has(socket) || typeof socket.cork !== 'function') return
    patched.add(socket)
    socket.once('close', () => { if (current() === socket) open.set(connection, false) })
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
  open.set(connection, false)
  connection.on('connection', () => {
    patch()
    open.set(connection, true)
  })
  // The first socket exists before its handshake: coalesce its writes too.
  patch()
}
