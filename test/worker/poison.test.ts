/**
 * Messages the worker can never process are parked in the dead-letter queue with a
 * reason, counted, and never block the messages behind them.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { Connection } from 'rabbitmq-client'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { startTestWorker, waitUntil } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const sql = sqlClient(t, databaseUrl)
const worker = await startTestWorker(t, { amqpUrl, databaseUrl })

const rabbit = new Connection(amqpUrl)
t.teardown(() => rabbit.close())
const pub = rabbit.createPublisher({ confirm: true })
t.teardown(() => pub.close())
const send = (body: unknown, contentType = 'application/json') =>
  pub.send({ exchange: 'chat.incoming', routingKey: 'message.send', durable: true, contentType }, typeof body === 'string' ? Buffer.from(body) : body)

t.test('malformed, unknown and invalid sends are dead-lettered with a reason; good ones behind them are stored', async (t) => {
  const good = randomUUID()
  await send('{"v":1,"senderId":', 'application/json') // truncated JSON
  await send('plain text', 'text/plain')
  await send({ v: 2, senderId: 'a', clientMsgId: randomUUID(), content: 'future', toUserId: 'b' })
  await send({ v: 1, senderId: 'a', clientMsgId: 'not-a-uuid', content: 'x', toUserId: 'b' })
  await send({ v: 1, senderId: 'a', clientMsgId: randomUUID(), content: 'both', toUserId: 'b', channelId: randomUUID() })
  await send({ v: 1, senderId: 'a', clientMsgId: randomUUID(), content: 'nul \u0000 byte', toUserId: 'b' })
  await send({ v: 1, senderId: 'a', clientMsgId: randomUUID(), content: 'x'.repeat(5000), toUserId: 'b' })
  await send({ v: 1, senderId: 'a', clientMsgId: good, content: 'fine', toUserId: 'b' })

  const dead: Array<{ reason: string, body: string }> = []
  const dlq = rabbit.createConsumer({ queue: 'chat.dead-letter', queueOptions: { passive: true } }, (msg) => {
    dead.push({ reason: String(msg.headers?.['x-chat-reason']), body: Buffer.isBuffer(msg.body) ? msg.body.toString() : JSON.stringify(msg.body) })
  })
  t.teardown(() => dlq.close())
  await waitUntil(() => dead.length >= 7, 10_000, 'seven dead letters')
  t.equal(dead.length, 7)
  t.match(dead.map((d) => d.reason), [
    /not JSON/, /not JSON/, /invalid send command: v/, /clientMsgId/, /exactly one of toUserId and channelId/, /content/, /longer than 4000/
  ])
  await waitUntil(async () => (await sql`select 1 from messages where client_msg_id = ${good}`).length === 1, 10_000, 'good message stored')
  const metrics = await worker.metrics.registry.getSingleMetricAsString('chat_worker_messages_dead_lettered_total')
  t.match(metrics, /chat_worker_messages_dead_lettered_total\{[^}]*\} 7/)
  const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from messages`
  t.equal(n, 1, 'nothing else was stored')
})

t.test('a message the database refuses for good is isolated and dead-lettered alone', async (t) => {
  // A rule the worker does not know about: the database refuses these rows (SQLSTATE 23514).
  await sql`alter table messages add constraint no_forbidden_word check (content <> 'forbidden word')`
  t.teardown(async () => { await sql`alter table messages drop constraint no_forbidden_word` })
  const before = Number(/ (\d+)$/m.exec(await worker.metrics.registry.getSingleMetricAsString('chat_worker_messages_dead_lettered_total'))?.[1] ?? 0)
  const ids = Array.from({ length: 6 }, () => randomUUID())
  await Promise.all(ids.map((clientMsgId, i) => send({ v: 1, senderId: 'z', clientMsgId, content: i === 3 ? 'forbidden word' : `ok ${i}`, toUserId: 'y' })))
  await waitUntil(async () => (await sql`select 1 from messages where client_msg_id = any(${ids})`).length === 5, 15_000, 'the five good ones stored')
  await waitUntil(async () => Number(/ (\d+)$/m.exec(await worker.metrics.registry.getSingleMetricAsString('chat_worker_messages_dead_lettered_total'))?.[1] ?? 0) === before + 1, 10_000, 'one dead letter')
  const stored = await sql`select client_msg_id from messages where client_msg_id = any(${ids})`
  t.notOk(stored.some((r) => r.client_msg_id === ids[3]), 'the refused one is not stored')
  t.equal(stored.length, 5, 'its batch mates are')
})

t.test('the sender of a dead-lettered send is told: message:rejected reaches its gateways', async (t) => {
  const heard: Array<{ t: string, clientMsgId?: string, error?: { code: string } }> = []
  const listener = rabbit.createConsumer({
    queue: '',
    queueOptions: { exclusive: true },
    queueBindings: [{ exchange: 'chat.outgoing', routingKey: 'user:zed' }]
  }, (msg) => { heard.push(msg.body as { t: string }) })
  t.teardown(() => listener.close())
  await new Promise<void>((resolve) => listener.once('ready', () => resolve()))
  const tooLong = randomUUID()
  await send({ v: 1, senderId: 'zed', clientMsgId: tooLong, content: 'x'.repeat(5000), toUserId: 'b' })
  await send({ v: 1, senderId: 'zed', clientMsgId: 'not-a-uuid', content: 'x'.repeat(5000), toUserId: 'b' })
  await waitUntil(() => heard.length >= 1, 10_000, 'a rejection for zed')
  t.match(heard[0], { t: 'rejected', userId: 'zed', clientMsgId: tooLong, error: { code: 'VALIDATION' } }, 'says which message and why')
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.equal(heard.length, 1, 'nothing for a body without a usable clientMsgId')
})
