/**
 * Graceful shutdown with real processes: a gateway on SIGTERM turns unready at once,
 * tells its clients to reconnect elsewhere, exits 0 within its drain window, and its
 * queue disappears; nothing sent meanwhile is lost. A worker on SIGTERM mid-load
 * loses and duplicates nothing.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { Connection } from 'rabbitmq-client'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { createDatabase, createVhost, listQueues, sqlClient } from '../helpers/services.js'
import { sleep, spawnGateway, spawnWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)

t.test('gateway SIGTERM: unready at once, drain notice, exit 0 within the window, queue gone, nothing lost', async (t) => {
  await spawnWorker(t, env)
  const g1 = await spawnGateway(t, env, { DRAIN_WINDOW_MS: '3000' })
  const g2 = await spawnGateway(t, env)
  const g1Queue = ((await (await fetch(`${g1.url}/ready`)).json()) as { queue: string }).queue

  const alice = await connectUser(t, g1.url, 'alice')
  const carol = await connectUser(t, g1.url, 'carol')
  const bob = await connectUser(t, g2.url, 'bob')
  const { channelId } = await bob.request<{ channelId: string }>('channel:create', { name: 'drain', memberIds: ['alice', 'carol'] })
  await alice.waitFor('channel:joined')
  await carol.waitFor('channel:joined')

  const acked: string[] = []
  const attempted: string[] = []
  let sending = true
  const keepSending = async (c: typeof alice, label: string) => {
    for (let i = 0; sending && c.socket.connected; i++) {
      attempted.push(`${label}-${i}`)
      const res = await c.send({ channelId }, `${label}-${i}`).catch(() => ({ ok: false }))
      if (res.ok) acked.push(`${label}-${i}`)
      await sleep(50)
    }
  }
  const signalledAt = Date.now()
  g1.child.kill('SIGTERM')
  const senders = [keepSending(alice, 'alice'), keepSending(bob, 'bob')]
  await waitUntil(async () => (await fetch(`${g1.url}/ready`).then((r) => r.status, () => 0)) === 503, 1000, '/ready 503')
  t.ok(Date.now() - signalledAt < 1000, '/ready is 503 within a second of the signal')

  const notice = await alice.waitFor<{ code: string, reconnectInMs: number }>('session:end', undefined, 5000)
  t.equal(notice.code, 'DRAINING')
  t.ok(notice.reconnectInMs >= 0 && notice.reconnectInMs <= 3000, 'reconnect delay within the window')
  await carol.waitFor('session:end', undefined, 5000)

  const code = await g1.exited
  const tookMs = Date.now() - signalledAt
  t.equal(code, 0, 'exit code 0')
  t.ok(tookMs < 3000 + 5000, `exited within the window plus closing time (${tookMs} ms)`)
  t.notOk((await listQueues(vhost)).some((q) => q.name === g1Queue), 'its queue is gone from the broker')
  await sleep(500)
  sending = false
  await Promise.all(senders)
  t.ok(acked.some((a) => a.startsWith('alice-')), 'alice sent during the drain')

  // Everything acked is stored, once (a send whose ack was cut off by the disconnect may
  // be stored too); bob saw it live; carol recovers it from history on g2.
  const storedNow = async () => (await sql<Array<{ content: string }>>`select content from messages where channel_id = ${channelId} order by seq`).map((r) => r.content)
  await waitUntil(async () => { const s = await storedNow(); return acked.every((a) => s.includes(a)) }, 10_000, 'all acked messages stored')
  await sleep(500)
  const stored = await storedNow()
  t.equal(new Set(stored).size, stored.length, 'nothing stored twice')
  t.ok(stored.every((c) => attempted.includes(c)), 'nothing stored that was not sent')
  t.ok(acked.every((a) => stored.includes(a)), `every acked message stored (${acked.length} acked, ${stored.length} stored)`)
  await waitUntil(() => bob.messages().filter((m) => m.channelId === channelId).length === stored.length, 10_000, 'bob got all live')
  const again = await connectUser(t, g2.url, 'carol')
  const history = await again.request<{ messages: Message[] }>('history:fetch', { channelId, afterSeq: 0, limit: 500 })
  t.same(history.messages.map((m) => m.content), stored, 'carol recovers everything on the other gateway')
})

t.test('worker SIGTERM mid-load: nothing lost, nothing duplicated', async (t) => {
  const w1 = await spawnWorker(t, { ...env, prefix: 'wk' })
  const rabbit = new Connection(amqpUrl)
  t.teardown(() => rabbit.close())
  const pub = rabbit.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  // Enough that a fast worker is still busy when the signal lands (3,000 were all stored
  // before it once, on a quick machine).
  const ids = Array.from({ length: 12_000 }, () => randomUUID())
  const publishing = Promise.all(ids.map((clientMsgId, i) =>
    pub.send({ exchange: 'wk.incoming', routingKey: 'message.send', durable: true }, { v: 1, senderId: `s${i % 20}`, toUserId: `r${i % 7}`, clientMsgId, content: `m${i}` })))
  await waitUntil(async () => ((await sql`select count(*)::int as n from messages where client_msg_id = any(${ids})`)[0]?.n ?? 0) > 200, 20_000, 'worker busy')
  w1.child.kill('SIGTERM')
  t.equal(await w1.exited, 0, 'the worker exits cleanly')
  await publishing
  const mid = (await sql`select count(*)::int as n from messages where client_msg_id = any(${ids})`)[0]?.n ?? 0
  t.ok(mid < ids.length, `stopped mid-load (${mid} of ${ids.length} stored)`)
  await spawnWorker(t, { ...env, prefix: 'wk' })
  await waitUntil(async () => (await sql`select count(*)::int as n from messages where client_msg_id = any(${ids})`)[0]?.n === ids.length, 60_000, 'all stored after restart')
  const dupes = await sql`select client_msg_id from messages where client_msg_id = any(${ids}) group by sender_id, client_msg_id having count(*) > 1`
  t.equal(dupes.length, 0, 'no duplicates')
  const gaps = await sql`select channel_id from messages group by channel_id having max(seq) <> count(*)`
  t.equal(gaps.length, 0, 'no seq gaps')
  const dead = (await listQueues(vhost)).find((q) => q.name === 'wk.dead-letter')
  t.equal(dead?.messages, 0, 'nothing dead-lettered')
})
