/**
 * The broker connection of the SDK's gateway is cut and held down: the socket stays
 * connected, every delivery routed meanwhile is dropped by the broker, and the SDK
 * must still hand the application every message once, in order. The gateway runs
 * as its own RabbitMQ user so that only its connections can be refused.
 */
import { randomBytes } from 'node:crypto'
import t from 'tap'
import type { Message } from '../../src/client/index.js'
import { connectUser, type TestClient } from '../helpers/client.js'
import { AMQP_HOST, closeConnections, createDatabase, createVhost, rabbitmqctl, uniqueName } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'
import { assertExactlyOnceInOrder, sdkUser } from './sdk.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }

const brokerUser = uniqueName('gw')
const password = randomBytes(12).toString('hex')
await rabbitmqctl('add_user', brokerUser, password)
t.teardown(async () => { await rabbitmqctl('delete_user', brokerUser) })
const allow = () => rabbitmqctl('set_permissions', '-p', vhost, brokerUser, '.*', '.*', '.*')
await allow()

await startTestWorker(t, env)
const gwA = await startTestGateway(t, env)
const gwB = await startTestGateway(t, { ...env, amqpUrl: `amqp://${brokerUser}:${password}@${AMQP_HOST}/${encodeURIComponent(vhost)}` }, { SERVER_ID: uniqueName('cut') })

const historyOf = async (member: TestClient, query: { channelId: string } | { withUserId: string }) =>
  (await member.request<{ ok: true, messages: Message[] }>('history:fetch', { ...query, afterSeq: 0, limit: 500 })).messages

t.test('messages sent while its gateway had no broker connection all reach the SDK, once and in order', async (t) => {
  const ann = await connectUser(t, gwA.url, 'bc-ann')
  const { channelId } = await ann.request<{ channelId: string }>('channel:create', { name: 'cut', memberIds: ['bc-bob'] })
  await ann.send({ toUserId: 'bc-bob' }, 'direct before')
  await ann.send({ channelId }, 'before')
  const bob = await sdkUser(t, gwB.url, 'bc-bob', { backlog: 100 })
  const direct = () => bob.received.filter((m) => m.kind === 'direct')
  await bob.waitForCount(channelId, 1)
  await waitUntil(() => direct().length === 1, 20_000)

  // Cut: refuse the gateway's user, then close its connections; it cannot come back yet.
  await rabbitmqctl('clear_permissions', '-p', vhost, brokerUser)
  t.ok(await closeConnections(vhost, gwB.config.SERVER_ID) >= 1, 'closed the gateway\'s broker connections')
  await waitUntil(() => !gwB.app.gatewayReady(), 15_000, 'gateway B unready')
  for (let i = 1; i <= 8; i++) t.equal((await ann.send({ channelId }, `cut ${i}`)).ok, true)
  for (let i = 1; i <= 4; i++) t.equal((await ann.send({ toUserId: 'bc-bob' }, `direct cut ${i}`)).ok, true)
  await ann.waitFor<Message>('message:new', (m) => m.content === 'direct cut 4', 30_000)
  t.equal(bob.of(channelId).length, 1, 'nothing reached bob live during the outage')
  t.equal(bob.client.state, 'ready', 'the socket stayed connected')

  await allow()
  await waitUntil(() => gwB.app.gatewayReady(), 60_000, 'gateway B re-bound')
  await bob.waitForCount(channelId, 9, 30_000)
  await waitUntil(() => direct().length === 5, 30_000, 'direct messages recovered')
  assertExactlyOnceInOrder(t, bob.of(channelId), await historyOf(ann, { channelId }), 'group')
  assertExactlyOnceInOrder(t, direct(), await historyOf(ann, { withUserId: 'bc-bob' }), 'direct')
  t.ok(bob.client.stats().fromHistory >= 12, 'the missed ones came from history')
  t.equal(bob.client.stats().sessions, 1, 'without a reconnect: the gateway asked for a resync')

  await ann.send({ channelId }, 'after')
  await bob.waitForCount(channelId, 10, 30_000)
  t.equal(new Set(bob.received.map((m) => m.id)).size, bob.received.length, 'nothing twice')
})
