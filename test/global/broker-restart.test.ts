/**
 * A full broker restart (rabbitmqctl stop_app / start_app). This stops RabbitMQ for
 * everyone, so test/global runs alone, after the other tests (npm test), and the
 * broker is always started again, whatever happens.
 */
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { createDatabase, createVhost, listBindings, rabbitmqctl, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const sql = sqlClient(t, databaseUrl)
const worker = await startTestWorker(t, { amqpUrl, databaseUrl })
const gw = await startTestGateway(t, { amqpUrl, databaseUrl }, { SEND_TIMEOUT_MS: '1500', RPC_TIMEOUT_MS: '1500' })

let stopped = false
const startBroker = async () => {
  if (!stopped) return
  await rabbitmqctl('start_app')
  await rabbitmqctl('await_startup')
  stopped = false
}
t.teardown(startBroker)

t.test('stop_app / start_app: no false ok, every binding back, nothing acked lost', async (t) => {
  const alice = await connectUser(t, gw.url, 'alice')
  const bob = await connectUser(t, gw.url, 'bob')
  const { channelId } = await bob.request<{ channelId: string }>('channel:create', { name: 'restart', memberIds: ['alice'] })
  await alice.waitFor('channel:joined')
  const ok1 = await bob.send({ channelId }, 'before')
  t.equal(ok1.ok, true)
  await alice.waitFor<Message>('message:new', (m) => m.content === 'before')
  const keysBefore = (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === gw.app.bindings.route).map((b) => b.routingKey).sort()

  stopped = true
  await rabbitmqctl('stop_app')
  try {
    await waitUntil(async () => (await fetch(`${gw.url}/ready`)).status === 503, 10_000, 'gateway unready')
    await waitUntil(() => !worker.status().ready, 10_000, 'worker unready')
    const during = await Promise.all([0, 1, 2].map((i) => alice.send({ channelId }, `during ${i}`)))
    t.ok(during.every((r) => !r.ok && r.error?.code === 'UNAVAILABLE'), 'sends while the broker is down are refused with UNAVAILABLE')
  } finally {
    await startBroker()
  }

  await waitUntil(async () => (await fetch(`${gw.url}/ready`)).status === 200, 60_000, 'gateway ready again')
  await waitUntil(() => worker.status().ready, 60_000, 'worker ready again')
  const keysAfter = (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === gw.app.bindings.route).map((b) => b.routingKey).sort()
  t.same(keysAfter, keysBefore, 'every binding is back')

  const res = await alice.send({ channelId }, 'after')
  t.equal(res.ok, true)
  await bob.waitFor<Message>('message:new', (m) => m.content === 'after', 15_000)
  const rows = await sql<Array<{ content: string }>>`select content from messages where channel_id = ${channelId} order by seq`
  t.same(rows.map((r) => r.content), ['before', 'after'], 'stored exactly what was acked: a refused send is not held and published later')
})
