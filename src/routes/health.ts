/**
 * Probes. /health: the process and its event loop answer. /ready: this gateway can
 * take traffic — broker connected, its queue consuming, every key it should hold
 * bound, not draining. A gateway whose subscriptions died with a reconnect is never
 * "green but deaf": it is unready until every binding is back.
 */
import type { FastifyPluginAsync } from 'fastify'
import type { Config } from '../config.js'

const routes: FastifyPluginAsync<{ config: Config }> = async (app, { config }) => {
  const figures = () => {
    const b = app.bindings.stats()
    return {
      serverId: config.SERVER_ID,
      region: config.FLY_REGION === '' ? undefined : config.FLY_REGION,
      sockets: app.sessions.socketCount,
      users: app.sessions.userCount,
      boundUserKeys: b.boundUserKeys,
      boundChannelKeys: b.boundChannelKeys,
      desiredKeys: b.desired,
      missingKeys: b.missing,
      bindOperationsPending: b.pending,
      queue: b.queue,
      draining: app.draining(),
      broker: app.broker.connected() ? 'connected' : 'disconnected',
      uptimeSeconds: Math.round(process.uptime())
    }
  }

  app.get('/health', async () => ({ ok: true, serverId: config.SERVER_ID, uptimeSeconds: Math.round(process.uptime()) }))

  app.get('/ready', async (_req, reply) => {
    const ready = app.gatewayReady()
    return await reply.code(ready ? 200 : 503).send({ ready, ...figures() })
  })

  app.get('/metrics', async (_req, reply) => {
    const text = await app.metrics.registry.metrics()
    return await reply.type(app.metrics.registry.contentType).send(text)
  })
}

export default routes
