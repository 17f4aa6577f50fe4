/**
 * Worker entrypoint: `npm run worker` (node dist/src/worker/main.js).
 */
import { configOrExit, fatal, stopWithParent } from '../entry.js'
import { createLogger } from '../log.js'
import { checkPortFree } from '../startup.js'
import { openEmbeddedDatabase } from '../db/client.js'
import { json, startStatusServer } from '../http/status-server.js'
import { startWorker } from './worker.js'

const config = configOrExit('worker')
const log = createLogger('worker', config.LOG_LEVEL)
// Before anything is consumed: a worker that then failed on its port would hand its
// sends back, each costing one of the queue's delivery attempts.
await checkPortFree(config.WORKER_PORT, '0.0.0.0', 'WORKER_PORT').catch((err: Error) => fatal(`worker: ${err.message}`))
// Without DATABASE_URL the worker owns an embedded database in DATA_DIR (development).
const embedded = config.DATABASE_URL === ''
  ? await openEmbeddedDatabase(config.DATA_DIR).catch((err: Error) => fatal(`worker: cannot open the embedded database in ${config.DATA_DIR} (${err.message}); is another worker using it?`))
  : undefined
if (embedded !== undefined) log.info({ dataDir: config.DATA_DIR }, 'using the embedded database (set DATABASE_URL for PostgreSQL)')
const worker = startWorker({ config, log, ...(embedded !== undefined ? { database: embedded } : {}) })
await worker.started.catch((err: Error & { code?: unknown }) => fatal(`worker: ${typeof err.code === 'string' ? `${err.code}: ` : ''}${err.message}`))

const server = await startStatusServer(config.WORKER_PORT, '0.0.0.0', {
  '/health': () => json(200, { ok: true, serverId: config.SERVER_ID, uptimeSeconds: Math.round(process.uptime()) }),
  '/ready': () => {
    const status = worker.status()
    return json(status.ready ? 200 : 503, status)
  },
  '/metrics': async () => ({ status: 200, contentType: worker.metrics.registry.contentType, body: await worker.metrics.registry.metrics() })
}).catch((err: NodeJS.ErrnoException) => {
  if (err.code === 'EADDRINUSE') fatal(`worker: port ${config.WORKER_PORT} is in use; set WORKER_PORT to a free port`)
  fatal(`worker: cannot listen on WORKER_PORT ${config.WORKER_PORT} (${err.code ?? err.message}); set WORKER_PORT to a port this user may open`)
})
log.info({ port: config.WORKER_PORT, serverId: config.SERVER_ID }, 'worker status endpoint listening')

let stopping = false
async function stop (signal: string): Promise<void> {
  if (stopping) {
    log.warn({ signal }, 'second signal: exiting now')
    process.exit(1)
  }
  stopping = true
  log.info({ signal }, 'worker received signal')
  const deadline = setTimeout(() => {
    log.error('worker did not stop in 25 s; exiting')
    process.exit(1)
  }, 25_000).unref()
  await worker.close().catch((err: unknown) => log.error({ err }, 'worker did not stop cleanly'))
  await embedded?.close()
  server.close()
  clearTimeout(deadline)
  process.exit(0)
}
process.on('SIGTERM', () => { void stop('SIGTERM') })
process.on('SIGINT', () => { void stop('SIGINT') })
stopWithParent()
