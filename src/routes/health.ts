/**
 * Probes and metrics. /health: the process and its event loop answer. /ready: this
 * gateway can take traffic — broker connected, its queue consuming, every key it
 * should hold bound, not draining, under its socket limit. A gateway whose
 * subscriptions died with a reconnect is never "green but deaf": it is unready until
 * every binding is back. /metrics moves to METRICS_PORT when that is set.
 */
import type { FastifyPluginAsync } from 'fastify'
import type { Config } from '../config.js'
import { json, startStatusServer } from '../http/status-server.js'

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
      route: b.route,
      draining: app.draining(),
      broker: !app.broker.connected() ? 'disconnected' : app.broker.blocked() ? 'blocked' : 'connected',
      uptimeSeconds: Math.round(process.uptime())
    }
  }
  const metrics = async () => ({ status: 200, contentType: app.metrics.registry.contentType, body: await app.metrics.registry.metrics() })

  // Probed every few seconds by the platform: a request log line each is noise, errors still log.
  const quiet = { logLevel: 'warn' as const }
  app.get('/health', quiet, async () => ({ ok: true, serverId: config.SERVER_ID, uptimeSeconds: Math.round(process.uptime()) }))

  app.get('/ready', quiet, async (_req, reply) => {
    const ready = app.gatewayReady()
    return await reply.code(ready ? 200 : 503).send({ ready, ...figures() })
  })

  if (config.METRICS_PORT === 0) {
    app.get('/metrics', quiet, async (_req, reply) => {
      const m = await metrics()
      return await reply.type(m.contentType).send(m.body)
    })
  } else {
    const server = await startStatusServer(config.METRICS_PORT, '0.0.0.0', {
      '/metrics': metrics,
      '/ready': () => json(app.gatewayReady() ? 200 : 503, { ready: app.gatewayReady(), ...figures() })
    })
    app.addHook('onClose', async () => { await new Promise((resolve) => server.close(resolve)) })
  }
}

export default routes
