/**
 * The worker loses PostgreSQL (a TCP proxy between them is cut and refuses for a
 * while): it holds the messages unacked and retries with backoff, dead-letters
 * nothing, reports unready, and once the database is back stores everything exactly
 * once and delivers it.
 */
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { createDatabase, createVhost, listQueues, sqlClient } from '../helpers/services.js'
import { sleep, startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const sql = sqlClient(t, databaseUrl)
const proxy = await startProxy(t, { host: '127.0.0.1', port: 5432 })
const worker = await startTestWorker(t, { amqpUrl, databaseUrl: viaProxy(databaseUrl, proxy) }, { DB_TIMEOUT_MS: '2000' })
const gw = await startTestGateway(t, { amqpUrl, databaseUrl }, { RPC_TIMEOUT_MS: '2000' })

t.test('database outage under the worker', async (t) => {
  const ann = await connectUser(t, gw.url, 'ann')
  const ben = await connectUser(t, gw.url, 'ben')
  await ann.send({ toUserId: 'ben' }, 'before')
  await ben.waitFor<Message>('message:new', (m) => m.content === 'before')

  proxy.refuse(true)
  proxy.cut()
  const sent: string[] = []
  for (let i = 0; i < 20; i++) {
    const res = await ann.send({ toUserId: 'ben' }, `during ${i}`)
    t.equal(res.ok, true, 'the broker takes sends while the database is down')
    sent.push(`during ${i}`)
  }
  await waitUntil(() => !worker.status().ready, 15_000, 'worker unready')
  t.equal(worker.status().database, 'down')
  const history = await ben.request<{ ok: boolean, error?: { code: string } }>('history:fetch', { withUserId: 'ann' })
  t.match(history, { ok: false, error: { code: 'UNAVAILABLE' } }, 'reads say UNAVAILABLE, not INTERNAL')
  await sleep(2000)
  t.equal(ben.messages().filter((m) => m.content.startsWith('during')).length, 0, 'nothing delivered before it is stored')
  const retried = await worker.metrics.registry.getSingleMetricAsString('chat_worker_messages_retried_total')
  t.match(retried, /chat_worker_messages_retried_total\{[^}]*\} [1-9]/, 'the batch was retried')

  proxy.refuse(false)
  await waitUntil(() => worker.status().ready, 30_000, 'worker ready again')
  await waitUntil(() => ben.messages().filter((m) => m.content.startsWith('during')).length === sent.length, 30_000, 'all delivered')
  const rows = await sql<Array<{ content: string, seq: string }>>`select content, seq from messages where sender_id = 'ann' order by seq`
  t.same(rows.map((r) => r.content), ['before', ...sent], 'stored once each, in order')
  t.same(rows.map((r) => Number(r.seq)), rows.map((_, i) => i + 1), 'no seq gaps')
  await settleDelivery()
  t.equal(ben.messages().filter((m) => m.content.startsWith('during')).length, sent.length, 'delivered once each')
  const dead = (await listQueues(vhost)).find((q) => q.name === 'chat.dead-letter')
  t.equal(dead?.messages, 0, 'nothing dead-lettered for a transient failure')
})

async function settleDelivery (): Promise<void> { await sleep(500) }

t.test('a read-only database (a failover onto a standby) holds the messages instead of dead-lettering them', async (t) => {
  const ann = await connectUser(t, gw.url, 'ro-ann')
  const ben = await connectUser(t, gw.url, 'ro-ben')
  const db = (await sql<Array<{ db: string }>>`select current_database() as db`)[0]!.db
  const kickWorker = () => sql`select pg_terminate_backend(pid) from pg_stat_activity
    where datname = current_database() and pid <> pg_backend_pid() and application_name like 'chat-worker%'`
  await sql.unsafe(`alter database "${db}" set default_transaction_read_only = on`)
  t.teardown(() => sql.unsafe(`alter database "${db}" reset default_transaction_read_only`))
  await kickWorker()
  const sent: string[] = []
  for (let i = 0; i < 5; i++) {
    t.equal((await ann.send({ toUserId: 'ro-ben' }, `read-only ${i}`)).ok, true)
    sent.push(`read-only ${i}`)
  }
  await waitUntil(() => !worker.status().ready, 15_000, 'worker unready while it cannot write')
  await sleep(1500)
  t.equal(ben.messages().length, 0, 'nothing delivered before it is stored')

  await sql.unsafe(`alter database "${db}" reset default_transaction_read_only`)
  await kickWorker()
  await waitUntil(() => ben.messages().length === sent.length, 30_000, 'all delivered once writable again')
  const rows = await sql<Array<{ content: string }>>`select content from messages where sender_id = 'ro-ann' order by seq`
  t.same(rows.map((r) => r.content), sent, 'stored once each, in order')
  const dead = (await listQueues(vhost)).find((q) => q.name === 'chat.dead-letter')
  t.equal(dead?.messages, 0, 'nothing dead-lettered')
})
