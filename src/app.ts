/**
 * The gateway as a fastify plugin. `fastify start -o dist/src/app.js` (npm start)
 * loads the default export with `options`; tests and `buildApp()` register it on an
 * instance of their own.
 */
import type { Server } from 'node:http'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import { usesDevSecret, type Config } from './config.js'
import { configOrExit, fatal, stopWithParent } from './entry.js'
import brokerPlugin from './plugins/broker.js'
import bindingsPlugin from './plugins/bindings.js'
import gatewayPlugin from './plugins/gateway.js'
import socketIoPlugin from './plugins/socket-io.js'
import demoRoutes from './routes/demo.js'
import healthRoutes from './routes/health.js'
import { checkPortFree, StartupError, waitForBroker } from './startup.js'

export interface AppOptions {
  /** Defaults to loadConfig('gateway') from the environment. */
  config?: Config
  /** Collect process-level default metrics (off when several apps share a test process). @default true */
  defaultMetrics?: boolean
}

/** How long a starting gateway waits for RabbitMQ before giving up with one line. */
const BROKER_STARTUP_TIMEOUT_MS = 15_000

const app = fp<AppOptions>(async (fastify, opts) => {
  // Under the fastify CLI (no config passed) start-up failures print one line and exit.
  const cli = opts.config === undefined
  const config = opts.config ?? configOrExit('gateway')
  try {
    if (cli) {
      await checkPortFree(config.PORT, config.FASTIFY_ADDRESS === '' ? 'localhost' : config.FASTIFY_ADDRESS)
      // The metrics listener binds all interfaces (routes/health.ts).
      await checkPortFree(config.METRICS_PORT, '0.0.0.0', 'METRICS_PORT')
    }
    await fastify.register(brokerPlugin, { config })
    await Promise.all([
      waitForBroker(fastify.broker.consumeConnection, config.AMQP_URL, BROKER_STARTUP_TIMEOUT_MS),
      waitForBroker(fastify.broker.publishConnection, config.AMQP_URL, BROKER_STARTUP_TIMEOUT_MS)
    ])
  } catch (err) {
    if (cli && err instanceof StartupError) fatal(`gateway: ${err.message}`)
    throw err
  }
  if (cli && usesDevSecret(config)) fastify.log.warn('JWT_SECRET is not set: using the insecure development secret')
  if (cli) stopWithParent()
  raiseListenBacklog(fastify.server, config.LISTEN_BACKLOG)
  await fastify.register(bindingsPlugin, { config })
  await fastify.register(socketIoPlugin, { config })
  await fastify.register(gatewayPlugin, { config, defaultMetrics: opts.defaultMetrics ?? true })
  await fastify.register(healthRoutes, { config })
  // Off unless DEMO_ENABLED / DEV_TOKENS_ENABLED: the demo page and POST /dev/token.
  await fastify.register(demoRoutes, { config })
}, { name: 'chat-gateway', fastify: '5.x' })

export default app

/**
 * The fastify CLI calls listen() without a backlog, so Node's default of 511 applies and
 * 10,000 clients reconnecting at once overflow it: the kernel drops SYNs and clients
 * back off for up to a minute (measured by the storm benchmark). Fill it in.
 */
function raiseListenBacklog (server: Server, backlog: number): void {
  const listen = server.listen.bind(server) as (...args: unknown[]) => Server
  server.listen = ((...args: unknown[]) => {
    const [options] = args
    if (typeof options === 'object' && options !== null && (options as { backlog?: number }).backlog === undefined) {
      args[0] = { ...options, backlog }
    }
    return listen(...args)
  }) as Server['listen']
}

/** Server options for `fastify start -o`. */
export const options: FastifyServerOptions = {
  // Sockets are long-lived; close keep-alive HTTP connections at shutdown instead of waiting.
  forceCloseConnections: true,
  pluginTimeout: 30_000,
  return503OnClosing: true
}

/** A gateway on an instance of its own, not listening yet. */
export async function buildApp (config: Config, extra: { logger?: FastifyServerOptions['logger'], defaultMetrics?: boolean } = {}): Promise<FastifyInstance> {
  const instance = Fastify({ ...options, logger: extra.logger ?? { level: config.LOG_LEVEL } })
  await instance.register(app, { config, defaultMetrics: extra.defaultMetrics ?? true })
  return instance
}
