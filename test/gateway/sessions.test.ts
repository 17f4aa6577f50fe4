/**
 * One gateway and one worker in this process, on a vhost and database of their own:
 * sockets, bindings, catch-up, idempotency and membership as a client sees them.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { createSigner } from 'fast-jwt'
import { Connection } from 'rabbitmq-client'
import { deliveryEnvelope } from '../../src/broker/deliveries.js'
import type { Delivery } from '../../src/contracts/envelopes.js'
import type { Message } from '../../src/contracts/protocol.js'
import { connectRaw, connectUser, settle } from '../helpers/client.js'
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js'
import { createDatabase, createVhost, listBindings, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, env)
const gw = await startTestGateway(t, env)

const keysOnBroker = async () => (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === gw.app.bindings.route).map((b) => b.routingKey).sort()

t.test('two sockets of one user: closing one keeps the other receiving; closing both unbinds the user', async (t) => {
  const a = await connectUser(t, gw.url, 'two-tabs')
  const b = await connectUser(t, gw.url, 'two-tabs')
  const sender = await connectUser(t, gw.url, 'sender-1')
  t.ok((await keysOnBroker()).includes('user:two-tabs'))
  t.equal(gw.app.bindings.stats().desired, 2, 'one key per user, not per socket')

  a.close()
  await waitUntil(() => gw.app.sessions.socketCount === 2)
  await sender.send({ toUserId: 'two-tabs' }, 'still there?')
  await b.waitFor<Message>('message:new', (m) => m.content === 'still there?')
  t.ok((await keysOnBroker()).includes('user:two-tabs'), 'binding kept while a socket remains')

  b.close()
  await waitUntil(() => gw.app.bindings.stats().pending === 0 && !gw.app.bindings.isBound('user:two-tabs'), 5000)
  t.notOk((await keysOnBroker()).includes('user:two-tabs'), 'the broker no longer routes the user here')
})

t.test('a user offline during messages fetches exactly the missed ones, in order', async (t) => {
  const ann = await connectUser(t, gw.url, 'ann')
  const created = await ann.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'book club', memberIds: ['ben'] })
  t.equal(created.ok, true)
  const ben = await connectUser(t, gw.url, 'ben')
  await ann.send({ channelId: created.channelId }, 'seen 1')
  await ben.waitFor<Message>('message:new', (m) => m.content === 'seen 1')
  const lastSeen = ben.messages().at(-1)!.seq
  ben.close()
  await waitUntil(() => gw.app.sessions.userCount === 1)
  for (let i = 1; i <= 5; i++) t.equal((await ann.send({ channelId: created.channelId }, `missed ${i}`)).ok, true)
  // An ack means the broker has a message; ann's own copy means it is stored.
  await ann.waitFor<Message>('message:new', (m) => m.content === 'missed 5')

  const back = await connectUser(t, gw.url, 'ben')
  const summary = back.ready.channels.find((c) => c.id === created.channelId)
  t.equal(summary?.lastSeq, lastSeen + 5, 'session:ready tells how far the channel went')
  const history = await back.request<{ ok: boolean, messages: Message[] }>('history:fetch', { channelId: created.channelId, afterSeq: lastSeen })
  t.same(history.messages.map((m) => m.content), ['missed 1', 'missed 2', 'missed 3', 'missed 4', 'missed 5'])
  t.same(history.messages.map((m) => m.seq), [2, 3, 4, 5, 6])
  const dm = await back.request<{ ok: boolean, messages: Message[] }>('history:fetch', { withUserId: 'ann' })
  t.same(dm, { ok: true, messages: [] }, 'no direct conversation yet')
})

t.test('the same clientMsgId sent twice gives one row and one delivery', async (t) => {
  const cat = await connectUser(t, gw.url, 'cat')
  const dan = await connectUser(t, gw.url, 'dan')
  const clientMsgId = randomUUID()
  t.same(await cat.send({ toUserId: 'dan' }, 'once', clientMsgId), { ok: true, clientMsgId })
  t.same(await cat.send({ toUserId: 'dan' }, 'once', clientMsgId), { ok: true, clientMsgId }, 'a retry is still answered ok')
  await dan.waitFor('message:new', (m: Message) => m.clientMsgId === clientMsgId)
  await settle(700)
  t.equal(dan.messages().filter((m) => m.clientMsgId === clientMsgId).length, 1)
  t.equal(cat.messages().filter((m) => m.clientMsgId === clientMsgId).length, 1)
  const rows = await sql`select count(*)::int as n from messages where client_msg_id = ${clientMsgId}`
  t.equal(rows[0]?.n, 1)
})

t.test('a non-member cannot send to a channel; nothing is stored', async (t) => {
  const owner = await connectUser(t, gw.url, 'owner')
  const created = await owner.request<{ channelId: string }>('channel:create', { name: 'private', memberIds: [] })
  const mallory = await connectUser(t, gw.url, 'mallory')
  const ack = await mallory.send({ channelId: created.channelId }, 'let me in')
  t.match(ack, { ok: false, error: { code: 'FORBIDDEN' } })
  t.match(await mallory.request('history:fetch', { channelId: created.channelId }), { ok: false, error: { code: 'FORBIDDEN' } })
  t.match(await mallory.request('typing', { channelId: created.channelId }), { ok: false, error: { code: 'FORBIDDEN' } })

  // Past a gateway (a raw publish to incoming), the worker refuses it too and tells the sender.
  const rabbit = new Connection(amqpUrl)
  t.teardown(() => rabbit.close())
  const pub = rabbit.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  const clientMsgId = randomUUID()
  await pub.send({ exchange: 'chat.incoming', routingKey: 'message.send', durable: true }, { v: 1, senderId: 'mallory', clientMsgId, content: 'sneaky', channelId: created.channelId })
  const rejected = await mallory.waitFor<{ clientMsgId: string, error: { code: string } }>('message:rejected')
  t.same(rejected, { clientMsgId, error: { code: 'FORBIDDEN', message: 'not a member of this channel' } })
  const rows = await sql`select count(*)::int as n from messages where channel_id = ${created.channelId}`
  t.equal(rows[0]?.n, 0)
  await settle(300)
  t.equal(owner.messages().length, 0, 'members saw nothing')
})

t.test('the sender is always the token subject; a forged senderId is refused', async (t) => {
  const eve = await connectUser(t, gw.url, 'eve')
  const fay = await connectUser(t, gw.url, 'fay')
  const forged = await eve.request('message:send', { clientMsgId: randomUUID(), content: 'from fay, honest', toUserId: 'fay', senderId: 'fay' })
  t.match(forged, { ok: false, error: { code: 'VALIDATION' } })
  const ok = await eve.send({ toUserId: 'fay' }, 'from eve')
  const got = await fay.waitFor<Message>('message:new', (m) => m.clientMsgId === ok.clientMsgId)
  t.equal(got.senderId, 'eve')
  const rows = await sql`select sender_id from messages where content like 'from fay%'`
  t.equal(rows.length, 0)
})

t.test('typing reaches the other members only, and is never stored', async (t) => {
  const gil = await connectUser(t, gw.url, 'gil')
  const hal = await connectUser(t, gw.url, 'hal')
  const ivy = await connectUser(t, gw.url, 'ivy')
  const created = await gil.request<{ channelId: string }>('channel:create', { name: 'typing', memberIds: ['hal'] })
  await hal.waitFor('channel:joined')
  t.same(await gil.request('typing', { channelId: created.channelId }), { ok: true })
  t.same(await hal.waitFor('typing'), { channelId: created.channelId, userId: 'gil' })
  await settle(300)
  t.notOk(gil.events.some((e) => e.event === 'typing'), 'the typist is not told')
  t.notOk(ivy.events.some((e) => e.event === 'typing'), 'a non-member is not told')
})

t.test('typing in a note-to-self channel reaches none of the typist\'s sockets', async (t) => {
  const a = await connectUser(t, gw.url, 'me-twice')
  const b = await connectUser(t, gw.url, 'me-twice')
  await a.send({ toUserId: 'me-twice' }, 'note')
  const m = await a.waitFor<Message>('message:new', (x) => x.content === 'note')
  await b.waitFor<Message>('message:new', (x) => x.content === 'note')
  t.same(await a.request('typing', { channelId: m.channelId }), { ok: true })
  // And a notice published anyway (by an older gateway) is not shown to its typist.
  const rabbit = new Connection(amqpUrl)
  t.teardown(() => rabbit.close())
  const pub = rabbit.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  const notice: Delivery = { t: 'typing', channelId: m.channelId, userId: 'me-twice', kind: 'direct', peerId: 'me-twice', sentAt: Date.now() }
  await pub.send(deliveryEnvelope('chat.outgoing', notice), notice)
  await settle(500)
  t.same([a, b].map((s) => s.events.filter((e) => e.event === 'typing').length), [0, 0], 'neither tab is told the user is typing')
})

t.test('a group message emitted while a session opens reaches the socket live or counts in its session:ready', async (t) => {
  // The channel's key is bound already (bob is here), so it is not re-read after the join:
  // a message stored after the worker read alice's list, and emitted before her socket
  // joined the room, was neither delivered nor counted.
  const bob = await connectUser(t, gw.url, 'rw-bob')
  const created = await bob.request<{ channelId: string }>('channel:create', { name: 'window', memberIds: ['rw-alice'] })
  await bob.send({ channelId: created.channelId }, 'before')
  await bob.waitFor<Message>('message:new', (m) => m.content === 'before')
  // Hold alice's session.open answer while bob's message is stored and emitted here.
  const rpc = gw.app.broker.rpc as unknown as { call: (req: { op: string, userId?: string }) => Promise<unknown> }
  const original = rpc.call.bind(rpc)
  t.teardown(() => { rpc.call = original })
  rpc.call = async (req) => {
    const res = await original(req)
    if (req.op === 'session.open' && req.userId === 'rw-alice') {
      await bob.send({ channelId: created.channelId }, 'in the window')
      await bob.waitFor<Message>('message:new', (m) => m.content === 'in the window')
    }
    return res
  }
  const alice = await connectUser(t, gw.url, 'rw-alice')
  rpc.call = original
  const summary = alice.ready.channels.find((c) => c.id === created.channelId)
  await settle(500)
  const live = alice.messages().filter((m) => m.channelId === created.channelId).map((m) => m.seq)
  t.ok((summary?.lastSeq ?? 0) >= 2 || live.includes(2), `seq 2 is known to alice, live or by lastSeq (ready lastSeq ${summary?.lastSeq}, live ${JSON.stringify(live)})`)
})

t.test('a delivery of a type this gateway does not know is counted once, as unknown, and reaches no socket', async (t) => {
  const zed = await connectUser(t, gw.url, 'zed')
  const count = async () => {
    const { samples } = parsePrometheus(await (await fetch(`${gw.url}/metrics`)).text())
    return { unknown: sampleValue(samples, 'chat_gateway_deliveries_total', { type: 'unknown' }) ?? 0, raw: samples.some((s) => s.name === 'chat_gateway_deliveries_total' && s.labels.type === 'from-the-future') }
  }
  const before = await count()
  const rabbit = new Connection(amqpUrl)
  t.teardown(() => rabbit.close())
  const pub = rabbit.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  await pub.send({ exchange: 'chat.outgoing', routingKey: 'user:zed' }, { t: 'from-the-future', userId: 'zed' })
  await waitUntil(async () => (await count()).unknown === before.unknown + 1, 5000, 'counted as unknown')
  const after = await count()
  t.equal(after.unknown, before.unknown + 1, 'one count, as unknown')
  t.notOk(after.raw, 'no label taken from the body')
  t.same(zed.events.map((e) => e.event).filter((e) => e !== 'session:ready'), [], 'nothing reached the socket')
})

t.test('a typing notice received more than 5 s after it was sent is dropped; none carries a broker expiration', async (t) => {
  const jan = await connectUser(t, gw.url, 'jan')
  const kit = await connectUser(t, gw.url, 'kit')
  const created = await jan.request<{ channelId: string }>('channel:create', { name: 'stale typing', memberIds: ['kit'] })
  await kit.waitFor('channel:joined')
  // An expiration would make a backlogged gateway queue dead-letter the notice to the
  // drops exchange, which the gateway takes for lost deliveries (re-read, resync).
  const envelope = deliveryEnvelope('chat.outgoing', { t: 'typing', channelId: created.channelId, userId: 'jan', kind: 'group', sentAt: Date.now() })
  t.equal(envelope.expiration, undefined, 'no broker expiration')
  const rabbit = new Connection(amqpUrl)
  t.teardown(() => rabbit.close())
  const pub = rabbit.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  const notice = (userId: string, sentAt: number) => pub.send({ ...envelope }, { t: 'typing', channelId: created.channelId, userId, kind: 'group', sentAt })
  await notice('old', Date.now() - 6000)
  await notice('fresh', Date.now())
  await kit.waitFor('typing', (x: { userId: string }) => x.userId === 'fresh')
  await settle(300)
  t.same(kit.events.filter((e) => e.event === 'typing').map((e) => (e.args[0] as { userId: string }).userId), ['fresh'], 'only the fresh notice reached the socket')
})

t.test('leaving a channel stops its messages and drops the binding', async (t) => {
  const jo = await connectUser(t, gw.url, 'jo')
  const kit = await connectUser(t, gw.url, 'kit-remote')
  const created = await kit.request<{ channelId: string }>('channel:create', { name: 'leavers', memberIds: ['jo'] })
  await jo.waitFor('channel:joined')
  t.same(await jo.request('channel:leave', { channelId: created.channelId }), { ok: true })
  t.same(await jo.waitFor('channel:left'), { channelId: created.channelId })
  await kit.send({ channelId: created.channelId }, 'after jo left')
  await kit.waitFor<Message>('message:new', (m) => m.content === 'after jo left')
  await settle(300)
  t.notOk(jo.messages().some((m) => m.content === 'after jo left'))
  t.match(await jo.request('history:fetch', { channelId: created.channelId }), { ok: false, error: { code: 'FORBIDDEN' } })
  kit.close()
  await waitUntil(() => !gw.app.bindings.isBound(`channel:${created.channelId}`) && gw.app.bindings.stats().pending === 0, 5000)
  t.notOk((await keysOnBroker()).includes(`channel:${created.channelId}`))
})

t.test('a channel id in capitals names the same channel', async (t) => {
  const lu = await connectUser(t, gw.url, 'lu')
  const mo = await connectUser(t, gw.url, 'mo')
  const { channelId } = await lu.request<{ channelId: string }>('channel:create', { name: 'caps', memberIds: ['mo'] })
  await mo.waitFor('channel:joined')
  const upper = channelId.toUpperCase()
  t.equal((await lu.send({ channelId: upper }, 'in capitals')).ok, true, 'send')
  const got = await mo.waitFor<Message>('message:new', (m) => m.content === 'in capitals')
  t.equal(got.channelId, channelId, 'stored and delivered under the canonical id')
  t.same(await lu.request('typing', { channelId: upper }), { ok: true }, 'typing')
  t.same(await mo.waitFor('typing'), { channelId, userId: 'lu' })
  t.match(await mo.request('history:fetch', { channelId: upper }), { ok: true, messages: [{ content: 'in capitals' }] }, 'history')
  t.same(await mo.request('channel:leave', { channelId: upper }), { ok: true }, 'leave')
  t.same(await mo.waitFor('channel:left'), { channelId }, 'announced under the canonical id')
  t.notOk(gw.app.sessions.channelOf('mo', channelId), 'and forgotten by the gateway')
})

t.test('bad tokens are refused with UNAUTHORIZED', async (t) => {
  const forged = createSigner({ key: 'another-secret-of-enough-length' })({ sub: 'x' })
  for (const auth of [{}, { token: 'garbage' }, { token: forged }, { token: 42 }]) {
    const socket = await connectRaw(gw.url, auth)
    const err = await new Promise<Error>((resolve) => socket.once('connect_error', resolve))
    t.equal(err.message, 'UNAUTHORIZED', JSON.stringify(auth).slice(0, 40))
    socket.disconnect()
  }
})
