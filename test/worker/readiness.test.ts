/**
 * Readiness follows the write path: a database that answers `select 1` but refuses the
 * worker's batches (a read-only standby, a missing function or privilege) keeps the
 * worker unready until a batch goes through, instead of flapping back to ready on every
 * health ping.
 */
import { randomUUID } from 'node:crypto'
import { Connection } from 'rabbitmq-client'
import t from 'tap'
import { ENVELOPE_VERSION } from '../../src/contracts/envelopes.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { sleep, startTestWorker, waitUntil } from '../helpers/system.js'

const SIGNATURE = '(text[], uuid[], text[], uuid[], text[], text[])'

t.test('a failing write path keeps the worker unready across health pings, and it recovers', async (t) => {
  const env = { amqpUrl: (await createVhost(t)).url, databaseUrl: await createDatabase(t) }
  const sql = sqlClient(t, env.databaseUrl)
  const worker = await startTestWorker(t, env, { DB_TIMEOUT_MS: '2000' })
  const conn = new Connection(env.amqpUrl)
  t.teardown(() => conn.close())
  const pub = conn.createPublisher({ confirm: true })
  t.teardown(() => pub.close())

  await sql.unsafe(`alter function chat_persist_batch${SIGNATURE} rename to chat_persist_batch_away`)
  let away = true
  t.teardown(async () => { if (away) await sql.unsafe(`alter function chat_persist_batch_away${SIGNATURE} rename to chat_persist_batch`) })
  await pub.send({ exchange: 'chat.incoming', routingKey: 'message.send', durable: true, contentType: 'application/json' },
    { v: ENVELOPE_VERSION, senderId: 'ann', toUserId: 'ben', clientMsgId: randomUUID(), content: 'held' })
  await waitUntil(() => !worker.status().ready, 10_000, 'unready once a batch fails')
  // The health ping runs every 5 s and its `select 1` succeeds throughout.
  const samples: boolean[] = []
  for (let i = 0; i < 28; i++) {
    samples.push(worker.status().ready)
    await sleep(250)
  }
  t.notOk(samples.some(Boolean), 'never ready while batches fail, pings notwithstanding')
  await sql.unsafe(`alter function chat_persist_batch_away${SIGNATURE} rename to chat_persist_batch`)
  away = false
  await waitUntil(() => worker.status().ready, 15_000, 'ready again once the batch is stored')
  const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from messages`
  t.equal(n, 1, 'the held message is stored')
})
