/**
 * A worker stopped while the database is down holds sends it could not store: a batch
 * that keeps failing and more behind it. They must go back to the queue in the order
 * they came, so that the next worker (here a standby, active the moment the first lets
 * go) numbers them in send order, and each stop may cost them at most one of the
 * queue's delivery attempts. "Database down" is the batch function renamed away: the
 * worker sees SQLSTATE 42883 and treats it as an outage, as it would a lost connection.
 */
import { randomUUID } from 'node:crypto'
import { Connection } from 'rabbitmq-client'
import t from 'tap'
import { ENVELOPE_VERSION } from '../../src/contracts/envelopes.js'
import { silentLogger } from '../../src/log.js'
import { startWorker } from '../../src/worker/worker.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { testConfig, waitUntil } from '../helpers/system.js'

const FN = 'chat_persist_batch(text[], uuid[], text[], uuid[], text[], text[])'

t.test('stopped during a database outage: the next worker stores the held sends in send order', async (t) => {
  const env = { amqpUrl: (await createVhost(t)).url, databaseUrl: await createDatabase(t) }
  const sql = sqlClient(t, env.databaseUrl)
  const small = { WORKER_BATCH_MAX: '5', WORKER_PREFETCH: '50', WORKER_BATCH_WAIT_MS: '5', DB_TIMEOUT_MS: '2000', LOG_LEVEL: 'silent' }
  const start = () => {
    const w = startWorker({ config: testConfig('worker', env, small), log: silentLogger, defaultMetrics: false })
    t.teardown(() => w.close())
    return w
  }
  const active = start()
  await waitUntil(() => active.status().ready, 15_000, 'first worker ready')
  const standby = start()
  await waitUntil(() => standby.status().ready, 15_000, 'standby ready')

  const conn = new Connection(env.amqpUrl)
  t.teardown(() => conn.close())
  const pub = conn.createPublisher({ confirm: true })
  t.teardown(() => pub.close())

  await sql.unsafe(`alter function ${FN} rename to chat_persist_batch_away`)
  let renamed = true
  t.teardown(async () => { if (renamed) await sql.unsafe('alter function chat_persist_batch_away(text[], uuid[], text[], uuid[], text[], text[]) rename to chat_persist_batch') })
  for (let i = 0; i < 10; i++) {
    await pub.send({ exchange: 'chat.incoming', routingKey: 'message.send', durable: true, contentType: 'application/json' },
      { v: ENVELOPE_VERSION, senderId: 'alice', toUserId: 'bob', clientMsgId: randomUUID(), content: `m${i}` })
  }
  // One batch failing and retrying, the rest waiting behind it.
  await waitUntil(() => active.status().inFlight >= 6, 10_000, 'the first worker holds a failing batch and more')
  const stopping = active.close()
  // The database comes back while the first worker stops: whatever it still tries may succeed.
  await sql.unsafe('alter function chat_persist_batch_away(text[], uuid[], text[], uuid[], text[], text[]) rename to chat_persist_batch')
  renamed = false
  await stopping

  await waitUntil(async () => (await sql`select count(*)::int as n from messages`)[0]!.n === 10, 20_000, 'all ten stored')
  const rows = await sql<Array<{ seq: number, content: string }>>`select seq::int, content from messages order by seq`
  t.same(rows.map((r) => r.content), Array.from({ length: 10 }, (_, i) => `m${i}`), 'seq follows the order alice sent in')
  const { messageCount } = await conn.queueDeclare({ queue: 'chat.dead-letter', passive: true })
  t.equal(messageCount, 0, 'nothing dead-lettered')
})
