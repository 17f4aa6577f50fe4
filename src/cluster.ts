/**
 * `npm run cluster`: a local system of real processes — migrations, one worker (of
 * every send shard) and two gateways (ports 3001 and 3002 unless told otherwise)
 * started by the fastify CLI — against the configured broker and database. Prints
 * their URLs and a status line per process; Ctrl-C stops them all gracefully.
 *
 *   node dist/src/cluster.js [--gateways 2] [--base-port 3001] [--worker-port WORKER_PORT]
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { childEnv } from './config.js'
import { runMigrations } from './db/migrate.js'
import { configOrExit, fatal } from './entry.js'
import { redactUrl } from './log.js'
import { describeDatabaseFailure } from './startup.js'

const ROOT = fileURLToPath(new URL(import.meta.url.includes('/dist/src/') ? '../..' : '..', import.meta.url))
const { values: args } = parseArgs({
  options: {
    gateways: { type: 'string', default: '2' },
    'base-port': { type: 'string', default: '3001' },
    'worker-port': { type: 'string' },
    'status-every': { type: 'string', default: '5' }
  }
})
const gateways = Number(args.gateways)
const basePort = Number(args['base-port'])
const statusEvery = Number(args['status-every'])
if (!Number.isInteger(gateways) || gateways < 1 || gateways > 16) fatal('cluster: --gateways must be 1..16')
if (!Number.isInteger(basePort) || basePort < 1 || basePort + gateways > 65535) fatal('cluster: --base-port must be a port number')

const config = configOrExit('cluster')
const workerPort = args['worker-port'] === undefined ? config.WORKER_PORT : Number(args['worker-port'])
if (!Number.isInteger(workerPort) || workerPort < 1 || workerPort > 65535) fatal('cluster: --worker-port (or WORKER_PORT) must be a port number')

// The embedded database is migrated by the worker that owns it.
if (config.DATABASE_URL !== '') {
  try {
    await runMigrations(config.DATABASE_URL)
  } catch (err) {
    fatal(`cluster: cannot migrate: ${describeDatabaseFailure(err, config.DATABASE_URL)}`.replace(/\s+/g, ' '))
  }
}
const database = config.DATABASE_URL === '' ? `embedded PGlite in ${config.DATA_DIR} (set DATABASE_URL for PostgreSQL)` : redactUrl(config.DATABASE_URL)

interface Child { name: string, url: string, proc: ChildProcess }
const children: Child[] = []
let stopping = false

function start (name: string, url: string, args: string[], env: Record<string, string>): void {
  // Own process group: a terminal's Ctrl-C reaches only us, and we stop the children
  // one signal each (a second signal would skip their graceful drain).
  // The IPC channel tells a child when we are gone, however we died (entry.ts stopWithParent).
  const proc = spawn(process.execPath, args, { cwd: ROOT, env: childEnv({ LOG_LEVEL: config.LOG_LEVEL, ...env }), stdio: ['ignore', 'inherit', 'inherit', 'ipc'], detached: true })
  children.push({ name, url, proc })
  proc.on('exit', (code, signal) => {
    if (stopping) return
    process.stderr.write(`cluster: ${name} exited (${signal ?? code}); stopping the others\n`)
    void stop(1)
  })
}

// The one worker stores every shard: a WORKER_CONSUME_SHARDS meant for a production
// worker would leave the other shards' sends waiting here.
start('worker', `http://127.0.0.1:${workerPort}`, ['dist/src/worker/main.js'], { WORKER_PORT: String(workerPort), SERVER_ID: 'worker-1', WORKER_CONSUME_SHARDS: 'all' })
// Outside production the local cluster serves the demo page and signs dev tokens.
const demo = config.NODE_ENV !== 'production'
for (let i = 0; i < gateways; i++) {
  const port = basePort + i
  start(`gateway-${i + 1}`, `http://127.0.0.1:${port}`, [`${ROOT}/node_modules/fastify-cli/cli.js`, 'start', '-l', config.LOG_LEVEL, '-o', 'dist/src/app.js'], {
    PORT: String(port),
    // One metrics port per machine would clash between local gateways: /metrics on PORT.
    METRICS_PORT: '0',
    SERVER_ID: `gateway-${i + 1}`,
    // Graceful drain needs more than fastify-cli's 500 ms default.
    FASTIFY_CLOSE_GRACE_DELAY: '15000',
    ...(demo ? { DEMO_ENABLED: 'true', DEV_TOKENS_ENABLED: 'true' } : {})
  })
}

process.stdout.write(`chat cluster: broker ${redactUrl(config.AMQP_URL)} prefix "${config.BROKER_PREFIX}"${config.WORKER_SHARDS > 1 ? ` (${config.WORKER_SHARDS} send shards, all stored by the one worker)` : ''}, database ${database}\n`)
for (const c of children) {
  process.stdout.write(`  ${c.name.padEnd(10)} ${c.url}${c.name === 'worker' ? '  (/health /ready /metrics)' : '  (Socket.IO, /health /ready /metrics)'}\n`)
}
if (demo) {
  const pages = children.filter((c) => c.name !== 'worker').map((c) => `${c.url}/`)
  process.stdout.write(`  demo       ${pages.join('  ')}  (open two, pick two names, chat)\n`)
}
process.stdout.write('Ctrl-C stops everything.\n')

async function statusLine (c: Child): Promise<string> {
  try {
    const res = await fetch(`${c.url}/ready`, { signal: AbortSignal.timeout(1000) })
    const s = await res.json() as Record<string, unknown>
    if (c.name === 'worker') return `${c.name}: ${res.ok ? 'ready' : 'UNREADY'} broker=${String(s.broker)} db=${String(s.database)} inflight=${String(s.inFlight)}`
    return `${c.name}: ${res.ok ? 'ready' : 'UNREADY'} sockets=${String(s.sockets)} users=${String(s.users)} keys=${String(s.boundUserKeys)}u/${String(s.boundChannelKeys)}c pending=${String(s.bindOperationsPending)}`
  } catch {
    return `${c.name}: starting`
  }
}

const timer = statusEvery > 0
  ? setInterval(() => {
    void Promise.all(children.map(statusLine)).then((lines) => process.stdout.write(`[${new Date().toISOString().slice(11, 19)}] ${lines.join(' | ')}\n`))
  }, statusEvery * 1000)
  : undefined

async function stop (code: number): Promise<void> {
  if (stopping) return
  stopping = true
  clearInterval(timer)
  await Promise.all(children.map(async (c) => {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) return
    const exited = new Promise((resolve) => c.proc.once('exit', resolve))
    c.proc.kill('SIGTERM')
    const forced = setTimeout(() => c.proc.kill('SIGKILL'), 30_000)
    await exited
    clearTimeout(forced)
  }))
  process.exit(code)
}
process.on('exit', () => {
  for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL')
})
// SIGHUP: the terminal closed.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => { void stop(0) })
