/**
 * A gateway killed under the SDK: two gateways and a worker as separate processes
 * (as `npm start` and `npm run worker` run them). The SDK knows both URLs; SIGKILL
 * the one it is on, and every message sent meanwhile still reaches the application
 * once, in seq order, and its own send made during the outage is stored once.
 */
import t from 'tap'
import type { Message } from '../../src/client/index.js'
import { connectUser, type TestClient } from '../helpers/client.js'
import { createDatabase, createVhost } from '../helpers/services.js'
import { spawnGateway, spawnWorker, waitUntil } from '../helpers/system.js'
import { assertExactlyOnceInOrder, sdkUser } from './sdk.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
await spawnWorker(t, env)
const [g1, g2] = await Promise.all([spawnGateway(t, env), spawnGateway(t, env)])

const historyOf = async (member: TestClient, query: { channelId: string } | { withUserId: string }) =>
  (await member.request<{ ok: true, messages: Message[] }>('history:fetch', { ...query, afterSeq: 0, limit: 500 })).messages

t.test('SIGKILL of the gateway the SDK is on: it fails over and recovers every missed message', async (t) => {
  const ann = await connectUser(t, g2.url, 'fo-ann', { timeoutMs: 20_000 })
  const { channelId } = await ann.request<{ channelId: string }>('channel:create', { name: 'failover', memberIds: ['fo-bob'] })
  t.equal((await ann.send({ channelId }, 'before')).ok, true)
  t.equal((await ann.send({ toUserId: 'fo-bob' }, 'direct before')).ok, true)

  const bob = await sdkUser(t, [g1.url, g2.url], 'fo-bob', { backlog: 100 })
  t.equal(bob.client.url, g1.url, 'starts on the first URL')
  const direct = () => bob.received.filter((m) => m.kind === 'direct')
  await bob.waitForCount(channelId, 1)
  await waitUntil(() => direct().length === 1, 20_000)

  g1.child.kill('SIGKILL')
  // The SDK's own send while its gateway is gone: retried until the other one acks it.
  const bobsSend = bob.client.send({ channelId }, 'bob during the outage')
  for (let i = 1; i <= 10; i++) t.equal((await ann.send({ channelId }, `outage ${i}`)).ok, true)
  for (let i = 1; i <= 5; i++) t.equal((await ann.send({ toUserId: 'fo-bob' }, `direct outage ${i}`)).ok, true)
  const { clientMsgId } = await bobsSend
  await bob.waitForSessions(2, 60_000)
  t.equal(bob.client.url, g2.url, 'reconnected to the surviving gateway')

  await bob.waitForCount(channelId, 12, 60_000)
  await waitUntil(() => direct().length === 6, 60_000, 'direct messages recovered')
  const storedGroup = await historyOf(ann, { channelId })
  t.equal(storedGroup.filter((m) => m.clientMsgId === clientMsgId).length, 1, "bob's retried send is stored once")
  assertExactlyOnceInOrder(t, bob.of(channelId), storedGroup, 'group')
  assertExactlyOnceInOrder(t, direct(), await historyOf(ann, { withUserId: 'fo-bob' }), 'direct')

  // And live delivery goes on through the new gateway.
  await ann.send({ channelId }, 'after')
  await bob.waitForCount(channelId, 13, 30_000)
  t.equal(bob.of(channelId).at(-1)?.content, 'after')
  t.equal(new Set(bob.received.map((m) => m.id)).size, bob.received.length, 'nothing twice')
})
