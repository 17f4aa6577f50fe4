/**
 * Crashes, with real processes. A worker SIGKILLed mid-batch while a standby runs:
 * redelivery, no duplicate row, no duplicate delivery. A gateway SIGKILLed behind a
 * network that hides its death: its queue goes away within the heartbeat, its clients
 * reconnect to the other gateway and catch up from history.
 */
import { Connection } from 'rabbitmq-client'
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { AMQP_PORT, createDatabase, createVhost, listQueues, sqlClient } from '../helpers/services.js'
import { sleep, spawnGateway, spawnWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const sql = sqlClient(t, databaseUrl)

t.test('SIGKILL the active worker mid-load with a standby running', async (t) => {
  const env = { amqpUrl, databaseUrl, prefix: 'wk' }
  const workers = [await spawnWorker(t, env, { WORKER_BATCH_WAIT_MS: '20' }), await spawnWorker(t, env, { WORKER_BATCH_WAIT_MS: '20' })]
  const gw = await spawnGateway(t, env, { SOCKET_RATE_PER_SEC: '10000', SOCKET_RATE_BURST: '10000' })
  const senders = await Promise.all(['s1', 's2', 's3'].map((u) => connectUser(t, gw.url, u)))
  const rcpt = await connectUser(t, gw.url, 'rcpt')

  const acked: string[] = []
  let running = true
  const load = senders.map(async (s) => {
    for (let i = 0; running; i++) {
      const res = await s.send({ toUserId: 'rcpt' }, `${s.userId}-${i}`)
      if (res.ok) acked.push(res.clientMsgId!)
    }
  })
  await waitUntil(() => rcpt.messages().length > 100, 20_000, 'traffic flowing')
  const persisted = async (w: { statusUrl: string }) => sampleValue(parsePrometheus(await (await fetch(`${w.statusUrl}/metrics`)).text()).samples, 'chat_worker_messages_persisted_total') ?? 0
  const active = (await persisted(workers[0]!)) > 0 ? workers[0]! : workers[1]!
  active.child.kill('SIGKILL')
  await active.exited
  await sleep(1500)
  running = false
  await Promise.all(load)
  t.ok(acked.length > 150, `${acked.length} sends acked`)

  await waitUntil(async () => (await sql`select count(*)::int as n from messages where client_msg_id = any(${acked})`)[0]?.n === acked.length, 30_000, 'every acked message stored')
  const dupRows = await sql`select client_msg_id from messages group by sender_id, client_msg_id having count(*) > 1`
  t.equal(dupRows.length, 0, 'no duplicate rows')
  await waitUntil(() => new Set(rcpt.messages().map((m) => m.id)).size >= acked.length, 30_000, 'every message delivered')
  await sleep(1000)
  const ids = rcpt.messages().map((m) => m.id)
  t.equal(ids.length, new Set(ids).size, 'no duplicate deliveries to the socket')
  const gaps = await sql`select channel_id from messages group by channel_id having max(seq) <> count(*)`
  t.equal(gaps.length, 0, 'no seq gaps')
})

t.test('SIGKILL a gateway whose death the network hides: queue gone within the heartbeat, clients catch up elsewhere', async (t) => {
  const env = { amqpUrl, databaseUrl, prefix: 'gk' }
  await spawnWorker(t, env)
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const g1 = await spawnGateway(t, { ...env, amqpUrl: viaProxy(amqpUrl, proxy) }, { AMQP_HEARTBEAT_S: '2' })
  const g2 = await spawnGateway(t, env)
  const g1Queue = ((await (await fetch(`${g1.url}/ready`)).json()) as { queue: string }).queue
  const alice = await connectUser(t, g1.url, 'alice')
  const bob = await connectUser(t, g2.url, 'bob')
  await bob.send({ toUserId: 'alice' }, 'hello')
  const first = await alice.waitFor<Message>('message:new', (m) => m.content === 'hello')

  // Timed with a passive declare (a round trip), not rabbitmqctl, which takes seconds on a
  // busy machine: polling with it measured its own start-up more than the broker. While
  // the dead gateway's connection lives, its exclusive queue answers RESOURCE_LOCKED.
  const probe = new Connection(amqpUrl)
  probe.on('error', () => {})
  t.teardown(() => probe.close())
  const queueGone = async () => {
    try {
      await probe.queueDeclare({ queue: g1Queue, passive: true })
      return false
    } catch (err) {
      const code = (err as { code?: string }).code
      if (code === 'NOT_FOUND') return true
      if (code === 'RESOURCE_LOCKED') return false
      throw err
    }
  }
  t.equal(await queueGone(), false, 'the probe sees the live gateway\'s queue')

  proxy.freeze(true) // the broker sees a silent peer, as when a machine vanishes
  g1.child.kill('SIGKILL')
  await g1.exited
  const killedAt = Date.now()
  for (let i = 0; i < 5; i++) t.equal((await bob.send({ toUserId: 'alice' }, `while gone ${i}`)).ok, true)
  await waitUntil(queueGone, 20_000, 'dead gateway queue removed')
  const goneAfter = Date.now() - killedAt
  // RabbitMQ drops a peer after about two missed heartbeats; allow a little more.
  t.ok(goneAfter < 4 * 2000 + 2000, `queue removed ${goneAfter} ms after the kill (heartbeat 2 s)`)
  t.notOk((await listQueues(vhost)).some((q) => q.name === g1Queue), 'and gone from the broker\'s own list')

  const again = await connectUser(t, g2.url, 'alice')
  const direct = again.ready.channels.find((c) => c.id === first.channelId)
  t.ok(direct !== undefined && direct.lastSeq >= first.seq + 5, 'session:ready shows the channel moved on')
  const history = await again.request<{ messages: Message[] }>('history:fetch', { withUserId: 'bob', afterSeq: first.seq })
  t.same(history.messages.map((m) => m.content), [0, 1, 2, 3, 4].map((i) => `while gone ${i}`))
  await bob.send({ toUserId: 'alice' }, 'live again')
  await again.waitFor<Message>('message:new', (m) => m.content === 'live again')
})
