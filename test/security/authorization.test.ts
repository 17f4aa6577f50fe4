/**
 * Authorization on two real gateways and a worker: a non-member cannot send to, read,
 * leave or type in a channel (group or direct), receives none of its traffic, and
 * cannot make its gateway bind a key of another user or channel; ids that look like
 * routing keys or room names (`channel:<id>`, `user:bob`, `#`, `*`, `c:<id>`…) stay in
 * their own namespace.
 */
import t from 'tap'
import { Connection } from 'rabbitmq-client'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser, settle, type TestClient } from '../helpers/client.js'
import { createDatabase, createVhost, listBindings, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, env)
// Members live on gateway A; gateway B starts with none of them.
const gwA = await startTestGateway(t, env)
const gwB = await startTestGateway(t, env)
type Gateway = typeof gwA

const keysOf = async (gw: Gateway) => {
  await waitUntil(() => gw.app.bindings.stats().pending === 0, 10_000, 'bind operations settled')
  return (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === gw.app.bindings.route).map((b) => b.routingKey).sort()
}
const count = async (query: Promise<Array<{ n: number }>>) => (await query)[0]?.n

const olga = await connectUser(t, gwA.url, 'olga')
const max = await connectUser(t, gwA.url, 'max')
const secret = (await olga.request<{ channelId: string }>('channel:create', { name: 'secret', memberIds: ['max'] })).channelId
await max.waitFor('channel:joined')
const psst = await olga.send({ toUserId: 'max' }, 'psst')
const direct = (await max.waitFor<Message>('message:new', (m) => m.clientMsgId === psst.clientMsgId)).channelId

t.test('a non-member cannot send to, read, leave or type in a group or direct channel, on any gateway', async (t) => {
  const outsiders = [await connectUser(t, gwB.url, 'mallory'), await connectUser(t, gwA.url, 'mallet')]
  for (const who of outsiders) {
    for (const [kind, channelId] of [['group', secret], ['direct', direct]] as const) {
      const where = `${who.userId} on gateway ${who === outsiders[0] ? 'B' : 'A'}, ${kind}`
      t.match(await who.send({ channelId }, 'let me in'), { ok: false, error: { code: 'FORBIDDEN' } }, `${where}: send`)
      t.match(await who.request('history:fetch', { channelId }), { ok: false, error: { code: 'FORBIDDEN' } }, `${where}: history`)
      t.match(await who.request('history:fetch', { channelId, afterSeq: 0, limit: 500 }), { ok: false, error: { code: 'FORBIDDEN' } }, `${where}: history from seq 0`)
      t.match(await who.request('channel:leave', { channelId }), { ok: false, error: { code: 'FORBIDDEN' } }, `${where}: leave`)
      t.match(await who.request('typing', { channelId }), { ok: false, error: { code: 'FORBIDDEN' } }, `${where}: typing`)
    }
    // withUserId names the other end of the caller's own conversation, never someone else's.
    t.same(await who.request('history:fetch', { withUserId: 'max' }), { ok: true, messages: [] }, `${who.userId}: the conversation with max is their own, and empty`)
    t.same(await who.request('history:fetch', { withUserId: 'olga' }), { ok: true, messages: [] }, `${who.userId}: the same with olga`)
    t.same(await who.request('channels:list', {}), { ok: true, channels: [] }, `${who.userId}: lists no channel of others`)
  }
  t.equal(await count(sql`select count(*)::int as n from messages where sender_id in ('mallory', 'mallet')`), 0, 'nothing was stored')
  const members = await sql<Array<{ channel_id: string, user_id: string }>>`select channel_id, user_id from members where channel_id in (${secret}, ${direct}) order by 1, 2`
  t.same(members.map((m) => m.user_id).sort(), ['max', 'max', 'olga', 'olga'], 'the memberships are unchanged')
})

t.test('a non-member receives neither the messages nor the typing of a channel, even on the gateway that routes it', async (t) => {
  const near = await connectUser(t, gwA.url, 'eve-near')
  const far = await connectUser(t, gwB.url, 'eve-far')
  const group = await olga.send({ channelId: secret }, 'group secret')
  const dm = await olga.send({ toUserId: 'max' }, 'direct secret')
  t.same(await olga.request('typing', { channelId: secret }), { ok: true })
  // The gateways learn the new direct channel from its first message; a second socket
  // of olga's also sees it in a fresh session.
  const olgaAgain = await connectUser(t, gwA.url, 'olga')
  t.same(await olgaAgain.request('typing', { channelId: direct }), { ok: true })
  await max.waitFor<Message>('message:new', (m) => m.clientMsgId === group.clientMsgId)
  await max.waitFor<Message>('message:new', (m) => m.clientMsgId === dm.clientMsgId)
  await max.waitFor('typing', (x: { channelId: string }) => x.channelId === secret)
  await max.waitFor('typing', (x: { channelId: string }) => x.channelId === direct)
  await settle(700)
  for (const eve of [near, far]) {
    t.same(eve.events.filter((e) => e.event !== 'session:ready'), [], `${eve.userId} received nothing`)
  }
  t.notOk((await keysOf(gwB)).includes(`channel:${secret}`), 'gateway B does not even receive the channel')
})

t.test('a non-member cannot make its gateway bind a key of another user or channel', async (t) => {
  const mallory = await connectUser(t, gwB.url, 'mallory-binds')
  await waitUntil(() => gwB.app.sessions.userCount === 1, 10_000, 'earlier sockets gone from gateway B')
  t.same(await keysOf(gwB), ['user:mallory-binds'], 'before: only the user\'s own key')
  // Everything a client can say that names the channel or its members.
  for (const channelId of [secret, direct]) {
    await mallory.send({ channelId }, 'x')
    await mallory.request('history:fetch', { channelId })
    await mallory.request('typing', { channelId })
    await mallory.request('channel:leave', { channelId })
  }
  await mallory.request('history:fetch', { withUserId: 'olga' })
  await mallory.send({ toUserId: 'max' }, 'hello max')
  const own = await mallory.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'mine', memberIds: ['olga'] })
  t.equal(own.ok, true, 'creating a channel with others is allowed')
  t.same(await keysOf(gwB), [`channel:${own.channelId}`, 'user:mallory-binds'].sort(), 'after: its own user key and its own new channel, nothing of olga, max or the secret channel')

  // Past the gateway: requests on the broker naming mallory are checked by the worker against mallory.
  const rabbit = new Connection(amqpUrl)
  t.teardown(() => rabbit.close())
  const rpc = rabbit.createRPCClient({ confirm: true, timeout: 10_000 })
  t.teardown(() => rpc.close())
  const call = async (body: unknown) => (await rpc.send({ exchange: 'chat.incoming', routingKey: 'rpc' }, body)).body as unknown
  t.match(await call({ op: 'history.fetch', userId: 'mallory-binds', channelId: secret, limit: 10 }), { ok: false, error: { code: 'FORBIDDEN' } }, 'worker: history of the secret channel')
  t.match(await call({ op: 'channel.leave', userId: 'mallory-binds', channelId: secret }), { ok: false, error: { code: 'FORBIDDEN' } }, 'worker: leave the secret channel')
  t.same(await call({ op: 'channels.seq', userId: 'mallory-binds', channelIds: [secret, direct] }), { ok: true, result: { seqs: {} } }, 'worker: no seq of channels mallory is not in')
  const opened = await call({ op: 'session.open', userId: 'mallory-binds' }) as { result: { channels: Array<{ id: string }> } }
  t.same(opened.result.channels.map((c) => c.id).sort(), [own.channelId, (await mallory.waitFor<Message>('message:new', (m) => m.content === 'hello max')).channelId].sort(),
    'worker: the session lists only mallory\'s own channels')
})

t.test('ids that look like routing keys or room names stay in their own namespace', async (t) => {
  const tricky = [`channel:${secret}`, `c:${secret}`, 'user:max', 'u:max', '#', '*', 'user:#', `${'x'.repeat(192)}#channel`, 'ünïcödé 😀']
  // Each tricky user has a socket on both gateways: A holds the channel's room and binding, B holds neither.
  const clients = new Map<string, TestClient[]>()
  for (const id of tricky) clients.set(id, [await connectUser(t, gwA.url, id), await connectUser(t, gwB.url, id)])
  await waitUntil(() => gwB.app.sessions.userCount === tricky.length, 10_000, 'earlier sockets gone from gateway B')
  const keysB = await keysOf(gwB)
  t.same(keysB.filter((k) => tricky.some((id) => k === `user:${id}`)).sort(), tricky.map((id) => `user:${id}`).sort(), 'every tricky user is bound under user:, as is')
  t.notOk(keysB.includes(`channel:${secret}`), `user "channel:${secret}" did not bind channel:${secret}`)
  t.notOk(keysB.includes('user:max'), 'user "user:max" did not bind user:max')
  t.notOk(keysB.some((k) => k.startsWith('channel:')), 'no channel key on gateway B at all')

  const group = await olga.send({ channelId: secret }, 'to the secret channel')
  const toMax = await olga.send({ toUserId: 'max' }, 'to max')
  const toHash = await olga.send({ toUserId: '#' }, 'to #')
  const toStar = await olga.send({ toUserId: '*' }, 'to *')
  t.same(await olga.request('typing', { channelId: secret }), { ok: true })
  await max.waitFor<Message>('message:new', (m) => m.clientMsgId === group.clientMsgId)
  await max.waitFor<Message>('message:new', (m) => m.clientMsgId === toMax.clientMsgId)
  for (const c of clients.get('#')!) await c.waitFor<Message>('message:new', (m) => m.clientMsgId === toHash.clientMsgId)
  for (const c of clients.get('*')!) await c.waitFor<Message>('message:new', (m) => m.clientMsgId === toStar.clientMsgId)
  await settle(700)

  const expected: Record<string, string[]> = { '#': ['to #'], '*': ['to *'] }
  for (const [id, sockets] of clients) {
    for (const [i, c] of sockets.entries()) {
      // A first direct message also announces its new direct channel (with olga) to the recipient.
      const announced = (e: { event: string, args: unknown[] }) => e.event === 'channel:joined' && (e.args[0] as { channel: { kind: string, peerId?: string } }).channel.kind === 'direct' && (e.args[0] as { channel: { peerId?: string } }).channel.peerId === 'olga'
      const got = c.events.filter((e) => e.event !== 'session:ready' && !announced(e)).map((e) => e.event === 'message:new' ? (e.args[0] as Message).content : e.event)
      t.same(got, expected[id] ?? [], `${JSON.stringify(id)} on gateway ${i === 0 ? 'A' : 'B'} received ${expected[id] === undefined ? 'nothing' : 'only its own message'}`)
    }
  }
  t.notOk(max.messages().some((m) => m.content === 'to #' || m.content === 'to *'), 'max did not receive the messages to # and *')
  const [row] = await sql<Array<{ to_user_id: string }>>`select to_user_id from messages where client_msg_id = ${toHash.clientMsgId!}`
  t.equal(row?.to_user_id, '#', 'stored as a message to the user named #')
})
