/**
 * A gateway loses its broker (a TCP proxy between them is cut and refuses for a
 * while): sends are answered UNAVAILABLE or confirmed later, never a false ok; /ready
 * is 503; afterwards the queue and every binding come back, live delivery resumes,
 * and the client recovers what it missed from history.
 */
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { AMQP_PORT, createDatabase, createVhost, listBindings, sqlClient } from '../helpers/services.js'
import { sleep, startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, { amqpUrl, databaseUrl })
const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
// The gateway under test reaches the broker only through the proxy; the other does not.
const cut = await startTestGateway(t, { amqpUrl: viaProxy(amqpUrl, proxy), databaseUrl }, { SEND_TIMEOUT_MS: '1500', RPC_TIMEOUT_MS: '1500' })
const other = await startTestGateway(t, { amqpUrl, databaseUrl })

t.test('outage of one gateway\'s broker connections', async (t) => {
  const alice = await connectUser(t, cut.url, 'alice')
  const carol = await connectUser(t, other.url, 'carol')
  const { channelId } = await carol.request<{ channelId: string }>('channel:create', { name: 'outage', memberIds: ['alice'] })
  await alice.waitFor('channel:joined')
  await carol.send({ channelId }, 'before')
  await alice.waitFor<Message>('message:new', (m) => m.content === 'before')
  const lastSeen = alice.messages().at(-1)!.seq
  const keysBefore = (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === cut.app.bindings.route).map((b) => b.routingKey).sort()

  proxy.refuse(true)
  proxy.cut()
  await waitUntil(async () => (await fetch(`${cut.url}/ready`)).status === 503, 5000, '/ready 503')

  const outcomes: Array<{ content: string, ok: boolean, code?: string }> = []
  for (let i = 0; i < 4; i++) {
    const res = await alice.send({ channelId }, `during ${i}`)
    outcomes.push({ content: `during ${i}`, ok: res.ok, ...(res.error !== undefined ? { code: res.error.code } : {}) })
  }
  t.ok(outcomes.every((o) => o.ok || o.code === 'UNAVAILABLE'), 'every send is answered: ok or UNAVAILABLE')
  t.ok(outcomes.some((o) => !o.ok), 'sends during a long outage are refused, not falsely acked')
  for (let i = 0; i < 3; i++) t.equal((await carol.send({ channelId }, `missed ${i}`)).ok, true)
  await sleep(1000)
  t.equal((await fetch(`${cut.url}/ready`)).status, 503, 'still unready while the broker is unreachable')

  proxy.refuse(false)
  await waitUntil(async () => (await fetch(`${cut.url}/ready`)).status === 200, 30_000, '/ready 200 after recovery')
  const keysAfter = (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === cut.app.bindings.route).map((b) => b.routingKey).sort()
  t.same(keysAfter, keysBefore, 'every binding is back, on the new queue')

  // Every ok'd send is stored; nothing acked was lost.
  for (const o of outcomes.filter((x) => x.ok)) {
    await waitUntil(async () => (await sql`select 1 from messages where content = ${o.content}`).length === 1, 10_000, `stored: ${o.content}`)
  }
  // Live delivery resumes.
  await carol.send({ channelId }, 'after')
  await alice.waitFor<Message>('message:new', (m) => m.content === 'after', 10_000)
  // What alice missed while cut off comes back from history.
  const history = await alice.request<{ ok: boolean, messages: Message[] }>('history:fetch', { channelId, afterSeq: lastSeen })
  const contents = history.messages.map((m) => m.content)
  for (let i = 0; i < 3; i++) t.ok(contents.includes(`missed ${i}`), `missed ${i} recovered from history`)
  t.same(history.messages.map((m) => m.seq), history.messages.map((_, i) => lastSeen + 1 + i), 'in seq order, no gaps')
})

t.test('channels joined and left during the outage are right on the gateway afterwards', async (t) => {
  const dana = await connectUser(t, cut.url, 'dana')
  const danaElsewhere = await connectUser(t, other.url, 'dana')
  const erin = await connectUser(t, other.url, 'erin')
  const { channelId: old } = await erin.request<{ channelId: string }>('channel:create', { name: 'old', memberIds: ['dana'] })
  await dana.waitFor('channel:joined', (p: { channel: { id: string } }) => p.channel.id === old)

  proxy.refuse(true)
  proxy.cut()
  await waitUntil(async () => (await fetch(`${cut.url}/ready`)).status === 503, 5000, '/ready 503')
  // Routed to user:dana while the cut gateway has no queue: the broker drops both notices.
  const { channelId: fresh } = await erin.request<{ channelId: string }>('channel:create', { name: 'fresh', memberIds: ['dana'] })
  t.same(await danaElsewhere.request('channel:leave', { channelId: old }), { ok: true })

  proxy.refuse(false)
  const resync = dana.waitFor('session:resync', undefined, 30_000)
  await waitUntil(async () => (await fetch(`${cut.url}/ready`)).status === 200, 30_000, '/ready 200 after recovery')
  await resync
  t.ok(dana.events.some((e) => e.event === 'channel:joined' && (e.args[0] as { channel: { id: string } }).channel.id === fresh), 'told of the channel joined meanwhile')
  t.ok(dana.events.some((e) => e.event === 'channel:left' && (e.args[0] as { channelId: string }).channelId === old), 'told of the channel left meanwhile')
  const resyncAt = dana.events.findIndex((e) => e.event === 'session:resync')
  const joinedAt = dana.events.findIndex((e) => e.event === 'channel:joined' && (e.args[0] as { channel: { id: string } }).channel.id === fresh)
  t.ok(joinedAt < resyncAt, 'before session:resync, so the client refetches with the right channels')

  // The leave's unbind runs after channel:left was told; the broker's list is read once it is done.
  await waitUntil(() => !cut.app.bindings.isBound(`channel:${old}`) && cut.app.bindings.stats().pending === 0, 10_000, 'the channel left unbound')
  const keys = (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === cut.app.bindings.route).map((b) => b.routingKey)
  t.ok(keys.includes(`channel:${fresh}`), 'the new channel is bound')
  t.notOk(keys.includes(`channel:${old}`), 'the channel left is not')

  t.equal((await dana.send({ channelId: fresh }, 'hello fresh')).ok, true, 'sends to the new channel are taken')
  await erin.send({ channelId: fresh }, 'to fresh')
  await dana.waitFor<Message>('message:new', (m) => m.content === 'to fresh', 10_000)
  await erin.send({ channelId: old }, 'after dana left')
  await erin.waitFor<Message>('message:new', (m) => m.content === 'after dana left', 10_000)
  await sleep(500)
  t.notOk(dana.messages().some((m) => m.content === 'after dana left'), 'nothing more from the channel left')
  t.match(await dana.request('typing', { channelId: old }), { ok: false, error: { code: 'FORBIDDEN' } }, 'typing into it is refused')
})
