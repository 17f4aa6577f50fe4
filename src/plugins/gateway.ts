/**
 * The gateway proper: authenticates sockets, opens sessions, registers the client
 * events and routes deliveries from the gateway queue to sockets.
 */
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { createTokenVerifier } from '../gateway/auth.js'
import { createDeliveryHandler } from '../gateway/deliveries.js'
import { drainSockets } from '../gateway/drain.js'
import { RecentBuckets } from '../gateway/buckets.js'
import { createRecovery } from '../gateway/recovery.js'
import { sweepSockets } from '../gateway/sweep.js'
import type { AppSocket } from '../gateway/types.js'
import type { GatewayContext } from '../gateway/context.js'
import { UserRequests } from '../gateway/user-requests.js'
import { createDispatcher } from '../gateway/handle.js'
import { routes } from '../gateway/handlers.js'
import { createGatewayMetrics, type GatewayMetrics } from '../gateway/metrics.js'
import { Sessions } from '../gateway/sessions.js'
import { ClientError } from '../errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    sessions: Sessions
    metrics: GatewayMetrics
    /** The gateway is shutting down: unready, refusing new sockets. */
    draining: () => boolean
    /** Ready for traffic: broker up, queue consuming, every key bound, not draining. */
    gatewayReady: () => boolean
  }
}

export interface GatewayPluginOptions {
  config: Config
  /** Collect process-level default metrics. @default true */
  defaultMetrics?: boolean
}

export default fp<GatewayPluginOptions>(async (app, { config, defaultMetrics = true }) => {
  const io = app.io
  const log = app.log
  const metrics = createGatewayMetrics({ server_id: config.SERVER_ID, region: config.FLY_REGION }, defaultMetrics)
  const sessions = new Sessions({ io, bindings: app.bindings, rpc: app.broker.rpc, serverId: config.SERVER_ID, log })
  const ctx: GatewayContext = { config, io, broker: app.broker, bindings: app.bindings, sessions, requests: new UserRequests(config.USER_REQUESTS_WAITING), metrics, log }
  const verify = createTokenVerifier(config)
  let draining = false

  // At least 1: 90 % of a tiny cap rounds to 0, and a gateway would never be ready.
  const readySockets = config.GATEWAY_READY_SOCKETS > 0 ? config.GATEWAY_READY_SOCKETS : Math.max(1, Math.floor(config.GATEWAY_MAX_SOCKETS * 0.9))
  const ready = () => !draining && sessions.socketCount < readySockets && app.broker.connected() && app.bindings.settled
  metrics.setSources({ sockets: () => sessions.socketCount, users: () => sessions.userCount, bindings: () => app.bindings.stats(), ready, draining: () => draining, backlog: () => app.broker.backlog.depth(), unconsumedShards: () => app.broker.backlog.unconsumed() })
  app.bindings.on('operation', ({ op, durationMs }) => {
    metrics.bindOps.inc({ op })
    metrics.bindLatency.observe({ op }, durationMs / 1000)
  })
  const recovery = createRecovery({ io, sessions, log, stopped: () => draining })
  app.addHook('onClose', async () => { recovery.close() })
  app.bindings.on('rebound', ({ generation, durationMs }) => {
    metrics.rebind.observe(durationMs / 1000)
    // The old queue died with the connection, and whatever was routed while no queue was
    // attached is gone, joined/left notices included; connected sockets cannot know.
    if (generation > 1) recovery.outage()
  })
  // The same loss without an outage: the queue was full and the broker dropped its
  // oldest deliveries.
  app.bindings.on('dropped', ({ count }) => {
    metrics.deliveriesDropped.inc(count)
    log.warn({ count }, 'the gateway queue was full: the broker dropped deliveries')
    recovery.dropped()
  })
  app.deliveries.handle = createDeliveryHandler(io, sessions, metrics, log)
  const dispatch = createDispatcher(ctx, routes)
  const buckets = new RecentBuckets(config.SOCKET_RATE_PER_SEC, config.SOCKET_RATE_BURST)
  const pruneBuckets = setInterval(() => buckets.prune(), 5000).unref()
  app.addHook('onClose', async () => { clearInterval(pruneBuckets) })
  const onDisconnect = function (this: AppSocket) {
    buckets.keep(this.data.userId, this.data.bucket)
    sessions.detach(this)
  }
  const stopSweep = sweepSockets(io, {
    maxPendingPackets: config.SOCKET_MAX_PENDING_PACKETS,
    maxBufferedBytes: config.SOCKET_MAX_BUFFER_BYTES,
    intervalMs: 1000,
    onSlowConsumer: () => metrics.slowConsumers.inc()
  }, log)
  app.addHook('onClose', async () => { stopSweep() })

  io.use((socket, next) => {
    // Socket.IO runs this a turn after the CONNECT packet: the connection may be gone
    // already (a bad packet right behind the CONNECT), and then neither `connection` nor
    // `disconnect` runs to give back a bucket taken below; the user's next socket would
    // start with a fresh burst. From here to `connection` no I/O can close it (Socket.IO
    // checks again on the next tick and drops the socket only if it closed before).
    if (socket.conn.readyState !== 'open') {
      next(new Error('UNAVAILABLE'))
      return
    }
    if (draining) {
      metrics.connections.inc({ outcome: 'refused' })
      next(new Error('UNAVAILABLE'))
      return
    }
    if (sessions.socketCount >= config.GATEWAY_MAX_SOCKETS) {
      metrics.connections.inc({ outcome: 'refused' })
      next(new Error('UNAVAILABLE'))
      return
    }
    try {
      const identity = verify((socket.handshake.auth as { token?: unknown } | undefined)?.token)
      if (sessions.socketsOf(identity.userId) >= config.USER_MAX_SOCKETS) {
        metrics.connections.inc({ outcome: 'refused' })
        next(new Error('RATE_LIMITED'))
        return
      }
      const bucket = buckets.open(identity.userId)
      if (bucket === undefined) {
        metrics.connections.inc({ outcome: 'refused' })
        next(new Error('RATE_LIMITED'))
        return
      }
      socket.data.userId = identity.userId
      socket.data.exp = identity.exp
      socket.data.bucket = bucket
      next()
    } catch (err) {
      metrics.connections.inc({ outcome: 'unauthorized' })
      next(new Error(err instanceof ClientError ? err.code : 'UNAUTHORIZED'))
    }
  })

  io.on('connection', (socket) => {
    // The middleware above runs before earlier sockets are attached, so CONNECT packets
    // sent back to back on one connection all pass its caps. Counts are exact here.
    const over = sessions.socketCount >= config.GATEWAY_MAX_SOCKETS
      ? 'UNAVAILABLE'
      : sessions.socketsOf(socket.data.userId) >= config.USER_MAX_SOCKETS ? 'RATE_LIMITED' : undefined
    if (over !== undefined) {
      buckets.keep(socket.data.userId, socket.data.bucket)
      metrics.connections.inc({ outcome: 'refused' })
      socket.emit('session:end', { code: over, message: 'too many sockets' })
      socket.disconnect(true)
      return
    }
    metrics.connections.inc({ outcome: 'accepted' })
    // The token is verified; keeping it (and the handshake headers) costs memory per socket.
    socket.handshake.auth = {}
    sessions.attach(socket)
    // Shared listeners (Socket.IO calls them with the socket as `this`): no closures per socket.
    socket.onAny(dispatch)
    socket.on('disconnect', onDisconnect)
  })

  app.decorate('sessions', sessions)
  app.decorate('metrics', metrics)
  app.decorate('draining', () => draining)
  app.decorate('gatewayReady', ready)

  // Unready at once, refuse new sockets, move the ones we have elsewhere over the
  // drain window; onClose hooks then close the consumer and connections in order.
  app.addHook('preClose', async () => {
    draining = true
    await drainSockets(io, config.DRAIN_WINDOW_MS, log)
  })
}, { name: 'gateway', fastify: '5.x', dependencies: ['broker', 'bindings', 'socket-io'] })
