import { readFileSync } from 'node:fs'
import t from 'tap'
import { ConfigError, ConfigSchema, loadConfig } from '../src/config.js'

t.test('defaults give a working development gateway', async (t) => {
  const c = loadConfig('gateway', {})
  t.equal(c.AMQP_URL, 'amqp://guest:guest@127.0.0.1:5672')
  t.equal(c.PORT, 3000)
  t.equal(c.BROKER_PREFIX, 'chat')
  t.ok(c.SERVER_ID.length > 0)
  t.ok(c.JWT_SECRET.length >= 16)
})

t.test('numbers are parsed and checked', async (t) => {
  t.equal(loadConfig('gateway', { PORT: '8080' }).PORT, 8080)
  t.throws(() => loadConfig('gateway', { PORT: 'eighty' }), { name: 'ConfigError', message: /^PORT is invalid \("eighty"\): expected an integer from 0 to 65535$/ })
  t.throws(() => loadConfig('gateway', { BIND_CHANNELS: '0' }), /BIND_CHANNELS is invalid/)
  t.throws(() => loadConfig('gateway', { NODE_ENV: 'prod' }), /NODE_ENV is invalid \("prod"\): expected one of development, test, production/)
  t.throws(() => loadConfig('gateway', { AMQP_URL: 'http://x' }), /AMQP_URL is invalid/)
  t.throws(() => loadConfig('gateway', { BROKER_PREFIX: 'a b' }), /BROKER_PREFIX is invalid/)
})

t.test('DB_TIMEOUT_MS stays within what a stopping worker waits for its batch', async (t) => {
  t.equal(loadConfig('worker', { DB_TIMEOUT_MS: '15000' }).DB_TIMEOUT_MS, 15_000)
  t.throws(() => loadConfig('worker', { DB_TIMEOUT_MS: '15001' }), { message: /^DB_TIMEOUT_MS is invalid \("15001"\): expected an integer from 100 to 15000$/ })
  t.throws(() => loadConfig('worker', { DB_TIMEOUT_MS: '600000' }), /DB_TIMEOUT_MS is invalid/)
})

t.test('production refuses development defaults, naming the setting', async (t) => {
  t.throws(() => loadConfig('gateway', { NODE_ENV: 'production', JWT_SECRET: 'x'.repeat(32) }), { message: 'AMQP_URL is required in production' })
  t.throws(() => loadConfig('gateway', { NODE_ENV: 'production', AMQP_URL: 'amqps://u:p@h/v' }), /^JWT_SECRET is required in production/)
  t.throws(() => loadConfig('gateway', { JWT_SECRET: 'short' }), /JWT_SECRET is invalid: it must be at least 16 characters/)
  t.throws(() => loadConfig('worker', { NODE_ENV: 'production', AMQP_URL: 'amqps://u:p@h/v' }), /^DATABASE_URL is required in production/)
  t.equal(loadConfig('worker', {}).DATABASE_URL, '', 'development: the embedded database')
  t.equal(loadConfig('worker', {}).DATA_DIR, '.data')
  t.ok(loadConfig('gateway', { NODE_ENV: 'production', AMQP_URL: 'amqps://u:p@h/v', JWT_SECRET: 'x'.repeat(32) }))
  t.throws(() => loadConfig('gateway', { NODE_ENV: 'production', AMQP_URL: 'amqps://u:p@h/v', JWT_SECRET: 'x'.repeat(32), DEV_TOKENS_ENABLED: 'true' }), /^DEV_TOKENS_ENABLED is invalid in production/)
  t.equal(loadConfig('migrate', { NODE_ENV: 'production', DATABASE_URL: 'postgres://u@h/db' }).DATABASE_URL, 'postgres://u@h/db', 'migrations need no broker')
})

t.test('every error is one line', async (t) => {
  try {
    loadConfig('gateway', { WORKER_PREFETCH: '-1' })
    t.fail('should throw')
  } catch (err) {
    t.type(err, ConfigError)
    t.notMatch((err as Error).message, /\n/)
  }
})

t.test('settings that contradict each other are refused at start, naming both', async (t) => {
  t.throws(() => loadConfig('gateway', { GATEWAY_MAX_SOCKETS: '100', GATEWAY_READY_SOCKETS: '200' }), /GATEWAY_READY_SOCKETS.*GATEWAY_MAX_SOCKETS/)
  t.throws(() => loadConfig('gateway', { MAX_CONTENT_CHARS: '30000' }), /MAX_CONTENT_CHARS.*MAX_PAYLOAD_BYTES/)
  t.equal(loadConfig('gateway', { MAX_CONTENT_CHARS: '30000', MAX_PAYLOAD_BYTES: '91024' }).MAX_CONTENT_CHARS, 30_000, 'fine with a frame big enough')
  // The default member cap must fit in the default frame, and a larger cap needs a larger frame.
  t.ok(loadConfig('gateway', {}), 'the defaults agree')
  t.throws(() => loadConfig('gateway', { MAX_CHANNEL_MEMBERS: '5000' }), /MAX_CHANNEL_MEMBERS is invalid \(5000\).*196024 bytes.*MAX_PAYLOAD_BYTES/)
  t.equal(loadConfig('gateway', { MAX_CHANNEL_MEMBERS: '5000', MAX_PAYLOAD_BYTES: '196024' }).MAX_CHANNEL_MEMBERS, 5000)
  t.equal(loadConfig('worker', { MAX_CHANNEL_MEMBERS: '100000' }).MAX_CHANNEL_MEMBERS, 100_000, 'the worker has no frames to fit')
  // Past the CLI's grace the drain is cut short with exit 1.
  t.throws(() => loadConfig('gateway', { DRAIN_WINDOW_MS: '30000', FASTIFY_CLOSE_GRACE_DELAY: '15000' }), /DRAIN_WINDOW_MS is invalid \(30000\).*FASTIFY_CLOSE_GRACE_DELAY \(15000\)/)
  t.throws(() => loadConfig('gateway', { DRAIN_WINDOW_MS: '12000', FASTIFY_CLOSE_GRACE_DELAY: '15000' }), /DRAIN_WINDOW_MS is invalid/, 'less than 5 s of margin')
  t.ok(loadConfig('gateway', { DRAIN_WINDOW_MS: '10000', FASTIFY_CLOSE_GRACE_DELAY: '20000' }), 'what fly.toml sets')
  t.ok(loadConfig('gateway', { DRAIN_WINDOW_MS: '30000' }), 'a grace given only as -g is not known here')
  t.equal(loadConfig('worker', { MAX_CONTENT_CHARS: '10000' }).MAX_CONTENT_CHARS, 10_000, 'the worker has no frames to fit')
})

t.test('the README documents every setting of the schema, and no other', async (t) => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const documented = new Set([...readme.matchAll(/^\| `([A-Z0-9_]+)` \|/gm)].map((m) => m[1]))
  t.same([...documented].sort(), Object.keys(ConfigSchema.properties).sort())
})

t.test('nothing but src/config.ts reads process.env', async (t) => {
  const { execFileSync } = await import('node:child_process')
  const hits = execFileSync('grep', ['-rln', 'process\\.env', 'src'], { cwd: new URL('..', import.meta.url) }).toString().trim().split('\n')
  t.same(hits, ['src/config.ts'])
})

t.test('the benchmark starts its gateways with settings the gateway accepts', async (t) => {
  // A rule added to the config once refused the harness's own settings, unnoticed until a benchmark ran.
  const { gatewayEnv } = await import('../bench/lib/processes.js')
  const env = gatewayEnv({ amqpUrl: 'amqp://guest:guest@127.0.0.1:5672', databaseUrl: 'postgres://postgres@127.0.0.1:5432/x', prefix: 'bench' })
  t.doesNotThrow(() => loadConfig('gateway', env))
  t.doesNotThrow(() => loadConfig('gateway', { ...env, GATEWAY_MAX_SOCKETS: '19500' }), 'and with the idle scenario\'s socket cap')
})
