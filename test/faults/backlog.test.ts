/**
 * Workers fall behind (here: stopped) and the worker queue fills: past
 * SEND_BACKLOG_MAX the gateway answers sends UNAVAILABLE at once and publishes
 * nothing; once a worker drains the queue below 80 % of the limit, sends are taken
 * again, and a refused send retried with its clientMsgId is stored once.
 */
import { randomUUID } from 'node:crypto'
import { Connection } from 'rabbitmq-client'
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { BacklogWatch } from '../../src/broker/backlog.js'
import { brokerNames, queueSpecs } from '../../src/broker/topology.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const MAX = 10
const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const sql = sqlClient(t, databaseUrl)
const first = await startTestWorker(t, { amqpUrl, databaseUrl })
const gw = await startTestGateway(t, { amqpUrl, databaseUrl }, { SEND_BACKLOG_MAX: String(MAX), SEND_BACKLOG_CHECK_MS: '50' })

// rabbitmqctl's message counts of a quorum queue lag by seconds; a passive declare is exact.
const probe = new Connection(amqpUrl)
t.teardown(() => probe.close())
const workerQueueDepth = async () => (await probe.queueDeclare({ queue: 'chat.worker', passive: true })).messageCount
const metric = async (name: string, labels: Record<string, string> = {}) => {
  const res = await gw.app.inject({ method: 'GET', url: '/metrics' })
  return sampleValue(parsePrometheus(res.body).samples, name, labels)
}

t.test('sends are refused while the worker queue is over the limit, and taken again once it drains', async (t) => {
  const ann = await connectUser(t, gw.url, 'ann')
  const ben = await connectUser(t, gw.url, 'ben')
  await waitUntil(async () => await metric('chat_gateway_worker_backlog_messages') === 0, 5000, 'the gateway reads an empty queue')

  await first.close()
  const accepted: string[] = []
  for (let i = 0; i < MAX; i++) {
    const res = await ann.send({ toUserId: 'ben' }, `queued ${i}`)
    t.equal(res.ok, true, `send ${i} is taken below the limit`)
    accepted.push(`queued ${i}`)
  }
  await waitUntil(() => gw.app.broker.backlog.over(), 5000, 'the gateway sees the backlog')

  const refusedId = randomUUID()
  const refused = await ann.request<{ ok: boolean, error?: { code: string, message: string } }>('message:send', { toUserId: 'ben', content: 'refused', clientMsgId: refusedId })
  t.match(refused, { ok: false, error: { code: 'UNAVAILABLE', message: /10 messages are waiting to be stored/ } }, 'refused at once with a clear reason')
  t.equal(await workerQueueDepth(), MAX, 'a refused send is not published')
  t.equal(await metric('chat_gateway_sends_refused_total', { reason: 'backlog' }), 1, 'counted by reason')
  t.equal(await metric('chat_gateway_worker_backlog_messages'), MAX, 'the depth is exported')
  t.equal(gw.app.gatewayReady(), true, 'a deep worker queue does not make the gateway unready: other gateways share it')

  await startTestWorker(t, { amqpUrl, databaseUrl })
  await waitUntil(() => !gw.app.broker.backlog.over(), 15_000, 'the gateway takes sends again')
  const retried = await ann.send({ toUserId: 'ben' }, 'refused', refusedId)
  t.equal(retried.ok, true, 'the refused send, retried with its clientMsgId, is taken')

  const expected = [...accepted, 'refused']
  await waitUntil(() => ben.messages().length === expected.length, 15_000, 'every taken send delivered')
  t.same(ben.messages().map((m: Message) => m.content), expected, 'delivered once each, in order')
  const rows = await sql<Array<{ content: string }>>`select content from messages where sender_id = 'ann' order by seq`
  t.same(rows.map((r) => r.content), expected, 'stored once each, in order; nothing refused was stored')
})

t.test('SEND_BACKLOG_MAX=0 never refuses, and still reads the depth', async (t) => {
  // No worker runs any more (the last test's stopped with it): a send stays queued.
  const off = await startTestGateway(t, { amqpUrl, databaseUrl }, { SEND_BACKLOG_MAX: '0', SEND_BACKLOG_CHECK_MS: '50' })
  const pub = probe.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  await pub.send({ exchange: 'chat.incoming', routingKey: 'message.send', durable: true }, { v: 1, senderId: 'ann', toUserId: 'ben', clientMsgId: randomUUID(), content: 'kept' })
  await waitUntil(async () => { await off.app.broker.backlog.read(); return off.app.broker.backlog.depth() === 1 }, 5000, 'the depth is read')
  t.equal(off.app.broker.backlog.unconsumed(), 1, 'and the shard no worker consumes is seen')
  t.equal(off.app.broker.backlog.over(), false, 'a queue over any limit does not refuse')
})

t.test('closing the watch during a read leaves no channel open: the connection closes at once', async (t) => {
  for (const moment of ['before the channel opens', 'during a declare'] as const) {
    const conn = new Connection(amqpUrl)
    const declaration = { ...queueSpecs(brokerNames('chat'), 1).sends[0]!.options, queue: 'chat.worker' }
    const watch = new BacklogWatch({ connection: conn, queues: [declaration, declaration], max: 10, intervalMs: 60_000 })
    // With the channel open, a read sends its first declare at once: close() lands during it.
    if (moment === 'during a declare') await watch.read()
    const reading = watch.read()
    await watch.close()
    await reading
    const closed = await Promise.race([conn.close().then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 3000))])
    t.equal(closed, true, `closed ${moment}`)
  }
})
