/**
 * The persistence worker: consumes sends and RPC requests from RabbitMQ, writes to
 * PostgreSQL, publishes deliveries to the outgoing exchange. Knows nothing of
 * fastify or the gateway.
 */
import type { AsyncMessage, Connection, Consumer } from 'rabbitmq-client'
import { ConsumerStatus } from 'rabbitmq-client'
import { consumedShards, type Config } from '../config.js'
import type { Delivery, RpcResponse } from '../contracts/envelopes.js'
import { openConnection } from '../broker/connection.js'
import { deliveryEnvelope } from '../broker/deliveries.js'
import { isOpen } from '../broker/socket.js'
import { ConfirmedPublisher } from '../broker/publisher.js'
import { RPC_SENT_AT_HEADER, RPC_TIMEOUT_HEADER } from '../broker/rpc.js'
import { brokerNames, consumerTopology, declareTopology, publisherTopology, ROUTE_DEAD } from '../broker/topology.js'
import { sql } from 'drizzle-orm'
import { openDatabase, statementRunner, type DatabaseHandle } from '../db/client.js'
import { describeDbError, withDbTimeout } from '../db/errors.js'
import { createChannelsRepository } from '../db/repositories/channels.js'
import { createMessagesRepository } from '../db/repositories/messages.js'
import type { Logger } from '../log.js'
import { describeDatabaseFailure, StartupError, waitForBroker } from '../startup.js'
import { Batcher } from './batcher.js'
import { createWorkerMetrics, type WorkerMetrics } from './metrics.js'
import { createRpcHandler, type RpcCaller } from './rpc-handlers.js'
import { GIVE_BACK, SendPipeline, type PendingSend } from './sends.js'

export interface WorkerStatus {
  ready: boolean
  broker: 'up' | 'down'
  database: 'up' | 'down'
  closing: boolean
  inFlight: number
  serverId: string
}

export interface Worker {
  readonly metrics: WorkerMetrics
  /**
   * Resolves once the broker and the database answered, when the worker starts consuming
   * (unready and consuming nothing until then); rejects with a one-line StartupError.
   */
  readonly started: Promise<void>
  status: () => WorkerStatus
  /** Stops consuming, finishes and acks what it holds, requeues the rest, closes everything. Idempotent. */
  close: () => Promise<void>
}

/** How long a starting worker waits for RabbitMQ before giving up with one line. */
const BROKER_STARTUP_TIMEOUT_MS = 15_000

export interface WorkerOptions {
  config: Config
  log: Logger
  /** An already-open database (embedded PGlite, or one a test owns) instead of DATABASE_URL; the caller closes it. */
  database?: DatabaseHandle
  /** Collect process-level default metrics. @default true */
  defaultMetrics?: boolean
}

/**
 * The channel a consumer receives on. rabbitmq-client offers no way to close it without
 * settling what the handlers hold (Consumer.close cancels first, then waits for them),
 * hence its internal field; test/worker/shutdown-order.test.ts fails if that changes.
 */
function consumerChannel (consumer: Consumer): { close: () => Promise<void> } | undefined {
  const ch = (consumer as unknown as { _ch?: { active: boolean, close: () => Promise<void> } })._ch
  return ch?.active === true ? ch : undefined
}

/**
 * The caller's timeout a request carries (absent from gateways older than the header), and
 * how long ago the caller sent it: time in the queue and in this worker's prefetch, which
 * the write no longer has. Clocks are assumed within answerMarginMs of each other (NTP);
 * one behind the caller's reads as no wait at all.
 */
function callerOf (msg: AsyncMessage): RpcCaller {
  const timeoutMs: unknown = msg.headers?.[RPC_TIMEOUT_HEADER]
  if (typeof timeoutMs !== 'number' || !Number.isInteger(timeoutMs) || timeoutMs <= 0) return {}
  const sentAt: unknown = msg.headers?.[RPC_SENT_AT_HEADER]
  if (typeof sentAt !== 'number' || !Number.isFinite(sentAt)) return { timeoutMs }
  return { timeoutMs, waitedMs: Math.min(timeoutMs, Math.max(0, Date.now() - sentAt)) }
}

export function startWorker ({ config, log, database, defaultMetrics = true }: WorkerOptions): Worker {
  const names = brokerNames(config.BROKER_PREFIX)
  const metrics = createWorkerMetrics({ server_id: config.SERVER_ID, region: config.FLY_REGION }, defaultMetrics)
  const db = database ?? openDatabase({ url: config.DATABASE_URL, max: config.DB_POOL_MAX, prepare: config.DB_PREPARE, applicationName: `chat-worker ${config.SERVER_ID}` })
  const consumeConn: Connection = openConnection({ url: config.AMQP_URL, name: `worker:${config.SERVER_ID}:consume`, heartbeatSeconds: config.AMQP_HEARTBEAT_S, log })
  const publishConn: Connection = openConnection({ url: config.AMQP_URL, name: `worker:${config.SERVER_ID}:publish`, heartbeatSeconds: config.AMQP_HEARTBEAT_S, log })
  const shards = consumedShards(config)
  const publisher = new ConfirmedPublisher(publishConn, { exchanges: publisherTopology(names, config.WORKER_SHARDS).exchanges })
  const deadLetterPublisher = new ConfirmedPublisher(publishConn, publisherTopology(names, config.WORKER_SHARDS))
  const messages = createMessagesRepository(db.db)
  const channels = createChannelsRepository(db.db)

  let closing: Promise<void> | undefined
  let databaseUp = true
  /** Reads (ping, RPC) tell whether the database answers; batches whether it takes writes. */
  const dbHealth = { answers: true, writes: true }
  let rpcReady = false
  const setDatabaseState = (part: 'answers' | 'writes', up: boolean) => {
    dbHealth[part] = up
    // A `select 1` that works says nothing of a write path that fails (a read-only
    // standby, a missing function or privilege): readiness needs both.
    databaseUp = dbHealth.answers && dbHealth.writes
    metrics.databaseUp.set(databaseUp ? 1 : 0)
  }
  metrics.databaseUp.set(1)

  const deadLetter = async (msg: AsyncMessage, reason: string) => {
    const body = Buffer.isBuffer(msg.body) ? msg.body : Buffer.from(typeof msg.body === 'string' ? msg.body : JSON.stringify(msg.body))
    await deadLetterPublisher.publish({
      exchange: names.deadLetterExchange,
      routingKey: ROUTE_DEAD,
      durable: true,
      mandatory: true,
      contentType: msg.contentType,
      messageId: msg.messageId,
      headers: { ...msg.headers, 'x-chat-reason': reason.slice(0, 1000), 'x-chat-original-routing-key': msg.routingKey, 'x-chat-dead-lettered-at': new Date().toISOString() }
    }, body, 10_000)
  }

  const pipeline = new SendPipeline({
    messages,
    publisher,
    outgoingExchange: names.outgoing,
    deadLetter,
    maxContentChars: config.MAX_CONTENT_CHARS,
    log,
    metrics,
    onDatabaseState: (up) => setDatabaseState('writes', up),
    isClosing: () => closing !== undefined,
    dbTimeoutMs: config.DB_TIMEOUT_MS
  })
  const batcher = new Batcher<PendingSend>({
    max: config.WORKER_BATCH_MAX,
    waitMs: config.WORKER_BATCH_WAIT_MS,
    // One batch at a time keeps seq in queue order; deliveries overlap the next batch.
    // The shards this process consumes share it: their channels never overlap.
    concurrency: 1,
    run: (items) => pipeline.run(items),
    onError: (err, items) => {
      log.error({ err }, 'batch failed unexpectedly; requeueing it')
      for (const item of items) item.settle(ConsumerStatus.REQUEUE)
    }
  })

  /** Handlers of sends given back at shutdown: resolved once their channel is closed. */
  const givenBack: Array<() => void> = []
  const onSend = (msg: AsyncMessage) => new Promise<ConsumerStatus>((resolve) => {
    // Its nack, once the channel is closed, fails and is ignored: the broker has it back.
    const giveBack = () => givenBack.push(() => resolve(ConsumerStatus.REQUEUE))
    if (closing !== undefined) {
      giveBack()
      return
    }
    let settled = false
    batcher.add({
      msg,
      settle: (status) => {
        if (settled) return
        settled = true
        if (status === GIVE_BACK) giveBack()
        else resolve(status)
      }
    })
  })
  /** Created once the start-up check passed (consume()), so empty until then. */
  const sends: Consumer[] = []
  /** Send consumers subscribed since the connection last failed. */
  const sendsReady = new Set<Consumer>()

  const handleRpc = createRpcHandler({
    channels,
    messages,
    maxChannelMembers: config.MAX_CHANNEL_MEMBERS,
    maxUserGroups: config.MAX_USER_GROUPS,
    maxListedChannels: config.MEMBERSHIPS_MAX_CHANNELS,
    dbTimeoutMs: config.DB_TIMEOUT_MS,
    log,
    onDatabaseState: (up) => setDatabaseState('answers', up),
    notify: (delivery: Delivery) => publisher.publish(deliveryEnvelope(names.outgoing, delivery), delivery, 10_000)
  })
  let lateWarnedAt = 0
  const onRpc = async (msg: AsyncMessage, reply: (body: Buffer, envelope: { contentType: string }) => Promise<void>) => {
    const started = performance.now()
    const caller = callerOf(msg)
    // The broker expires a request when its caller gives up: one that seems older is in
    // this worker's prefetch behind slow ones, or this clock is ahead of the gateway's.
    if (caller.timeoutMs !== undefined && caller.waitedMs === caller.timeoutMs && Date.now() - lateWarnedAt > 60_000) {
      lateWarnedAt = Date.now()
      log.warn({ timeoutMs: caller.timeoutMs }, 'requests reach the worker after their caller gave up: it is far behind, or its clock is ahead of the gateways\' (check NTP); their creates and leaves are refused')
    }
    const handled = await handleRpc(msg.body, caller)
    const { op } = handled
    let response: RpcResponse = handled.response
    // Serialised here rather than by the client library, to be measured: the broker closes
    // the channel of a message past its max_message_size, and this request, handed back,
    // would close it again until it expired, failing every request in flight on it.
    let body = Buffer.from(JSON.stringify(response))
    if (body.byteLength > config.RPC_MAX_REPLY_BYTES) {
      log.warn({ op, bytes: body.byteLength, max: config.RPC_MAX_REPLY_BYTES }, 'an answer was too large to publish; answered LIMIT_REACHED')
      response = { ok: false, error: { code: 'LIMIT_REACHED', message: `the answer would be ${body.byteLength} bytes, more than one reply may carry (RPC_MAX_REPLY_BYTES ${config.RPC_MAX_REPLY_BYTES})` } }
      body = Buffer.from(JSON.stringify(response))
    }
    metrics.rpc.inc({ op, outcome: response.ok ? 'ok' : response.error.code })
    metrics.rpcLatency.observe({ op }, (performance.now() - started) / 1000)
    if (msg.replyTo !== undefined) await reply(body, { contentType: 'application/json' })
  }
  let rpc: Consumer | undefined

  const allReady = () => rpc !== undefined && rpcReady && sendsReady.size === sends.length
  const watch = (name: 'sends' | 'rpc', consumer: Consumer, queue: string) => {
    consumer.on('ready', () => {
      if (name === 'rpc') rpcReady = true
      else sendsReady.add(consumer)
      log.info({ queue: consumer.queue }, `worker consuming ${name}`)
    })
    consumer.on('error', (err) => {
      // At shutdown the nacks of sends given back fail on their closed channel, as intended.
      if (closing === undefined) log.warn({ err, queue }, `worker ${name} consumer error`)
      else log.debug({ err, queue }, `worker ${name} consumer error while stopping`)
    })
  }
  /**
   * Subscribes to the send and RPC queues. Only after the start-up check: a worker that
   * then refuses to start (no schema, a certificate it rejects) must not have taken, let
   * alone dead-lettered and acked, the sends waiting for a worker that can store them.
   */
  const consume = () => {
    for (const shard of shards) {
      const consumer = consumeConn.createConsumer({
        ...consumerTopology(names, { sendShard: shard }),
        qos: { prefetchCount: config.WORKER_PREFETCH },
        concurrency: config.WORKER_PREFETCH,
        requeue: true
      }, onSend)
      watch('sends', consumer, names.sendQueue(shard))
      sends.push(consumer)
    }
    rpc = consumeConn.createConsumer({
      ...consumerTopology(names, 'rpc'),
      qos: { prefetchCount: config.WORKER_RPC_CONCURRENCY * 2 },
      concurrency: config.WORKER_RPC_CONCURRENCY,
      requeue: false
    }, onRpc)
    watch('rpc', rpc, names.rpcQueue)
    sends[0]?.on('ready', () => {
      declareTopology(consumeConn, names, config.WORKER_SHARDS).catch((err: unknown) => log.warn({ err }, 'could not declare the dead-letter topology'))
    })
  }
  consumeConn.on('error', () => {
    sendsReady.clear()
    rpcReady = false
  })

  // Readiness must notice an outage even when no message is flowing.
  const ping = setInterval(() => {
    withDbTimeout(db.db.execute(sql`select 1`), Math.min(config.DB_TIMEOUT_MS, 5000))
      .then(() => setDatabaseState('answers', true), (err: unknown) => {
        if (dbHealth.answers) log.warn({ err: describeDbError(err) }, 'database ping failed')
        setDatabaseState('answers', false)
      })
  }, 5000)
  ping.unref()

  // A consumer whose channel failed has no queue until it subscribes again.
  const brokerUp = () => isOpen(consumeConn) && allReady() && sends.every((c) => c.queue !== '') && rpc?.queue !== ''
  metrics.setBrokerUp(brokerUp)

  async function shutdown (): Promise<void> {
    clearInterval(ping)
    log.info('worker stopping: finishing in-flight batches')
    // Reads and channel commands: no new ones; those running finish and answer.
    // A broker lost meanwhile rejects the cancels: the broker requeues what we hold anyway.
    const quietly = (what: string) => (err: unknown) => { log.warn({ err }, `worker stopping: ${what} failed`) }
    const rpcStopping = rpc?.close().catch(quietly('closing the RPC consumer'))
    // The batch in progress commits and acks (or, with the database down, is given back);
    // sends not yet in a batch, and any that arrive meanwhile, are given back.
    for (const item of batcher.takeBuffered()) item.settle(GIVE_BACK)
    await batcher.drain()
    await pipeline.idle()
    // Given back by closing the channel, not by nacking: the broker then takes every
    // unacked send back at once, in delivery order, before a standby becomes active.
    // Nacks would hand them straight back to this worker (still the active consumer),
    // each costing one of the queue's delivery attempts, and cancelling first would let
    // a standby store newer sends before these: seq out of order.
    const stopping = sends.map((c) => c.close().catch(quietly('closing a send consumer'))) // from here on the consumers do not subscribe again
    await Promise.all(sends.map((c) => consumerChannel(c)?.close().catch(quietly('closing a send channel'))))
    for (const resolve of givenBack.splice(0)) resolve()
    await Promise.all([...stopping, rpcStopping])
    await Promise.allSettled([publisher.close(), deadLetterPublisher.close()])
    await Promise.allSettled([consumeConn.close(), publishConn.close()])
    if (database === undefined) await db.close()
    log.info('worker stopped')
  }

  const started = (async () => {
    await Promise.all([
      waitForBroker(consumeConn, config.AMQP_URL, BROKER_STARTUP_TIMEOUT_MS),
      waitForBroker(publishConn, config.AMQP_URL, BROKER_STARTUP_TIMEOUT_MS)
    ])
    let migrated: unknown
    try {
      // The batch function and write_requests are the newest objects of the migrations: no schema, no worker.
      const [row] = await withDbTimeout(statementRunner(db.db)<{ migrated: unknown }>("select to_regclass('messages') is not null and to_regprocedure('chat_persist_batch(text[], uuid[], text[], uuid[], text[], text[])') is not null and to_regclass('write_requests') is not null as migrated", []), config.DB_TIMEOUT_MS)
      migrated = row?.migrated
    } catch (err) {
      throw new StartupError('APP_DATABASE_UNREACHABLE', describeDatabaseFailure(err, config.DATABASE_URL === '' ? `embedded database in ${config.DATA_DIR}` : config.DATABASE_URL), { cause: err })
    }
    if (migrated !== true) {
      // Otherwise it would report ready and retry every batch forever as a database outage.
      throw new StartupError('APP_DATABASE_NOT_MIGRATED', 'the database has no chat schema (or an old one): run `npm run db:migrate` with the same DATABASE_URL first')
    }
    // Stopped while checking: close() already closed what there is to consume on.
    if (closing === undefined) consume()
  })()
  // Callers that do not wait must not crash the process with an unhandled rejection.
  started.catch(() => {})

  return {
    metrics,
    started,
    status: () => {
      const broker = brokerUp() ? 'up' : 'down'
      return {
        ready: closing === undefined && broker === 'up' && databaseUp,
        broker,
        database: databaseUp ? 'up' : 'down',
        closing: closing !== undefined,
        inFlight: batcher.buffered + batcher.runningItems,
        serverId: config.SERVER_ID
      }
    },
    close: () => {
      closing ??= shutdown()
      return closing
    }
  }
}
