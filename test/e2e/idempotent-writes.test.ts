/**
 * Creates and leaves carry a requestId (the client's, or one the gateway makes): a retry
 * with the same id, on any gateway, does nothing new and answers what the first did. That
 * is what makes retrying after UNAVAILABLE or a lost answer safe
 * (test/worker/rpc-redelivery.test.ts covers the broker handing a request back).
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { connectUser } from '../helpers/client.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, env)
const gwA = await startTestGateway(t, env)
const gwB = await startTestGateway(t, env)
const channelsBy = async (userId: string) => (await sql<Array<{ id: string }>>`select id from channels where created_by = ${userId}`).map((r) => r.id)

t.test('a create retried with its requestId, on another gateway, makes one channel and answers it again', async (t) => {
  const iris = await connectUser(t, gwA.url, 'iris')
  const iris2 = await connectUser(t, gwB.url, 'iris')
  const jude = await connectUser(t, gwB.url, 'jude')
  const requestId = randomUUID()
  const first = await iris.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'book club', memberIds: ['jude'], requestId })
  const again = await iris2.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'book club', memberIds: ['jude'], requestId: requestId.toUpperCase() })
  t.equal(first.ok, true, 'created')
  t.same(again, first, 'the retry answers the same channel (the id compared as a uuid)')
  t.same(await channelsBy('iris'), [first.channelId], 'one channel was created')
  await jude.waitFor('channel:joined', (e: { channel: { id: string } }) => e.channel.id === first.channelId)
  // The creator can send to it from the gateway that answered the retry.
  t.match(await iris2.send({ channelId: first.channelId }, 'hello'), { ok: true })
  t.match(await iris.request('channel:create', { name: 'another name', memberIds: ['jude'], requestId }), { ok: false, error: { code: 'VALIDATION', message: /requestId was already used/ } }, 'the id sent with another request is refused')
  t.same(await channelsBy('iris'), [first.channelId], 'and it created nothing')
})

t.test('a leave retried with its requestId answers ok again; an outsider\'s leave is still refused', async (t) => {
  const kai = await connectUser(t, gwA.url, 'kai')
  const lea = await connectUser(t, gwA.url, 'lea')
  const mal = await connectUser(t, gwB.url, 'mal')
  const { channelId } = await kai.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'temp', memberIds: ['lea'] })
  await lea.waitFor('channel:joined', (e: { channel: { id: string } }) => e.channel.id === channelId)
  const requestId = randomUUID()
  t.match(await lea.request('channel:leave', { channelId, requestId }), { ok: true }, 'left')
  t.match(await lea.request('channel:leave', { channelId, requestId }), { ok: true }, 'the retry is answered ok')
  t.match(await lea.request('channel:leave', { channelId, requestId: randomUUID() }), { ok: false, error: { code: 'FORBIDDEN' } }, 'a new leave of a channel left is refused')
  t.match(await lea.send({ channelId }, 'still here?'), { ok: false, error: { code: 'FORBIDDEN' } }, 'lea is no longer a member on her gateway')
  t.match(await mal.request('channel:leave', { channelId, requestId: randomUUID() }), { ok: false, error: { code: 'FORBIDDEN' } }, 'an outsider with a requestId is refused by the worker')
  t.match(await mal.request('channel:leave', { channelId, requestId }), { ok: false, error: { code: 'FORBIDDEN' } }, 'another user\'s requestId is no key of theirs')
  const members = await sql<Array<{ user_id: string }>>`select user_id from members where channel_id = ${channelId} order by 1`
  t.same(members.map((m) => m.user_id), ['kai'], 'only kai is left')
})

t.test('a create retried after its creator left answers the channel without making them a member again', async (t) => {
  const nia = await connectUser(t, gwA.url, 'nia')
  const otto = await connectUser(t, gwA.url, 'otto')
  const requestId = randomUUID()
  const { channelId } = await nia.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'short', memberIds: ['otto'], requestId })
  await otto.waitFor('channel:joined', (e: { channel: { id: string } }) => e.channel.id === channelId)
  t.match(await nia.request('channel:leave', { channelId }), { ok: true })
  const nia2 = await connectUser(t, gwB.url, 'nia')
  t.match(await nia2.request('channel:create', { name: 'short', memberIds: ['otto'], requestId }), { ok: true, channelId })
  t.match(await nia2.send({ channelId }, 'back?'), { ok: false, error: { code: 'FORBIDDEN' } }, 'the retry did not bind the channel for nia')
  t.notOk((await nia2.request<{ channels: Array<{ id: string }> }>('channels:list', {})).channels?.some((c) => c.id === channelId), 'nor list it')
})

t.test('the SDK sends a requestId and keeps it across attempts: the same id from two clients answers one channel', async (t) => {
  const { sdkUser } = await import('../client/sdk.js')
  const pia = await sdkUser(t, gwA.url, 'pia')
  const pia2 = await sdkUser(t, gwB.url, 'pia')
  await Promise.all([pia.waitForSessions(1), pia2.waitForSessions(1)])
  const requestId = randomUUID()
  const [a, b] = await Promise.all([pia.client.createChannel('twice', [], { requestId }), pia2.client.createChannel('twice', [], { requestId })])
  t.equal(a, b, 'both calls resolve the same channel')
  t.same(await channelsBy('pia'), [a], 'one channel was created')
  await pia.client.leaveChannel(a)
  t.notOk((await pia.client.listChannels()).some((c) => c.id === a), 'left')
})
