/**
 * Opening AMQP connections. Each process opens two: one to consume and bind, one to
 * publish. RabbitMQ blocks publishing connections under a resource alarm and
 * rabbitmq-client then corks the whole socket, so a shared connection would also
 * stall acks and bindings.
 */
import { Connection } from 'rabbitmq-client'
import type { Logger } from '../log.js'
import { coalesceWrites } from './socket.js'

export interface BrokerConnectionOptions {
  url: string
  /** Shown in the management UI and `rabbitmqctl list_connections`. */
  name: string
  heartbeatSeconds: number
  log: Logger
}

export function openConnection (opts: BrokerConnectionOptions): Connection {
  const connection = new Connection({
    url: opts.url,
    connectionName: opts.name,
    heartbeat: opts.heartbeatSeconds,
    // Chat messages are small and latency-bound: never wait for Nagle.
    noDelay: true,
    // Fewer frames per message than the 8 KiB default; RabbitMQ's own default maximum.
    frameMax: 131_072,
    retryLow: 250,
    retryHigh: 5000,
    connectionTimeout: 5000,
    acquireTimeout: 10_000
  })
  // rabbitmq-client emits 'error' once per reconnect cycle; unhandled it would crash us.
  // Until the first connection, start-up code reports failures in one line instead.
  let connectedOnce = false
  connection.on('error', (err: { code?: unknown, message?: unknown }) => {
    if (connectedOnce) opts.log.warn({ code: err.code, reason: err.message, connection: opts.name }, 'broker connection error; reconnecting')
  })
  connection.on('connection', () => {
    connectedOnce = true
    opts.log.info({ connection: opts.name }, 'broker connected')
  })
  coalesceWrites(connection)
  connection.on('connection.blocked', (reason) => {
    opts.log.warn({ connection: opts.name, reason }, 'broker blocked this connection (resource alarm)')
  })
  connection.on('connection.unblocked', () => {
    opts.log.info({ connection: opts.name }, 'broker unblocked this connection')
  })
  return connection
}
