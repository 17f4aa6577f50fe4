/**
 * The gateway's RPC client against a real broker and a real responder: many callers at
 * once on a fresh client and right after a reconnect all get answers (rabbitmq-client's
 * RPCClient let concurrent callers publish before it consumed replies, and the broker
 * closed its channel), and a call is bounded by its timeout even when the broker stops
 * reading.
 */
import t from 'tap'
import { Connection } from 'rabbitmq-client'
import { openConnection } from '../../src/broker/connection.js'
import { RPC_SENT_AT_HEADER, RPC_TIMEOUT_HEADER, WorkerRpc } from '../../src/broker/rpc.js'
import { brokerNames, consumerTopology, declareTopology } from '../../src/broker/topology.js'
import { ClientError } from '../../src/errors.js'
import { silentLogger } from '../../src/log.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { AMQP_PORT, closeConnections, createVhost } from '../helpers/services.js'

const { vhost, url } = await createVhost(t)
const names = brokerNames('chat')

const server = new Connection(url)
t.teardown(() => server.close())
await declareTopology(server, names, 1)
const responder = server.createConsumer({ ...consumerTopology(names, 'rpc'), qos: { prefetchCount: 64 }, concurrency: 32 }, async (req, reply) => {
  await reply({ ok: true, result: { channels: [], echo: (req.body as { userId: string }).userId, headers: req.headers, expiration: req.expiration } })
})
t.teardown(() => responder.close())

/** `n` calls, one every millisecond or so: some arrive while the client is still setting up. */
const burst = async (rpc: WorkerRpc, n: number) => {
  const calls: Array<Promise<unknown>> = []
  for (let i = 0; i < n; i++) {
    calls.push(rpc.call({ op: 'session.open', userId: `u${i}` }))
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
  const outcomes = await Promise.allSettled(calls)
  const failed = outcomes.filter((o) => o.status === 'rejected').map((o) => String((o as PromiseRejectedResult).reason?.message))
  return { ok: outcomes.length - failed.length, failed }
}

t.test('concurrent callers on a fresh client and right after a reconnect are all answered, 50 ms from the broker', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  proxy.delay(25)
  const connection = openConnection({ url: viaProxy(url, proxy), name: 'rpc-test', heartbeatSeconds: 10, log: silentLogger })
  const rpc = new WorkerRpc(connection, names, 5000)
  // Its channel first: a connection closes only once its channels have.
  t.teardown(async () => { await rpc.close(); await connection.close() })
  const fresh = await burst(rpc, 200)
  t.same(fresh, { ok: 200, failed: [] }, 'a fresh client answers every one of 200 concurrent calls')

  const reconnected = new Promise((resolve) => connection.once('connection', resolve))
  t.equal(await closeConnections(vhost, 'rpc-test'), 1)
  await reconnected
  const after = await burst(rpc, 200)
  t.same(after, { ok: 200, failed: [] }, 'and so does it right after a reconnect')
})

t.test('a call is bounded by its timeout when the broker stops reading', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const connection = openConnection({ url: viaProxy(url, proxy), name: 'rpc-frozen', heartbeatSeconds: 60, log: silentLogger })
  const rpc = new WorkerRpc(connection, names, 800)
  t.teardown(async () => { await rpc.close(); await connection.close() })
  t.match(await rpc.call({ op: 'session.open', userId: 'warm' }), { channels: [] }, 'answered while the link is up')
  proxy.freeze(true)
  const started = Date.now()
  const err = await rpc.call({ op: 'session.open', userId: 'frozen' }).then(() => undefined, (e: unknown) => e)
  const took = Date.now() - started
  t.ok(err instanceof ClientError && err.code === 'UNAVAILABLE', 'UNAVAILABLE')
  t.ok(took < 2000, `within the timeout, not when the broker reads again (${took} ms)`)
  proxy.freeze(false)
  proxy.cut()
})

t.test('a call made while the broker is unreachable, or while the link goes silent as the client opens its channel, is bounded by its timeout', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const connection = openConnection({ url: viaProxy(url, proxy), name: 'rpc-unreachable', heartbeatSeconds: 60, log: silentLogger })
  const rpc = new WorkerRpc(connection, names, 800)
  t.teardown(async () => { await rpc.close(); await connection.close() })
  await connection.onConnect()
  const timed = async (what: string) => {
    const started = Date.now()
    const err = await rpc.call({ op: 'session.open', userId: 'x' }).then(() => undefined, (e: unknown) => e)
    const took = Date.now() - started
    t.ok(err instanceof ClientError && err.code === 'UNAVAILABLE' && took < 2000, `${what}: UNAVAILABLE in ${took} ms`)
  }
  // Fresh client, the link silent before it has a channel.
  proxy.freeze(true)
  await timed('silent before the first channel')
  proxy.freeze(false)
  proxy.cut()
  proxy.refuse(true)
  await timed('broker unreachable')
  proxy.refuse(false)
})

t.test('a request carries what is left of its call\'s time once a channel is had, and when it was sent', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  proxy.delay(150)
  const connection = openConnection({ url: viaProxy(url, proxy), name: 'rpc-left', heartbeatSeconds: 10, log: silentLogger })
  const rpc = new WorkerRpc(connection, names, 5000)
  t.teardown(async () => { await rpc.close(); await connection.close() })
  // The first call waits for the connection and the reply channel: several round trips of 300 ms.
  const started = Date.now()
  const answer = await rpc.call({ op: 'session.open', userId: 'left' }) as unknown as { headers: Record<string, unknown>, expiration: string }
  const left = answer.headers[RPC_TIMEOUT_HEADER]
  const sentAt = answer.headers[RPC_SENT_AT_HEADER]
  t.ok(typeof left === 'number' && left < 5000 - 500, `${String(left)} ms of 5000 left, after the channel's set-up`)
  t.equal(answer.expiration, String(left), 'the request expires in the queue when its caller gives up')
  t.ok(typeof sentAt === 'number' && sentAt >= started + 500 && sentAt <= Date.now(), 'sent once the channel was had')
})
