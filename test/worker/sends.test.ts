/**
 * The worker's send pipeline on a real database, with a publisher held in hand: when
 * deliveries cannot be published after the rows are committed (the broker confirms
 * late, is blocked or reconnecting), the batch stays unacked and the publish is retried;
 * it is not requeued, which would burn the queue's delivery limit and end with stored
 * messages in the dead-letter queue. At shutdown it is requeued.
 */
import { randomUUID } from 'node:crypto'
import type { AsyncMessage } from 'rabbitmq-client'
import { ConsumerStatus } from 'rabbitmq-client'
import t from 'tap'
import type { ConfirmedPublisher } from '../../src/broker/publisher.js'
import { PublishError } from '../../src/broker/publisher.js'
import type { SendCommand } from '../../src/contracts/envelopes.js'
import { openDatabase } from '../../src/db/client.js'
import { createMessagesRepository } from '../../src/db/repositories/messages.js'
import { silentLogger } from '../../src/log.js'
import { createWorkerMetrics } from '../../src/worker/metrics.js'
import { GIVE_BACK, SendPipeline, type PendingSend } from '../../src/worker/sends.js'
import { startPostgresTlsProxy } from '../helpers/proxy.js'
import { createDatabase, sqlClient } from '../helpers/services.js'
import { waitUntil } from '../helpers/system.js'

const url = await createDatabase(t)
const handle = openDatabase({ url, max: 2 })
t.teardown(() => handle.close())
const sql = sqlClient(t, url)

function pipeline (failures: number, closing: { now: boolean }, messages = createMessagesRepository(handle.db)) {
  let calls = 0
  const publisher = {
    publishAll: async () => {
      calls++
      if (calls <= failures) throw new PublishError('APP_PUBLISH_TIMEOUT', 'broker did not confirm', true)
    }
  }
  const dead: string[] = []
  const states: boolean[] = []
  const p = new SendPipeline({
    messages,
    publisher: publisher as unknown as ConfirmedPublisher,
    outgoingExchange: 'chat.outgoing',
    deadLetter: async (_msg, reason) => { dead.push(reason) },
    maxContentChars: 4000,
    log: silentLogger,
    metrics: createWorkerMetrics({ server_id: 'w', region: 'test' }, false),
    onDatabaseState: (up) => states.push(up),
    isClosing: () => closing.now,
    dbTimeoutMs: 5000
  })
  return { p, dead, states, calls: () => calls }
}

function sends (senderId: string, n: number) {
  const settled: Array<ConsumerStatus | typeof GIVE_BACK> = []
  const items: PendingSend[] = Array.from({ length: n }, (_, i) => {
    const body: SendCommand = { v: 1, senderId, toUserId: 'bob', content: `m${i}`, clientMsgId: randomUUID() }
    return { msg: { body, redelivered: false, messageId: body.clientMsgId } as unknown as AsyncMessage, settle: (s) => settled.push(s) }
  })
  return { items, settled }
}

t.test('publishing fails a few times: the batch is acked once it succeeds, never requeued', async (t) => {
  const { p, dead, calls } = pipeline(3, { now: false })
  const { items, settled } = sends('pub-ann', 4)
  await p.run(items)
  await p.idle()
  t.equal(calls(), 4, 'retried until the publish went through')
  t.same(settled, Array(4).fill(ConsumerStatus.ACK), 'acked, not requeued')
  t.same(dead, [])
  const [row] = await sql<Array<{ n: string }>>`select count(*) as n from messages where sender_id = 'pub-ann'`
  t.equal(Number(row!.n), 4, 'stored once each')
})

t.test('publishing keeps failing and the worker stops: the batch is given back to the broker', async (t) => {
  const closing = { now: false }
  const { p } = pipeline(Number.MAX_SAFE_INTEGER, closing)
  const { items, settled } = sends('pub-cy', 2)
  await p.run(items)
  await waitUntil(() => settled.length === 0, 100)
  closing.now = true
  await p.idle()
  t.same(settled, [GIVE_BACK, GIVE_BACK])
})

t.test('a batch split to isolate a refused message, and the worker stops during an outage: nothing after the given-back send is stored', async (t) => {
  const closing = { now: false }
  const real = createMessagesRepository(handle.db)
  const { items } = sends('split-di', 3)
  const statusOf = new Map<PendingSend, ConsumerStatus | typeof GIVE_BACK>()
  for (const item of items) {
    const settle = item.settle
    item.settle = (status) => { statusOf.set(item, status); settle(status) }
  }
  const secondId = (items[1]!.msg.body as SendCommand).clientMsgId
  const messages: typeof real = {
    ...real,
    persistBatch: async (batch) => {
      // The whole batch: something in it is refused for good, so the pipeline splits it.
      if (batch.length > 1) throw Object.assign(new Error('check violation'), { code: '23514', severity: 'ERROR' })
      // The second alone: the database goes away while the worker is stopping.
      if (batch[0]!.clientMsgId === secondId) {
        closing.now = true
        throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })
      }
      return await real.persistBatch(batch)
    }
  }
  const { p } = pipeline(0, closing, messages)
  await p.run(items)
  await p.idle()
  const rows = await sql<Array<{ content: string }>>`select content from messages where sender_id = 'split-di' order by seq`
  t.same(rows.map((r) => r.content), ['m0'], 'only the send before the given-back one is stored')
  t.same(items.map((item) => statusOf.get(item)), [ConsumerStatus.ACK, GIVE_BACK, GIVE_BACK], 'the first acked, the second and third given back')
})

t.test('the database\'s certificate fails verification (expired, replaced, an interceptor): the batch is held, nothing dead-lettered', async (t) => {
  const tlsPort = await startPostgresTlsProxy(t)
  const tlsUrl = (mode: string) => `postgres://postgres@localhost:${tlsPort}${new URL(url).pathname}?sslmode=${mode}`
  const verified = openDatabase({ url: tlsUrl('verify-full'), max: 2 })
  t.teardown(() => verified.close())
  const closing = { now: false }
  const { p, dead, states } = pipeline(0, closing, createMessagesRepository(verified.db))
  const { items, settled } = sends('tls-ann', 3)
  const running = p.run(items)
  // Several failed attempts, each reported: a fixed pause did not say that even one had
  // failed yet on a busy machine (a TLS handshake through a proxy).
  await waitUntil(() => states.length >= 3, 15_000, 'three attempts reported')
  t.same(dead, [], 'nothing dead-lettered')
  t.same(settled, [], 'nothing acked: held for a retry')
  t.ok(states.length > 0 && !states.includes(true), 'the database reported down')
  closing.now = true
  await running
  t.same(settled, [GIVE_BACK, GIVE_BACK, GIVE_BACK], 'given back at shutdown')

  // The same proxy without verification stores them: the proxy itself works.
  const unverified = openDatabase({ url: tlsUrl('require'), max: 2 })
  t.teardown(() => unverified.close())
  const ok = pipeline(0, { now: false }, createMessagesRepository(unverified.db))
  const again = sends('tls-ann', 3)
  await ok.p.run(again.items)
  await ok.p.idle()
  t.same(again.settled, Array(3).fill(ConsumerStatus.ACK))
})
