/**
 * Send shards (WORKER_SHARDS): every send of a channel goes to one send queue, each
 * queue is stored by one worker at a time, so workers store different channels at once
 * while each channel keeps its order; a backed-up shard refuses only its own sends.
 */
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { sendShard } from '../../src/broker/shards.js'
import { consumedShards, loadConfig } from '../../src/config.js'
import type { Message } from '../../src/contracts/protocol.js'
import type { Worker } from '../../src/worker/worker.js'
import { connectUser, type TestClient } from '../helpers/client.js'
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js'
import { createDatabase, createVhost, listQueues, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

t.test('a send\'s shard', async (t) => {
  t.equal(sendShard({ senderId: 'ann', toUserId: 'ben' }, 1), 0, 'one shard: always 0')
  // Gateways of different versions must agree: these values are the contract.
  t.equal(sendShard({ senderId: 'x', channelId: '00000000-0000-4000-8000-000000000001' }, 64), 53, 'a group channel')
  t.equal(sendShard({ senderId: 'ann', toUserId: 'ben' }, 64), 24, 'a direct pair')
  t.equal(sendShard({ senderId: 'zoë' }, 64), 56, 'a note to self')
  t.equal(sendShard({ senderId: 'x', channelId: 'c1' }, 64), sendShard({ senderId: 'y', channelId: 'c1' }, 64), 'a channel\'s shard does not depend on the sender')
  for (let i = 0; i < 200; i++) {
    if (sendShard({ senderId: `a${i}`, toUserId: `b${i}` }, 7) !== sendShard({ senderId: `b${i}`, toUserId: `a${i}` }, 7)) t.fail(`pair ${i} differs by direction`)
  }
  const counts = (n: number, keys: Array<Parameters<typeof sendShard>[0]>) => {
    const c = new Array<number>(n).fill(0)
    for (const k of keys) c[sendShard(k, n)]!++
    return c
  }
  const pairs = counts(2, Array.from({ length: 2000 }, (_, i) => ({ senderId: `s${i}`, toUserId: `r${i}` })))
  t.ok(pairs.every((c) => c > 900 && c < 1100), `similar user names spread evenly over 2 shards: ${pairs.join(', ')}`)
  const channels = counts(4, Array.from({ length: 4000 }, () => ({ senderId: 'x', channelId: randomUUID() })))
  t.ok(channels.every((c) => c > 850 && c < 1150), `channels spread evenly over 4 shards: ${channels.join(', ')}`)
})

t.test('configuration', async (t) => {
  const worker = (env: Record<string, string>) => loadConfig('worker', { NODE_ENV: 'test', ...env })
  t.same(consumedShards(worker({ WORKER_SHARDS: '3' })), [0, 1, 2], 'a worker consumes every shard by default')
  t.same(consumedShards(worker({ WORKER_SHARDS: '3', WORKER_CONSUME_SHARDS: '2,0' })), [2, 0], 'or those listed')
  t.throws(() => worker({ WORKER_SHARDS: '2', WORKER_CONSUME_SHARDS: '2' }), { code: 'APP_CONFIG_INVALID', message: /shard 2 does not exist with WORKER_SHARDS=2/ })
  t.throws(() => worker({ WORKER_SHARDS: '2', WORKER_CONSUME_SHARDS: '1,1' }), { message: /listed twice/ })
  t.throws(() => worker({ WORKER_CONSUME_SHARDS: '0, 1' }), { message: 'WORKER_CONSUME_SHARDS is invalid ("0, 1"): expected `all`, or shard numbers separated by commas without spaces, such as 0,2' })
  t.throws(() => worker({ WORKER_SHARDS: '65' }), { message: /WORKER_SHARDS is invalid \("65"\): expected an integer from 1 to 64/ })
})

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const sql = sqlClient(t, databaseUrl)
const env = { amqpUrl, databaseUrl }
const SHARDS = { WORKER_SHARDS: '2' }
const BACKLOG = 3

/** Users `a{i}` and `b{i}` whose direct messages go to `shard`. */
function pairOn (shard: number, skip = 0): [string, string] {
  for (let i = 0, found = 0; ; i++) {
    if (sendShard({ senderId: `a${i}`, toUserId: `b${i}` }, 2) === shard && found++ === skip) return [`a${i}`, `b${i}`]
  }
}
const persisted = async (w: Worker) => (await w.metrics.persisted.get()).values[0]?.value ?? 0

const w0 = await startTestWorker(t, env, { ...SHARDS, WORKER_CONSUME_SHARDS: '0' })
const w1 = await startTestWorker(t, env, { ...SHARDS, WORKER_CONSUME_SHARDS: '1' })
const gw = await startTestGateway(t, env, { ...SHARDS, SEND_BACKLOG_MAX: String(BACKLOG), SEND_BACKLOG_CHECK_MS: '50' })

async function converse (t: Test, from: TestClient, to: TestClient, n: number, label: string): Promise<string[]> {
  const sent: string[] = []
  for (let i = 0; i < n; i++) {
    const content = `${label} ${i}`
    t.match(await from.send({ toUserId: to.userId }, content), { ok: true }, `${content} taken`)
    sent.push(content)
  }
  return sent
}

const unconsumedMetric = async () => sampleValue(parsePrometheus((await gw.app.inject({ method: 'GET', url: '/metrics' })).body).samples, 'chat_gateway_send_shards_unconsumed')

const stored = async (sender: string) =>
  (await sql<Array<{ content: string }>>`select content from messages where sender_id = ${sender} order by seq`).map((r) => r.content)

t.test('each shard is stored by its own worker, in send order', async (t) => {
  const queues = (await listQueues(vhost)).map((q) => q.name)
  t.ok(queues.includes('chat.worker') && queues.includes('chat.worker.1'), 'two send queues; shard 0 keeps the single queue\'s name')

  const [a0, b0] = await Promise.all(pairOn(0).map((u) => connectUser(t, gw.url, u)))
  const [a1, b1] = await Promise.all(pairOn(1).map((u) => connectUser(t, gw.url, u)))
  const [sent0, sent1] = await Promise.all([converse(t, a0!, b0!, 15, 'zero'), converse(t, a1!, b1!, 15, 'one')])
  await waitUntil(() => b0!.messages().length === 15 && b1!.messages().length === 15, 10_000, 'both conversations delivered')
  t.same(b0!.messages().map((m: Message) => m.content), sent0, 'shard 0: delivered once each, in order')
  t.same(b1!.messages().map((m: Message) => m.content), sent1, 'shard 1: delivered once each, in order')
  t.same(await stored(a0!.userId), sent0, 'shard 0: stored once each, in order')
  t.same(await stored(a1!.userId), sent1, 'shard 1: stored once each, in order')
  t.equal(await persisted(w0), 15, 'the shard-0 worker stored only shard 0')
  t.equal(await persisted(w1), 15, 'the shard-1 worker stored only shard 1')
})

t.test('a backed-up shard refuses its own sends only; a standby takes it over in order', async (t) => {
  const [a0, b0] = await Promise.all(pairOn(0, 1).map((u) => connectUser(t, gw.url, u)))
  const [a1, b1] = await Promise.all(pairOn(1, 1).map((u) => connectUser(t, gw.url, u)))
  await w1.close()
  const queued = await converse(t, a1!, b1!, BACKLOG, 'waiting')
  await waitUntil(() => gw.app.broker.backlog.over(1), 5000, 'the gateway sees shard 1 backed up')
  t.equal(gw.app.broker.backlog.over(0), false, 'shard 0 is not')
  t.match(await a1!.send({ toUserId: b1!.userId }, 'refused'), { ok: false, error: { code: 'UNAVAILABLE' } }, 'a send to the backed-up shard is refused')

  const before0 = await persisted(w0)
  const flowing = await converse(t, a0!, b0!, 5, 'flowing')
  await waitUntil(() => b0!.messages().length === 5, 10_000, 'shard 0 delivered meanwhile')
  t.same(b0!.messages().map((m: Message) => m.content), flowing, 'the other shard goes on')
  t.equal(await persisted(w0) - before0, 5, 'stored by its own worker')
  t.equal(b1!.messages().length, 0, 'nothing of the stopped shard is delivered yet')

  // A standby of every shard: shard 0 stays with w0, shard 1 has no one else.
  const standby = await startTestWorker(t, env, { ...SHARDS, WORKER_CONSUME_SHARDS: 'all' })
  await waitUntil(() => b1!.messages().length === BACKLOG, 10_000, 'the standby stores the waiting sends')
  t.same(b1!.messages().map((m: Message) => m.content), queued, 'delivered once each, in order')
  t.same(await stored(a1!.userId), queued, 'stored once each, in order; the refused send was not')
  await waitUntil(() => !gw.app.broker.backlog.over(1), 5000, 'shard 1 takes sends again')
  const more = await converse(t, a0!, b0!, 3, 'still zero')
  await waitUntil(() => b0!.messages().length === 8, 10_000, 'shard 0 delivered')
  t.same(b0!.messages().slice(5).map((m: Message) => m.content), more)
  t.equal(await persisted(standby), BACKLOG, 'the standby stored shard 1 only: shard 0 stayed with its active worker')
})

t.test('a direct channel named by its id is stored on its pair\'s shard, in order with sends by user id', async (t) => {
  // A pair on shard 0 whose channel id would hash to shard 1: with shard 1 stopped, a send
  // routed by the channel id would wait there while a later send by user id is stored.
  let pair: [TestClient, TestClient] | undefined
  let channelId = ''
  for (let skip = 2; pair === undefined; skip++) {
    const [a, b] = await Promise.all(pairOn(0, skip).map((u) => connectUser(t, gw.url, u)))
    t.match(await a!.send({ toUserId: b!.userId }, 'first'), { ok: true })
    channelId = (await b!.waitFor<Message>('message:new')).channelId
    if (sendShard({ senderId: 'x', channelId }, 2) === 1) pair = [a!, b!]
    if (skip > 40) throw new Error('no pair found')
  }
  const [a, b] = pair
  await a.waitFor('message:new')
  // The standby of the last test stopped with it: shard 1 gets a worker of its own again.
  const shard1 = await startTestWorker(t, env, { ...SHARDS, WORKER_CONSUME_SHARDS: '1' })
  await gw.app.broker.backlog.read()
  t.equal(await unconsumedMetric(), 0, 'every shard has a worker')
  await shard1.close()
  // The broker drops a closed channel's consumer a moment later.
  await waitUntil(async () => { await gw.app.broker.backlog.read(); return await unconsumedMetric() === 1 }, 5000, 'the gateway exports the shard no worker consumes')
  t.match(await a.send({ channelId }, 'by channel id'), { ok: true })
  t.match(await a.send({ toUserId: b.userId }, 'by user id'), { ok: true })
  await waitUntil(() => b.messages().length === 3, 10_000, 'both delivered while shard 1 is stopped')
  t.same(b.messages().map((m: Message) => m.content), ['first', 'by channel id', 'by user id'], 'delivered in send order')
  t.same(await stored(a.userId), ['first', 'by channel id', 'by user id'], 'stored in send order')
})
