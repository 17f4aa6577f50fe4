/**
 * A newcomer's mistakes at start: each one line that says what is wrong and what to
 * do, a non-zero exit, and no stack trace.
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { AMQP_HOST } from '../helpers/services.js'
import { freePort, ROOT } from '../helpers/system.js'

const run = promisify(execFile)
// Some twenty processes started one after another: about a minute on a loaded 2-core
// machine, past the suite's 120 s per file when other files load it too.
t.setTimeout(300_000)

async function start (args: string[], env: Record<string, string>, cwd = ROOT): Promise<{ code: number, stderr: string }> {
  try {
    await run(process.execPath, args, { cwd, env: { PATH: process.env.PATH, ...env }, timeout: 40_000 })
    return { code: 0, stderr: '' }
  } catch (err) {
    const e = err as { code?: number, stderr?: string }
    return { code: e.code ?? -1, stderr: e.stderr ?? '' }
  }
}
const gateway = (env: Record<string, string>) => start(['node_modules/fastify-cli/cli.js', 'start', '-l', 'warn', '-o', 'dist/src/app.js'], env)
const worker = (env: Record<string, string>) => start(['dist/src/worker/main.js'], { WORKER_PORT: '0', ...env })

function oneLine (t: Test, r: { code: number, stderr: string }, expected: RegExp): void {
  t.not(r.code, 0, 'non-zero exit')
  const lines = r.stderr.trim().split('\n')
  t.equal(lines.length, 1, `one line: ${r.stderr.trim()}`)
  t.match(lines[0], expected)
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
}

t.test('gateway', async (t) => {
  const port = String(await freePort())
  oneLine(t, await gateway({ PORT: port, AMQP_URL: `amqp://guest:wrong@${AMQP_HOST}` }), /RabbitMQ refused the user name or password of AMQP_URL \(amqp:\/\/guest:\*\*\*@/)
  oneLine(t, await gateway({ PORT: port, AMQP_URL: `amqp://guest:guest@${AMQP_HOST}/no-such-vhost` }), /vhost "no-such-vhost".*create the vhost/)
  oneLine(t, await gateway({ PORT: port, AMQP_URL: 'amqp://guest:guest@127.0.0.1:1' }), /cannot reach RabbitMQ at .*is it running\?/)
  oneLine(t, await gateway({ PORT: port, NODE_ENV: 'production', AMQP_URL: `amqp://guest:guest@${AMQP_HOST}` }), /^config error: JWT_SECRET is required in production/)
  oneLine(t, await gateway({ PORT: 'eighty' }), /^config error: PORT is invalid/)
  oneLine(t, await gateway({ PORT: port, AMQP_URL: `amqp://guest:p%ss@${AMQP_HOST}` }), /^config error: AMQP_URL is invalid: its password has a % that is not followed by two hex digits; write a literal % as %25$/)
  oneLine(t, await gateway({ PORT: port, AMQP_URL: 'amqp://guest:guest@127.0.0.1:99999' }), /^config error: AMQP_URL is invalid: not a valid URL/)
  oneLine(t, await gateway({ PORT: port, METRICS_PORT: port }), /^config error: METRICS_PORT is invalid .*must differ from PORT/)
  const metricsPort = await freePort()
  const metricsBusy = createServer().listen(metricsPort, '0.0.0.0')
  await new Promise((resolve) => metricsBusy.once('listening', resolve))
  t.teardown(() => { metricsBusy.close() })
  oneLine(t, await gateway({ PORT: port, METRICS_PORT: String(metricsPort) }), new RegExp(`port ${metricsPort} is already in use.*set METRICS_PORT`))
  const busy = createServer().listen(Number(port), 'localhost')
  await new Promise((resolve) => busy.once('listening', resolve))
  t.teardown(() => { busy.close() })
  oneLine(t, await gateway({ PORT: port }), new RegExp(`port ${port} is already in use.*set PORT`))
})

t.test('worker', async (t) => {
  oneLine(t, await worker({ NODE_ENV: 'production' }), /^config error: AMQP_URL is required in production/)
  oneLine(t, await worker({ NODE_ENV: 'production', AMQP_URL: `amqp://guest:guest@${AMQP_HOST}` }), /^config error: DATABASE_URL is required in production/)
  oneLine(t, await worker({ DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/no_such_database_here' }), /database named in DATABASE_URL does not exist/)
  oneLine(t, await worker({ DATABASE_URL: 'postgres://postgres@127.0.0.1:1/x' }), /cannot reach PostgreSQL at .*is it running\?/)
  // A database that exists but was never migrated: told to migrate, not reported ready.
  oneLine(t, await worker({ DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres' }), /APP_DATABASE_NOT_MIGRATED: .*no chat schema.*npm run db:migrate/)
  oneLine(t, await worker({ DATABASE_URL: 'postgres://postgres:50%off@127.0.0.1:5432/postgres' }), /^config error: DATABASE_URL is invalid: its password has a %/)
  // The port is checked first, before the worker touches the broker or the database.
  const workerPort = await freePort()
  const workerBusy = createServer().listen(workerPort, '0.0.0.0')
  await new Promise((resolve) => workerBusy.once('listening', resolve))
  t.teardown(() => { workerBusy.close() })
  oneLine(t, await worker({ WORKER_PORT: String(workerPort), DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres' }), new RegExp(`port ${workerPort} is already in use.*set WORKER_PORT`))
  // The worker reads ./.env as the fastify CLI does for gateways (values already set win).
  const dir = mkdtempSync(join(tmpdir(), 'chat-dotenv-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, '.env'), `NODE_ENV=production\nAMQP_URL=amqp://guest:guest@${AMQP_HOST}\n`)
  oneLine(t, await start([join(ROOT, 'dist/src/worker/main.js')], { WORKER_PORT: '0' }, dir), /^config error: DATABASE_URL is required in production/)
  oneLine(t, await worker({ DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres', AMQP_URL: `amqp://nobody:nothing@${AMQP_HOST}` }), /RabbitMQ refused the user name or password/)
})
