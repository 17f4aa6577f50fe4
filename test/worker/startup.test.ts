/**
 * A starting worker takes no send and no request before its start-up check passed: one
 * that then refuses to start (a certificate it rejects, no schema) restarts in a loop
 * with the same setting, and every send it took meanwhile would have been dead-lettered
 * or spent one of the queue's delivery attempts.
 */
import { randomUUID } from 'node:crypto'
import { Connection } from 'rabbitmq-client'
import t, { type Test } from 'tap'
import { brokerNames, declareTopology } from '../../src/broker/topology.js'
import { silentLogger } from '../../src/log.js'
import { startWorker } from '../../src/worker/worker.js'
import { startPostgresTlsProxy, startProxy, viaProxy } from '../helpers/proxy.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { sleep, startTestWorker, testConfig, waitUntil } from '../helpers/system.js'

/** A vhost whose queues exist (as a worker declares them) and whose send queue holds `n` sends. */
async function queuedSends (t: Test, n: number) {
  const vhost = await createVhost(t)
  const env = { amqpUrl: vhost.url, databaseUrl: await createDatabase(t) }
  const conn = new Connection(env.amqpUrl)
  t.teardown(() => conn.close())
  await declareTopology(conn, brokerNames('chat'), 1)
  const pub = conn.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  const ids = Array.from({ length: n }, () => randomUUID())
  for (const clientMsgId of ids) {
    await pub.send({ exchange: 'chat.incoming', routingKey: 'message.send', durable: true, contentType: 'application/json' },
      { v: 1, senderId: 'ann', toUserId: 'bob', content: 'hello', clientMsgId })
  }
  // The broker's own live counts (rabbitmqctl's lag a second or so behind).
  const sendQueue = async () => {
    const q = await conn.queueDeclare({ queue: 'chat.worker', passive: true })
    return { consumers: q.consumerCount, ready: q.messageCount }
  }
  const sql = sqlClient(t, env.databaseUrl)
  const stored = async () => {
    const [row] = await sql<[{ n: number }]>`select count(*)::int as n from messages where client_msg_id = any(${ids})`
    return row.n
  }
  return { env, conn, sendQueue, stored }
}

t.test('a worker that refuses to start (its database\'s certificate fails verification) leaves the queued sends untouched', async (t) => {
  const { env, conn, sendQueue, stored } = await queuedSends(t, 20)
  const tlsPort = await startPostgresTlsProxy(t)
  const badUrl = `postgres://postgres@localhost:${tlsPort}${new URL(env.databaseUrl).pathname}?sslmode=verify-full`
  const refused = startWorker({ config: testConfig('worker', { ...env, databaseUrl: badUrl }), log: silentLogger, defaultMetrics: false })
  t.teardown(() => refused.close())
  await t.rejects(refused.started, { code: 'APP_DATABASE_UNREACHABLE' }, 'it refuses to start')
  t.notOk(refused.status().ready, 'never ready')
  await sleep(300)
  await refused.close() // what main.ts does after printing the reason
  t.same(await sendQueue(), { consumers: 0, ready: 20 }, 'every send still waits in the queue')
  const dead: unknown[] = []
  const dlq = conn.createConsumer({ queue: 'chat.dead-letter', queueOptions: { passive: true } }, (msg) => { dead.push(msg.headers?.['x-chat-reason']) })
  t.teardown(() => dlq.close())
  await startTestWorker(t, env)
  await waitUntil(async () => await stored() === 20, 10_000, 'every send stored by a worker that can')
  t.same(dead, [], 'nothing dead-lettered')
})

t.test('a worker consumes nothing and stays unready while its start-up check waits for the database', async (t) => {
  const { env, sendQueue, stored } = await queuedSends(t, 5)
  const proxy = await startProxy(t, { host: '127.0.0.1', port: 5432 })
  proxy.delay(400) // each round trip to PostgreSQL takes 800 ms: the check takes seconds
  const worker = startWorker({ config: testConfig('worker', { ...env, databaseUrl: viaProxy(env.databaseUrl, proxy) }), log: silentLogger, defaultMetrics: false })
  t.teardown(() => worker.close())
  let checked = false
  void worker.started.then(() => { checked = true })
  await sleep(800) // the broker answered long ago; the database has not
  t.notOk(checked, 'still checking the database')
  t.notOk(worker.status().ready, 'unready')
  t.same(await sendQueue(), { consumers: 0, ready: 5 }, 'subscribed to nothing')
  await worker.started
  proxy.delay(0)
  await waitUntil(async () => await stored() === 5, 15_000, 'every send stored once the check passed')
  await waitUntil(() => worker.status().ready, 5000, 'ready')
  t.pass('consuming and ready once the check passed')
})
