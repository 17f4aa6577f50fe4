/**
 * A gateway falls so far behind that its queue fills (GATEWAY_QUEUE_MAX_LENGTH) and the
 * broker drops the oldest deliveries, here a `joined` notice among them. The gateway
 * learns of the drops (they are dead-lettered to its drops queue), re-reads its users'
 * channels, announces the channel it never heard of and tells its sockets to catch up.
 * The proxy stalls what the broker sends the gateway: a consumer too slow to keep up.
 */
import { Connection } from 'rabbitmq-client'
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { AMQP_PORT, createDatabase, createVhost } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
await startTestWorker(t, { amqpUrl, databaseUrl })
const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
const slow = await startTestGateway(t, { amqpUrl: viaProxy(amqpUrl, proxy), databaseUrl }, { GATEWAY_QUEUE_MAX_LENGTH: '200' })
const other = await startTestGateway(t, { amqpUrl, databaseUrl })

const broker = new Connection({ url: amqpUrl })
broker.on('error', () => {})
const publisher = broker.createPublisher({ confirm: true })
t.teardown(async () => {
  await publisher.close()
  await broker.close()
})

/** Typing deliveries for a user nobody here is connected as, padded: they only fill the queue. */
async function flood (count: number): Promise<void> {
  const body = { t: 'typing', kind: 'direct', channelId: 'flood', userId: 'flood', peerId: 'nobody', pad: 'x'.repeat(4000) }
  for (let i = 0; i < count; i += 250) {
    await Promise.all(Array.from({ length: 250 }, () => publisher.send({ exchange: 'chat.outgoing', routingKey: 'user:alice' }, body)))
  }
}

t.test('dropped deliveries: the gateway re-reads memberships and tells its sockets to catch up', async (t) => {
  const alice = await connectUser(t, slow.url, 'alice')
  const carol = await connectUser(t, other.url, 'carol')

  proxy.stall(true)
  // Enough to fill the TCP buffers between broker and gateway, so what follows waits in the queue.
  await flood(5000)
  const { channelId } = await carol.request<{ channelId: string }>('channel:create', { name: 'while behind', memberIds: ['alice'] })
  await carol.waitFor('channel:joined')
  // The joined notice for alice is now in her gateway's queue; push it out of the cap.
  await flood(2000)
  proxy.stall(false)
  const unstalledAt = performance.now()

  const joined = await alice.waitFor<{ channel: { id: string } }>('channel:joined', (j) => j.channel.id === channelId, 20_000)
  t.equal(joined.channel.id, channelId, 'the channel whose notice was dropped is announced after all')
  // The gateway re-reads a second after the last drop; a notice that had survived would
  // have come with the backlog at once.
  t.ok(performance.now() - unstalledAt >= 800, 'announced by the re-read, not by the notice')
  const resync = await alice.waitFor<{ reason: string }>('session:resync', undefined, 20_000)
  t.equal(resync.reason, 'DELIVERIES_DROPPED')
  const metrics = parsePrometheus(await (await fetch(`${slow.url}/metrics`)).text())
  t.ok((sampleValue(metrics.samples, 'chat_gateway_deliveries_dropped_total') ?? 0) > 0, 'the drops are counted')

  // And the channel works: bound on the slow gateway, live delivery reaches alice.
  await waitUntil(() => slow.app.bindings.isBound(`channel:${channelId}`), 10_000, 'channel bound')
  t.equal((await carol.send({ channelId }, 'after the drops')).ok, true)
  await alice.waitFor<Message>('message:new', (m) => m.content === 'after the drops', 10_000)
  t.equal((await alice.send({ channelId }, 'from alice')).ok, true, 'alice may send to it')
})
