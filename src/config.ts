/**
 * The one configuration schema. Both processes call loadConfig(); nothing else in
 * the code base reads process.env. Every setting is documented here, and the
 * README's table is checked against this schema by test/config.test.ts.
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { hostname } from 'node:os'
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'

/** Most send queues (src/broker/shards.ts): enough for 64 worker processes, few enough to watch each. */
export const MAX_SEND_SHARDS = 64

const Int = (description: string, def: number, minimum = 0, maximum = Number.MAX_SAFE_INTEGER) =>
  Type.Integer({ description, default: def, minimum, maximum })

export const ConfigSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('test'), Type.Literal('production')], {
    description: 'development, test or production. Production refuses the development defaults marked below.',
    default: 'development'
  }),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), {
    description: 'pino log level of the worker and of gateways started by `npm run cluster`.',
    default: 'info'
  }),

  // Broker
  AMQP_URL: Type.String({
    description: 'RabbitMQ URL (amqp:// or amqps://). Development default: amqp://guest:guest@127.0.0.1:5672. Required in production.',
    pattern: '^(amqps?://.+)?$',
    default: ''
  }),
  BROKER_PREFIX: Type.String({
    description: 'Prefix of every exchange and queue name, so tenants and tests can share one broker.',
    pattern: '^[A-Za-z0-9_.-]{1,64}$',
    default: 'chat'
  }),
  AMQP_HEARTBEAT_S: Int('AMQP heartbeat in seconds; a dead gateway\'s queue vanishes after about twice this (its keys ROUTE_LEASE_MS later). A process stopping while the broker is silent (not refusing) waits 2–2.5 heartbeats to notice: above about 10 s, the worker\'s 25 s stop deadline or the gateway\'s grace delay may pass first (exit 1; the broker requeues what was held).', 10, 1, 600),
  SERVER_ID: Type.String({
    description: 'Name of this process in logs, metrics and the AMQP connection name. Default: host name plus a random suffix.',
    pattern: '^[A-Za-z0-9_.:-]{0,100}$',
    default: ''
  }),
  FLY_REGION: Type.String({ description: 'Region label reported by /ready and metrics; set by Fly.', default: '' }),

  // Gateway
  PORT: Int('HTTP and Socket.IO port of a gateway (read by the fastify CLI as well).', 3000, 0, 65535),
  LISTEN_BACKLOG: Int('Pending TCP connections the gateway\'s listening socket queues (capped by the kernel\'s somaxconn); a reconnect storm overflows Node\'s default of 511.', 4096, 1, 65_535),
  FASTIFY_ADDRESS: Type.String({ description: 'Address the fastify CLI listens on (its own setting, checked here at start); empty means localhost. Use 0.0.0.0 in containers.', default: '' }),
  METRICS_PORT: Int('Port of a separate HTTP listener for /metrics (keep it off the public port in production); 0 serves /metrics on PORT.', 0, 0, 65535),
  DRAIN_WINDOW_MS: Int('On SIGTERM/SIGINT, sockets are told to reconnect elsewhere and disconnected at random moments spread over this window. Keep it at least 5 s below the fastify CLI grace delay (FASTIFY_CLOSE_GRACE_DELAY).', 5000, 0, 300_000),
  FASTIFY_CLOSE_GRACE_DELAY: Int('The fastify CLI\'s shutdown grace in ms (its own setting, like -g; checked here at start when set): past it the CLI exits 1 without closing anything. Must exceed DRAIN_WINDOW_MS by at least 5 s. 0 = not set here (the CLI then takes -g, or its default of 500 ms).', 0, 0, 3_600_000),
  GATEWAY_MAX_SOCKETS: Int('Hard cap of sockets on one gateway; beyond it connections are refused (connect_error UNAVAILABLE).', 15_000, 1, 1_000_000),
  GATEWAY_READY_SOCKETS: Int('At this many sockets or more /ready answers 503 so the load balancer sends new clients elsewhere; 0 means 90% of GATEWAY_MAX_SOCKETS (at least 1); at most GATEWAY_MAX_SOCKETS.', 0, 0, 1_000_000),
  USER_MAX_SOCKETS: Int('Most simultaneous sockets of one user on one gateway; beyond it connections are refused (connect_error RATE_LIMITED).', 20, 1, 10_000),
  JWT_SECRET: Type.String({
    description: 'HS256 secret that signs client tokens (claims `sub` = user id and `exp`, both required), at least 16 characters. Development default: a fixed insecure value. Required in production.',
    default: ''
  }),
  JWT_ISSUER: Type.String({ description: 'If set, tokens must carry this `iss`.', default: '' }),
  JWT_AUDIENCE: Type.String({ description: 'If set, tokens must carry this `aud`.', default: '' }),
  SOCKET_TRANSPORTS: Type.Union([Type.Literal('websocket'), Type.Literal('websocket,polling')], {
    description: 'Engine.IO transports. Keep `websocket` behind load balancers without sticky sessions (Fly).',
    default: 'websocket'
  }),
  MAX_PAYLOAD_BYTES: Int('Largest Socket.IO frame a client may send; bigger frames close the socket. At least MAX_CONTENT_CHARS × 3 + 1024, so that any valid message fits, and MAX_CHANNEL_MEMBERS × 39 + 1024, so that a channel:create naming that many UUID-sized user ids fits (longer ids need more).', 65_536, 1024, 10_485_760),
  MAX_CONTENT_CHARS: Int('Longest message content, in characters.', 4000, 1, 1_000_000),
  MAX_CHANNEL_MEMBERS: Int('Most members a channel:create may name. The gateway needs MAX_PAYLOAD_BYTES of at least this × 39 + 1024 for such a create to fit in a frame.', 1000, 1, 100_000),
  MAX_USER_GROUPS: Int('Most group channels one user may belong to that they created, and, counted apart, most that others created (read by the worker). A channel:create that would take the creator past the first count, or a named member past the second, is refused with LIMIT_REACHED and creates nothing. It bounds the channel keys one connect binds (at most twice this), stops anyone from filling another user\'s list with groups, and, the counts being apart, groups others put a user in never stop that user creating their own (direct channels, which bind nothing, are not counted).', 1000, 1, 1_000_000),
  RPC_MAX_REPLY_BYTES: Int('Largest answer the worker publishes to a gateway\'s request (read by the worker); a bigger one is answered LIMIT_REACHED instead. Keep it below the broker\'s max_message_size (16 MiB by default on RabbitMQ 4.x, 128 MiB on 3.x): the broker closes the channel of a message past it, and the request, handed back, would close it again and again until it expired, failing other users\' requests each time.', 8 * 1024 * 1024, 65_536, 512 * 1024 * 1024),
  MEMBERSHIPS_MAX_CHANNELS: Int('Most channels one answer may list (read by the worker). A user in more cannot open a session (session:end LIMIT_REACHED) nor list their channels. A gateway re-reading the channels of its users after lost deliveries asks for 500 users at a time; a request whose users belong to more channels in all is refused with LIMIT_REACHED instead of building a huge answer that would time out, and the gateway asks again in halves. A user past it alone has their sockets ended with session:end UNAVAILABLE (docs/PROTOCOL.md). Keep it well above twice MAX_USER_GROUPS.', 100_000, 1, 10_000_000),
  SOCKET_RATE_PER_SEC: Int('Events per second a socket may send on average (token bucket); beyond it acks say RATE_LIMITED.', 20, 1, 100_000),
  SOCKET_RATE_BURST: Int('Events a socket may send in a burst before the rate limit applies.', 40, 1, 100_000),
  USER_REQUESTS_WAITING: Int('Reads and channel commands (history:fetch, channels:list, channel:create, channel:leave) one user may have waiting for the worker through one gateway, across all their sockets; beyond it acks say RATE_LIMITED. Workers answer every user from one queue: this stops one user\'s heavy reads from making everyone else\'s wait until they time out. The SDK sends at most 4 catch-up reads at once.', 8, 1, 10_000),
  SOCKET_MAX_PENDING_PACKETS: Int('Packets a socket may have waiting to be written: over it with no progress for a second (or over four times it at once), it counts as a slow consumer and is disconnected.', 2000, 10, 1_000_000),
  SOCKET_MAX_BUFFER_BYTES: Int('Bytes a socket may have waiting in its WebSocket: over it with no progress for a second (or over four times it at once), it counts as a slow consumer and is disconnected. A socket still draining a large answer (a full history page can pass 2 MB) is left alone.', 2_097_152, 16_384, 1_073_741_824),
  BIND_CHANNELS: Int('AMQP channels used in parallel for bind/unbind (one RPC in flight per channel); binding 11,000 keys at +50 ms RTT took 75 s with 8, 12 s with 64.', 64, 1, 256),
  UNBIND_GRACE_MS: Int('Delay before a key whose last local user left is unbound; absorbs reconnect flaps.', 2000, 0, 600_000),
  ROUTE_LEASE_MS: Int('How long a gateway\'s routing keys outlive its broker connection: a reconnect within it re-binds with one operation instead of one per key; after it (or a crash) the broker deletes them.', 120_000, 1000, 86_400_000),
  GATEWAY_QUEUE_MAX_LENGTH: Int('Cap of a gateway queue; beyond it the broker drops the oldest deliveries, and the gateway re-reads memberships and tells its sockets to catch up from history.', 100_000, 1),
  RPC_TIMEOUT_MS: Int('How long a gateway waits for the worker to answer a read or a channel command. Each request carries what is left of it when published and the time it was sent (headers x-chat-timeout-ms and x-chat-sent-at), and expires in the queue after it: the worker commits a channel create or leave by 1 s (a fifth of this, if less) before the caller gives up, counting the time the request waited, and within DB_TIMEOUT_MS, or not at all, so UNAVAILABLE always means nothing changed and a retry is safe. Gateway and worker clocks should agree within that second (NTP).', 5000, 100, 120_000),
  SEND_TIMEOUT_MS: Int('How long a gateway waits for the broker to confirm a send before answering UNAVAILABLE.', 5000, 100, 120_000),
  SEND_BACKLOG_MAX: Int('Messages waiting in a send queue (shard) at which gateways answer new sends to that shard UNAVAILABLE at once, until it falls below 80 % of this; bounds how late a message can be when workers fall behind. Set it to about ten seconds of one worker\'s throughput (the limit applies to each shard); 0 never refuses (depths are still read for the metrics).', 100_000, 0, 100_000_000),
  SEND_BACKLOG_CHECK_MS: Int('How often each gateway reads the depth of the send queues (one queue.declare per shard).', 500, 50, 60_000),

  DEMO_ENABLED: Type.Boolean({ description: 'Serve the demo chat page at `/`. Off unless set; never needed in production.', default: false }),
  DEV_TOKENS_ENABLED: Type.Boolean({ description: 'Enable `POST /dev/token`, which signs a token for any user name: for the demo and local testing only. Off unless set.', default: false }),

  // Worker
  DATABASE_URL: Type.String({
    description: 'PostgreSQL URL of the worker and `npm run db:migrate`. Unset: an embedded PGlite database in DATA_DIR (development only; required in production).',
    pattern: '^(postgres(ql)?://.*)?$',
    default: ''
  }),
  DATA_DIR: Type.String({ description: 'Where the embedded database lives when DATABASE_URL is unset; created and migrated automatically. One process at a time.', default: '.data', minLength: 1 }),
  DB_POOL_MAX: Int('Connections in the worker\'s PostgreSQL pool.', 10, 1, 1000),
  DB_PREPARE: Type.Boolean({ description: 'Let the worker prepare its batch statement once per connection (one round trip per batch instead of two). Turn off behind a connection pooler in transaction mode that cannot keep prepared statements (PgBouncer before 1.21).', default: true }),
  DB_TIMEOUT_MS: Int('A batch or read that takes longer counts as a database outage: the worker turns unready and retries (the work is idempotent). At most 15 s: a stopping worker waits for its batch up to this long, then for the batch\'s deliveries, and exits anyway (status 1, the broker requeues) 25 s after the signal; a longer timeout would have it killed in the middle of a batch it could have finished.', 10_000, 100, 15_000),
  WORKER_SHARDS: Int('Send queues (shards) that sends are spread over by channel. Each is stored by one worker at a time, in order; several let that many worker processes store different channels at once. Every gateway must have the same value, and workers at least as many: read docs/OPERATIONS.md ("Send shards") before changing it on a running system.', 1, 1, MAX_SEND_SHARDS),
  WORKER_CONSUME_SHARDS: Type.String({
    description: 'Which send shards this worker consumes: `all`, or a comma-separated list of shard numbers below WORKER_SHARDS such as `0,2`. A worker that subscribes to a shard another worker already holds stands by for it.',
    pattern: '^(all|[0-9]{1,2}(,[0-9]{1,2})*)$',
    expected: '`all`, or shard numbers separated by commas without spaces, such as 0,2',
    default: 'all'
  }),
  WORKER_PREFETCH: Int('Unacked sends the worker holds per consumed shard; bounds its memory and the batches in flight.', 500, 1, 65_535),
  WORKER_BATCH_MAX: Int('Most messages persisted in one transaction.', 250, 1, 10_000),
  WORKER_BATCH_WAIT_MS: Int('How long the worker waits to fill a batch when it is idle (a busy worker batches whatever waited meanwhile). 0 took 3 ms off p50 at 500 DMs/s for 20 % more machine CPU (docs/BENCHMARKS.md).', 5, 0, 1000),
  WORKER_RPC_CONCURRENCY: Int('Reads and channel commands the worker serves at once.', 16, 1, 1000),
  WORKER_PORT: Int('Port of the worker\'s /health, /ready and /metrics.', 9091, 0, 65535)
})

export type Config = Static<typeof ConfigSchema>
export type Role = 'gateway' | 'worker' | 'migrate' | 'cluster'

const DEV_AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672'
const DEV_JWT_SECRET = 'dev-only-insecure-jwt-secret'

/** The one error a bad environment produces; `message` is the one line printed at start. */
export class ConfigError extends Error {
  readonly code = 'APP_CONFIG_INVALID'
  constructor (message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

/**
 * Validates `env` against the schema and the role's requirements.
 * @throws ConfigError naming the first bad or missing variable.
 */
export function loadConfig (role: Role, env: NodeJS.ProcessEnv = process.env): Config {
  const raw: Record<string, unknown> = {}
  for (const [key, schema] of Object.entries(ConfigSchema.properties as Record<string, TSchema>)) {
    const value = env[key]?.trim()
    if (value === undefined || value === '') continue
    // Value.Convert reads integers with parseInt ('15e3' → 15, '1.5' → 1): accept digits only.
    if (schema.type === 'integer' && !/^[+-]?\d+$/.test(value)) {
      throw new ConfigError(`${key} is invalid (${JSON.stringify(env[key])}): ${describe(schema, 'expected an integer')}`)
    }
    raw[key] = value
  }
  const converted = Value.Convert(ConfigSchema, Value.Default(ConfigSchema, raw))
  const first = Value.Errors(ConfigSchema, converted).First()
  if (first !== undefined) {
    const name = first.path.replace(/^\//, '')
    const schema = (ConfigSchema.properties as Record<string, TSchema>)[name]
    const got = env[name] === undefined ? 'unset' : JSON.stringify(env[name])
    throw new ConfigError(`${name} is invalid (${got}): ${describe(schema, first.message)}`)
  }
  const config = converted as Config
  const production = config.NODE_ENV === 'production'
  const needs = (name: keyof Config, why: string) => {
    if (config[name] === '') throw new ConfigError(`${name} is required ${why}`)
  }
  if (config.AMQP_URL === '') {
    // Migrations never touch the broker.
    if (production && role !== 'migrate') needs('AMQP_URL', 'in production')
    config.AMQP_URL = DEV_AMQP_URL
  }
  if (role === 'gateway') {
    if (config.JWT_SECRET === '') {
      if (production) needs('JWT_SECRET', 'in production: set a random string of 32+ characters')
      config.JWT_SECRET = DEV_JWT_SECRET
    } else if (config.JWT_SECRET.length < 16) {
      throw new ConfigError('JWT_SECRET is invalid: it must be at least 16 characters long')
    }
  }
  if ((role === 'worker' || role === 'migrate' || role === 'cluster') && production) {
    needs('DATABASE_URL', 'in production (the embedded database is for development), e.g. postgres://user:pass@host:5432/db')
  }
  for (const name of ['AMQP_URL', 'DATABASE_URL'] as const) {
    // postgres.js takes a host list (db1:5432,db2:5432) and checks only the first, as here.
    const value = name === 'DATABASE_URL' ? config[name].replace(/^([a-z]+:\/\/(?:[^@/?#]*@)?)([^,/?#]*),[^/?#]*/, '$1$2') : config[name]
    const problem = urlProblem(value)
    if (problem !== undefined) throw new ConfigError(`${name} is invalid: ${problem}`)
  }
  if (role === 'gateway' && config.GATEWAY_READY_SOCKETS > config.GATEWAY_MAX_SOCKETS) {
    throw new ConfigError(`GATEWAY_READY_SOCKETS is invalid (${config.GATEWAY_READY_SOCKETS}): it must not exceed GATEWAY_MAX_SOCKETS (${config.GATEWAY_MAX_SOCKETS}), or the gateway refuses sockets while it still reports ready`)
  }
  // A maximal message (3 UTF-8 bytes per character at worst) must fit in a frame, or the
  // socket is cut instead of getting VALIDATION.
  if (role === 'gateway' && config.MAX_CONTENT_CHARS * 3 + 1024 > config.MAX_PAYLOAD_BYTES) {
    throw new ConfigError(`MAX_CONTENT_CHARS is invalid (${config.MAX_CONTENT_CHARS}): a message that long can take ${config.MAX_CONTENT_CHARS * 3 + 1024} bytes on the wire; raise MAX_PAYLOAD_BYTES (${config.MAX_PAYLOAD_BYTES}) to at least that, or lower MAX_CONTENT_CHARS`)
  }
  // A create naming every allowed member must fit in a frame, or the socket is cut
  // instead of the create being answered (ids of UUID size: 36 bytes, quotes and comma).
  if (role === 'gateway' && config.MAX_CHANNEL_MEMBERS * 39 + 1024 > config.MAX_PAYLOAD_BYTES) {
    throw new ConfigError(`MAX_CHANNEL_MEMBERS is invalid (${config.MAX_CHANNEL_MEMBERS}): a channel:create naming that many UUID-sized user ids takes ${config.MAX_CHANNEL_MEMBERS * 39 + 1024} bytes on the wire; raise MAX_PAYLOAD_BYTES (${config.MAX_PAYLOAD_BYTES}) to at least that, or lower MAX_CHANNEL_MEMBERS`)
  }
  // Past the grace the CLI exits 1 mid-drain: the sockets still waiting are all cut at once
  // (the reconnect storm the window exists to avoid), and the route outlives the gateway.
  if (role === 'gateway' && config.FASTIFY_CLOSE_GRACE_DELAY !== 0 && config.DRAIN_WINDOW_MS + 5000 > config.FASTIFY_CLOSE_GRACE_DELAY) {
    throw new ConfigError(`DRAIN_WINDOW_MS is invalid (${config.DRAIN_WINDOW_MS}): it must be at least 5000 ms below FASTIFY_CLOSE_GRACE_DELAY (${config.FASTIFY_CLOSE_GRACE_DELAY}), or the fastify CLI exits 1 in the middle of the drain`)
  }
  if (role === 'gateway' && production && config.DEV_TOKENS_ENABLED) {
    throw new ConfigError('DEV_TOKENS_ENABLED is invalid in production: POST /dev/token would let anyone sign in as anyone')
  }
  if (role === 'gateway' && config.METRICS_PORT !== 0 && config.METRICS_PORT === config.PORT) {
    throw new ConfigError(`METRICS_PORT is invalid (${config.METRICS_PORT}): it must differ from PORT, or be 0 to serve /metrics on PORT`)
  }
  if (role === 'worker') consumedShards(config)
  if (config.SERVER_ID === '') config.SERVER_ID = `${hostname().slice(0, 40)}-${randomBytes(4).toString('hex')}`
  return config
}

/**
 * The send shards a worker consumes, from WORKER_CONSUME_SHARDS.
 * @throws ConfigError when a listed shard does not exist or is listed twice.
 */
export function consumedShards (config: Pick<Config, 'WORKER_SHARDS' | 'WORKER_CONSUME_SHARDS'>): number[] {
  const all = Array.from({ length: config.WORKER_SHARDS }, (_, i) => i)
  if (config.WORKER_CONSUME_SHARDS === 'all') return all
  const listed = config.WORKER_CONSUME_SHARDS.split(',').map(Number)
  const bad = listed.find((shard) => shard >= config.WORKER_SHARDS)
  if (bad !== undefined) {
    throw new ConfigError(`WORKER_CONSUME_SHARDS is invalid (${JSON.stringify(config.WORKER_CONSUME_SHARDS)}): shard ${bad} does not exist with WORKER_SHARDS=${config.WORKER_SHARDS} (shards are 0 to ${config.WORKER_SHARDS - 1})`)
  }
  if (new Set(listed).size !== listed.length) {
    throw new ConfigError(`WORKER_CONSUME_SHARDS is invalid (${JSON.stringify(config.WORKER_CONSUME_SHARDS)}): a shard is listed twice`)
  }
  return listed
}

/**
 * What the drivers would choke on with a stack trace at start: a URL that does not
 * parse (a port over 65535, say) or a user or password with a bare `%`. Passwords
 * are never echoed.
 */
function urlProblem (value: string): string | undefined {
  if (value === '') return undefined
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return 'not a valid URL (check the host and port)'
  }
  for (const [part, text] of [['user name', url.username], ['password', url.password], ['path', url.pathname]] as const) {
    try {
      decodeURIComponent(text)
    } catch {
      return `its ${part} has a % that is not followed by two hex digits; write a literal % as %25`
    }
  }
  return undefined
}

/**
 * Reads `./.env` into the environment, values already set winning, as the fastify CLI
 * does for gateways: the worker, migrations and `npm run cluster` then see the same
 * settings (a BROKER_PREFIX only the gateways saw would split them onto other queues).
 */
export function loadDotEnv (file = '.env'): void {
  // Node 20.12+; the fastify CLI does the same and skips it on older versions.
  if (existsSync(file) && typeof process.loadEnvFile === 'function') process.loadEnvFile(file)
}

/** True when the gateway runs on the insecure development JWT secret. */
export const usesDevSecret = (config: Config) => config.JWT_SECRET === DEV_JWT_SECRET

function describe (schema: TSchema | undefined, fallback: string): string {
  if (schema === undefined) return fallback
  if (schema.anyOf !== undefined) {
    return `expected one of ${(schema.anyOf as TSchema[]).map((s) => String(s.const)).join(', ')}`
  }
  if (schema.type === 'integer') return `expected an integer from ${schema.minimum} to ${schema.maximum}`
  if (typeof schema.expected === 'string') return `expected ${schema.expected}`
  if (schema.pattern !== undefined) return `expected to match ${schema.pattern}`
  return fallback
}

/**
 * An environment for a child process (npm run cluster, tests): the parent's own
 * environment plus overrides. Kept here so that only this module touches process.env.
 */
export function childEnv (overrides: Record<string, string | undefined>): NodeJS.ProcessEnv {
  return { ...process.env, ...overrides }
}
