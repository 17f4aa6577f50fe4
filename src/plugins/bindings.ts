/**
 * The binding manager as a fastify decorator: the gateway's own queue, its route and
 * the route's refcounted `user:` / `channel:` bindings on the outgoing exchange.
 */
import { randomBytes } from 'node:crypto'
import fp from 'fastify-plugin'
import type { AsyncMessage } from 'rabbitmq-client'
import type { Config } from '../config.js'
import { BindingManager } from '../broker/binding-manager.js'

declare module 'fastify' {
  interface FastifyInstance {
    bindings: BindingManager
    /** Where deliveries from the gateway queue go; set by the gateway plugin. */
    deliveries: { handle: (msg: AsyncMessage) => void }
  }
}

export default fp<{ config: Config }>(async (app, { config }) => {
  const deliveries = { handle: (_msg: AsyncMessage) => {} }
  const bindings = new BindingManager({
    connection: app.broker.consumeConnection,
    exchange: app.broker.names.outgoing,
    // SERVER_ID may be stable across restarts (cluster.ts, a Fly machine id): the suffix
    // keeps a restarted process from adopting the keys its predecessor left on its route.
    route: app.broker.names.gatewayRoute(`${config.SERVER_ID}.${randomBytes(4).toString('hex')}`),
    onMessage: (msg) => deliveries.handle(msg),
    log: app.log,
    poolSize: config.BIND_CHANNELS,
    unbindGraceMs: config.UNBIND_GRACE_MS,
    maxQueueLength: config.GATEWAY_QUEUE_MAX_LENGTH,
    leaseMs: config.ROUTE_LEASE_MS
  })
  bindings.on('rebound', (info) => app.log.info(info, 'all bindings in place'))
  app.decorate('bindings', bindings)
  app.decorate('deliveries', deliveries)
  app.addHook('onClose', async () => { await bindings.close() })
}, { name: 'bindings', fastify: '5.x', dependencies: ['broker'] })
