/**
 * The whole path with real processes: two (three) gateways started by the fastify
 * CLI, one worker, RabbitMQ and PostgreSQL. Clients on different gateways.
 */
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser, settle, type TestClient } from '../helpers/client.js'
import { createDatabase, createVhost, listBindings, sqlClient } from '../helpers/services.js'
import { spawnGateway, spawnWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)

await spawnWorker(t, env)
const [g1, g2, g3] = await Promise.all([spawnGateway(t, env), spawnGateway(t, env), spawnGateway(t, env)])
const routeOf = async (g: { url: string }) => ((await (await fetch(`${g.url}/ready`)).json()) as { route: string }).route

const alice1 = await connectUser(t, g1.url, 'alice')
const alice2 = await connectUser(t, g2.url, 'alice')
const bob = await connectUser(t, g2.url, 'bob')
const dave = await connectUser(t, g2.url, 'dave')
const carol = await connectUser(t, g3.url, 'carol')

const copies = (c: TestClient, id: string) => c.messages().filter((m) => m.id === id).length

t.test('a direct message reaches the recipient on another gateway and every socket of the sender, once each', async (t) => {
  const ack = await alice1.send({ toUserId: 'bob' }, 'hello bob')
  t.equal(ack.ok, true)
  const got = await bob.waitFor<Message>('message:new', (m) => m.content === 'hello bob')
  t.match(got, { kind: 'direct', seq: 1, senderId: 'alice', toUserId: 'bob', content: 'hello bob', clientMsgId: ack.clientMsgId })
  t.type(got.id, 'string')
  await alice2.waitFor<Message>('message:new', (m) => m.id === got.id)
  await alice1.waitFor<Message>('message:new', (m) => m.id === got.id)
  await settle(500)
  t.same([bob, alice1, alice2, dave, carol].map((c) => copies(c, got.id)), [1, 1, 1, 0, 0], 'once per socket of a member, never elsewhere')
  const rows = await sql`select count(*)::int as n from messages where client_msg_id = ${ack.clientMsgId!}`
  t.equal(rows[0]?.n, 1, 'persisted once')
})

t.test('a group message reaches every socket of every member across gateways exactly once', async (t) => {
  const created = await alice1.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'team', memberIds: ['bob', 'dave'] })
  t.equal(created.ok, true)
  const channelId = created.channelId
  for (const c of [alice1, alice2, bob, dave]) await c.waitFor('channel:joined', (j: any) => j.channel.id === channelId)

  const ack = await bob.send({ channelId }, 'hello team')
  t.equal(ack.ok, true)
  let id = ''
  for (const c of [alice1, alice2, bob, dave]) id = (await c.waitFor<Message>('message:new', (m) => m.content === 'hello team')).id
  await settle(500)
  t.same([alice1, alice2, bob, dave, carol].map((c) => copies(c, id)), [1, 1, 1, 1, 0])
  t.notOk(carol.events.some((e) => e.event === 'channel:joined'), 'a non-member hears nothing of the channel')

  const bindings = await listBindings(vhost, 'chat.outgoing')
  const keysOf = async (g: { url: string }) => {
    const route = await routeOf(g)
    return bindings.filter((b) => b.destination === route).map((b) => b.routingKey).sort()
  }
  t.same(await keysOf(g1), [`channel:${channelId}`, 'user:alice'])
  t.same(await keysOf(g2), [`channel:${channelId}`, 'user:alice', 'user:bob', 'user:dave'], 'one channel binding for three local members')
  t.same(await keysOf(g3), ['user:carol'], 'a gateway with no member holds no binding for the channel')

  const metrics = await (await fetch(`${g3.url}/metrics`)).text()
  t.notMatch(metrics, /chat_gateway_deliveries_total\{type="message"/, 'and received none of its messages')
  t.match(metrics, /chat_gateway_bound_keys\{kind="user"[^}]*\} 1/)
})

t.test('seq is per channel, gapless, in order for every member', async (t) => {
  const created = await bob.request<{ channelId: string }>('channel:create', { name: 'burst', memberIds: ['alice'] })
  await alice1.waitFor('channel:joined', (j: any) => j.channel.id === created.channelId)
  for (let i = 0; i < 20; i++) t.equal((await bob.send({ channelId: created.channelId }, `b${i}`)).ok, true)
  await waitUntil(() => alice1.messages().filter((m) => m.channelId === created.channelId).length === 20, 10_000)
  t.same(alice1.messages().filter((m) => m.channelId === created.channelId).map((m) => m.seq), Array.from({ length: 20 }, (_, i) => i + 1))
})
