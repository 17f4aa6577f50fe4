/**
 * Opens the gateway's two AMQP connections (consume+bind, publish), the confirmed
 * publisher to the incoming exchange and the RPC client to the worker. Closes them
 * last (fastify runs onClose hooks in reverse order of registration).
 */
import fp from 'fastify-plugin'
import type { Connection, Publisher } from 'rabbitmq-client'
import type { Config } from '../config.js'
import { BacklogWatch } from '../broker/backlog.js'
import { openConnection } from '../broker/connection.js'
import { ConfirmedPublisher } from '../broker/publisher.js'
import { isOpen } from '../broker/socket.js'
import { WorkerRpc } from '../broker/rpc.js'
import { brokerNames, publisherTopology, queueDeclaration, queueSpecs, type BrokerNames } from '../broker/topology.js'

export interface GatewayBroker {
  names: BrokerNames
  consumeConnection: Connection
  publishConnection: Connection
  /** Confirmed, for writes (sends). */
  publisher: ConfirmedPublisher
  /** Unconfirmed, for ephemeral events (typing): losing one is fine, waiting is not. */
  ephemeral: Publisher
  rpc: WorkerRpc
  /** Depth of the worker queue; sends are refused while it is over SEND_BACKLOG_MAX. */
  backlog: BacklogWatch
  /** Both connections are open (the publishing one may be blocked by an alarm). */
  connected: () => boolean
  /** The broker blocked publishing (memory or disk alarm): sends are refused at once. */
  blocked: () => boolean
}

declare module 'fastify' {
  interface FastifyInstance { broker: GatewayBroker }
}

export default fp<{ config: Config }>(async (app, { config }) => {
  const names = brokerNames(config.BROKER_PREFIX)
  const open = (purpose: string) => openConnection({
    url: config.AMQP_URL,
    name: `gateway:${config.SERVER_ID}:${purpose}`,
    heartbeatSeconds: config.AMQP_HEARTBEAT_S,
    log: app.log
  })
  const consumeConnection = open('consume')
  const publishConnection = open('publish')
  // Declaring the worker's queues here too means a send is never confirmed into an
  // exchange with nothing behind it, even before the first worker starts.
  const publisher = new ConfirmedPublisher(publishConnection, publisherTopology(names, config.WORKER_SHARDS))
  const ephemeral = publishConnection.createPublisher({ confirm: false })
  let blocked = false
  publishConnection.on('connection.blocked', () => { blocked = true })
  publishConnection.on('connection.unblocked', () => { blocked = false })
  // A new connection starts unblocked; the broker re-sends connection.blocked if the alarm persists.
  publishConnection.on('connection', () => { blocked = false })
  const rpc = new WorkerRpc(publishConnection, names, config.RPC_TIMEOUT_MS,
    () => blocked ? 'the broker is refusing new requests; retry shortly' : undefined)
  // On the consuming connection: a publishing one stops reading under a broker alarm.
  const backlog = new BacklogWatch({
    connection: consumeConnection,
    queues: queueSpecs(names, config.WORKER_SHARDS).sends.map(queueDeclaration),
    max: config.SEND_BACKLOG_MAX,
    intervalMs: config.SEND_BACKLOG_CHECK_MS,
    onError: (err) => app.log.debug({ err }, 'could not read the depth of a send queue'),
    onUnconsumed: (shard, queue) => app.log.warn({ shard, queue }, 'no worker consumes this send shard: its sends wait (check WORKER_SHARDS and WORKER_CONSUME_SHARDS of the workers)')
  })

  app.decorate('broker', {
    names,
    consumeConnection,
    publishConnection,
    publisher,
    ephemeral,
    rpc,
    backlog,
    connected: () => isOpen(consumeConnection) && isOpen(publishConnection),
    blocked: () => blocked
  })

  app.addHook('onClose', async () => {
    await backlog.close()
    await Promise.allSettled([rpc.close(), publisher.close(), ephemeral.close()])
    await Promise.allSettled([consumeConnection.close(), publishConnection.close()])
  })
}, { name: 'broker', fastify: '5.x' })
