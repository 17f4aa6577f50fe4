import t, { type Test } from 'tap'
import { Connection, type AsyncMessage } from 'rabbitmq-client'
import { BindingManager } from '../../src/broker/binding-manager.js'
import { silentLogger } from '../../src/log.js'
import { startProxy, viaProxy, type TcpProxy } from '../helpers/proxy.js'
import { AMQP_PORT, closeConnections, createVhost, listBindings, listQueues, rabbitmqctl } from '../helpers/services.js'
import { sleep, waitUntil } from '../helpers/system.js'

const { vhost, url } = await createVhost(t)
const EXCHANGE = 'bm.outgoing'
// Deliveries come from a connection of the test's own, never through a test's proxy.
const direct = new Connection({ url })
direct.on('error', () => {})
const publisher = direct.createPublisher({ confirm: true })
t.teardown(async () => {
  await publisher.close()
  await direct.close()
})
const publish = (routingKey: string, body: unknown) => publisher.send({ exchange: EXCHANGE, routingKey }, body)

async function setup (t: Test, opts: { unbindGraceMs?: number, poolSize?: number, leaseMs?: number, maxQueueLength?: number, proxy?: TcpProxy } = {}) {
  const name = `bm-${Math.random().toString(36).slice(2, 8)}`
  const connection = new Connection({ url: opts.proxy === undefined ? url : viaProxy(url, opts.proxy), connectionName: name, retryLow: 100, retryHigh: 500 })
  connection.on('error', () => {})
  await connection.exchangeDeclare({ exchange: EXCHANGE, type: 'direct', durable: true })
  const received: AsyncMessage[] = []
  const route = { exchange: `bm.gateway.${name}`, holder: `bm.gateway.${name}.holder`, lease: `bm.gateway.${name}.lease`, drops: `bm.gateway.${name}.drops` }
  const manager = new BindingManager({ connection, exchange: EXCHANGE, route, onMessage: (m) => received.push(m), log: silentLogger, unbindGraceMs: opts.unbindGraceMs ?? 0, poolSize: opts.poolSize ?? 4, leaseMs: opts.leaseMs, maxQueueLength: opts.maxQueueLength })
  t.teardown(async () => {
    await manager.close()
    await connection.close()
  })
  await waitUntil(() => manager.settled, 10_000, 'queue ready')
  /** The keys as the broker holds them: bindings from the outgoing exchange to our route. */
  const keysOnBroker = async () => (await listBindings(vhost, EXCHANGE)).filter((b) => b.destination === manager.route).map((b) => b.routingKey).sort()
  /** Queues the route feeds (its other destination is the holder exchange). */
  const routeQueues = async () => (await listBindings(vhost, manager.route)).filter((b) => b.kind === 'queue').map((b) => b.destination)
  const exchanges = async () => (await rabbitmqctl('list_exchanges', '-p', vhost, '--no-table-headers', 'name')).split('\n')
  const routeExists = async () => (await exchanges()).includes(manager.route)
  return { connection, manager, received, name, route, keysOnBroker, routeQueues, routeExists, exchanges }
}

t.test('keys are refcounted: one binding for many references, unbound at zero', async (t) => {
  const { manager, keysOnBroker } = await setup(t)
  await Promise.all([manager.acquire('user:a'), manager.acquire('user:a'), manager.acquire('channel:1')])
  t.same(await keysOnBroker(), ['channel:1', 'user:a'], 'acquire resolved only once the broker holds the binding')
  t.match(manager.stats(), { desired: 2, missing: 0, boundUserKeys: 1, boundChannelKeys: 1, binds: 2 })
  manager.release('user:a')
  await sleep(200)
  t.same(await keysOnBroker(), ['channel:1', 'user:a'], 'one reference left: still bound')
  manager.release('user:a')
  manager.release('channel:1')
  await waitUntil(() => manager.stats().pending === 0 && manager.stats().boundUserKeys === 0 && manager.stats().boundChannelKeys === 0)
  t.same(await keysOnBroker(), [], 'last release unbinds')
  t.equal(manager.stats().unbinds, 2)
})

t.test('deliveries routed to a bound key reach the handler; others do not', async (t) => {
  const { manager, received } = await setup(t)
  // The route passes on every key bound on it, whatever characters a topic pattern would read.
  for (const key of ['user:x', 'user:lease', 'channel:#', 'user:*']) await manager.acquire(key)
  for (const key of ['user:x', 'user:y', 'user:lease', 'channel:#', 'user:*']) await publish(key, { hello: key })
  await waitUntil(() => received.length >= 4)
  await sleep(200)
  t.same(received.map((m) => m.body), ['user:x', 'user:lease', 'channel:#', 'user:*'].map((hello) => ({ hello })))
})

t.test('a lazy unbind absorbs a quick re-acquire', async (t) => {
  const { manager, keysOnBroker, received } = await setup(t, { unbindGraceMs: 2500 })
  await manager.acquire('user:flap')
  manager.release('user:flap')
  await sleep(100)
  await manager.acquire('user:flap')
  await sleep(2600)
  t.same(await keysOnBroker(), ['user:flap'])
  t.equal(manager.stats().unbinds, 0, 'no unbind was sent')
  manager.release('user:flap')
  // Asked by routing, not with rabbitmqctl: its answer can take longer than the grace
  // period on a busy machine. The broker routes a publish before it confirms it.
  const releasedAt = Date.now()
  await publish('user:flap', { probe: 'in grace' })
  const probedAfter = Date.now() - releasedAt
  t.ok(probedAfter < 2500, `probed ${probedAfter} ms after the release, inside the grace period`)
  const routed = () => received.some((m) => (m.body as { probe?: string }).probe === 'in grace')
  await waitUntil(routed, 5000).catch(() => {})
  t.ok(routed(), 'still bound inside the grace period: the broker routed the probe to the manager\'s queue')
  await waitUntil(() => manager.stats().unbinds === 1, 5000)
  t.same(await keysOnBroker(), [])
})

t.test('after a broker connection loss, the keys wait on the route and one bind attaches the new queue', async (t) => {
  const { manager, keysOnBroker, routeQueues, name, received } = await setup(t, { poolSize: 8 })
  const keys = Array.from({ length: 300 }, (_, i) => (i % 3 === 0 ? `channel:${i}` : `user:u${i}`))
  await Promise.all(keys.map((k) => manager.acquire(k)))
  const before = manager.queue
  t.equal((await keysOnBroker()).length, 300)
  t.same(await routeQueues(), [before])
  let rebound: { keys: number, durationMs: number, routeKept: boolean } | undefined
  manager.on('rebound', (info) => { rebound = info })
  t.equal(await closeConnections(vhost, name), 1)
  await waitUntil(() => !manager.settled, 5000, 'unsettled after the loss')
  t.equal(manager.isBound('user:u1'), false, 'no key counts as bound while no queue is attached')
  await waitUntil(() => manager.settled, 20_000, 'settled again')
  t.not(manager.queue, before, 'the broker gave us a new server-named queue')
  t.same(await keysOnBroker(), [...keys].sort(), 'every key is still on the route')
  t.same(await routeQueues(), [manager.queue], 'the route feeds the new queue, and only it')
  t.notOk((await listQueues(vhost)).some((q) => q.name === before), 'the old exclusive queue is gone')
  t.match(rebound, { keys: 300, routeKept: true })
  t.match(manager.stats(), { desired: 300, missing: 0, generation: 2, routes: 1, binds: 300 }, 'no key was bound twice')

  await publish('user:u1', { after: 'reconnect' })
  await waitUntil(() => received.some((m) => (m.body as { after?: string }).after === 'reconnect'), 5000, 'a delivery after the reconnect')
})

t.test('keys taken and dropped while disconnected are bound and unbound once back', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const { manager, keysOnBroker } = await setup(t, { proxy })
  await Promise.all(['user:stay', 'user:leave', 'channel:old'].map((k) => manager.acquire(k)))
  proxy.refuse(true)
  proxy.cut()
  await waitUntil(() => !manager.settled, 5000, 'unsettled after the cut')
  manager.release('user:leave')
  manager.release('channel:old')
  const joined = manager.acquire('user:new')
  let joinedResolved = false
  void joined.then(() => { joinedResolved = true })
  await sleep(500)
  t.equal(joinedResolved, false, 'acquire waits while the broker is unreachable')
  proxy.refuse(false)
  await joined
  await waitUntil(() => manager.settled && manager.stats().pending === 0, 20_000, 'settled')
  t.same(await keysOnBroker(), ['user:new', 'user:stay'])
  t.match(manager.stats(), { routes: 1, boundUserKeys: 2, boundChannelKeys: 0 })
})

t.test('an unbind the broker did but whose answer was lost: a key taken again meanwhile is bound again', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const { manager, keysOnBroker, received } = await setup(t, { proxy })
  await manager.acquire('user:k')
  proxy.stall(true)
  manager.release('user:k')
  await waitUntil(async () => (await keysOnBroker()).length === 0, 10_000, 'the broker did the unbind')
  proxy.refuse(true)
  proxy.cut()
  await waitUntil(() => !manager.settled, 5000, 'unsettled after the cut')
  const again = manager.acquire('user:k')
  proxy.refuse(false)
  await again
  await waitUntil(() => manager.settled, 20_000, 'settled')
  t.same(await keysOnBroker(), ['user:k'], 'bound on the broker, not only in our books')
  await publish('user:k', { to: 'k' })
  await waitUntil(() => received.some((m) => (m.body as { to?: string }).to === 'k'), 5000, 'delivered')
})

t.test('an outage longer than the lease: the broker drops the route, the gateway declares it again and binds every key', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const { manager, keysOnBroker, routeExists, exchanges, route } = await setup(t, { proxy, leaseMs: 1000 })
  const keys = ['user:a', 'user:b', 'channel:c']
  await Promise.all(keys.map((k) => manager.acquire(k)))
  let rebound: { routeKept: boolean } | undefined
  manager.on('rebound', (info) => { rebound = info })
  proxy.refuse(true)
  proxy.cut()
  await waitUntil(async () => !(await routeExists()), 15_000, 'the broker deleted the route when the lease expired')
  t.notOk((await exchanges()).includes(route.holder), 'and its holder')
  t.same(await keysOnBroker(), [], 'and every key with it')
  proxy.refuse(false)
  await waitUntil(() => manager.settled, 20_000, 'settled again')
  t.same(await keysOnBroker(), [...keys].sort(), 'every key bound again on the new route')
  t.match(rebound, { routeKept: false })
  t.match(manager.stats(), { routes: 2, binds: 6, missing: 0 })
})

t.test('a full queue reports what it drops, also after a reconnect', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const { manager } = await setup(t, { proxy, maxQueueLength: 10 })
  await manager.acquire('user:slow')
  let dropped = 0
  manager.on('dropped', ({ count }) => { dropped += count })
  const overflow = async () => {
    proxy.stall(true)
    // More than the TCP buffers between broker and manager hold, so the queue fills.
    const body = { pad: 'x'.repeat(64 * 1024) }
    for (let i = 0; i < 400; i += 50) await Promise.all(Array.from({ length: 50 }, () => publish('user:slow', body)))
    proxy.stall(false)
  }
  await overflow()
  await waitUntil(() => dropped > 0, 10_000, 'drops reported')
  t.ok(dropped >= 1, `heard of ${dropped} drops (the drops queue keeps one at a time)`)
  t.ok(manager.stats().dropped >= 1)

  proxy.cut()
  await waitUntil(() => !manager.settled, 5000, 'unsettled after the cut')
  await waitUntil(() => manager.settled, 20_000, 'settled again')
  const before = dropped
  await overflow()
  await waitUntil(() => dropped > before, 10_000, 'drops reported after the reconnect')
})

t.test('close deletes the route and its lease; nothing is left on the broker', async (t) => {
  const { manager, route, routeExists, exchanges } = await setup(t)
  await manager.acquire('user:z')
  await manager.close()
  t.equal(await routeExists(), false)
  t.notOk((await exchanges()).includes(route.holder), 'holder deleted')
  t.notOk((await listQueues(vhost)).some((q) => q.name === route.lease), 'lease queue deleted')
  t.notOk((await listBindings(vhost, EXCHANGE)).some((b) => b.destination === route.exchange))
})

t.test('bind/unbind use a fixed pool of channels, not one per call', async (t) => {
  const { manager, name } = await setup(t, { poolSize: 3 })
  const channelsOfConnection = async () => {
    const conns = JSON.parse(await rabbitmqctl('list_connections', '--formatter', 'json', 'pid', 'client_properties')) as Array<{ pid: string, client_properties: unknown }>
    const pid = conns.find((c) => JSON.stringify(c.client_properties).includes(name))?.pid
    const all = JSON.parse(await rabbitmqctl('list_channels', '--formatter', 'json', 'connection', 'number')) as Array<{ connection: string }>
    return all.filter((c) => c.connection === pid).length
  }
  await Promise.all(Array.from({ length: 200 }, (_, i) => manager.acquire(`user:p${i}`)))
  const afterBinds = await channelsOfConnection()
  // pool (3) + consumer (1) + lease and drops consumers (2) + the connection's own lazy channel
  t.ok(afterBinds <= 7, `at most 7 channels, saw ${afterBinds}`)
  for (let i = 0; i < 200; i++) manager.release(`user:p${i}`)
  await waitUntil(() => manager.stats().unbinds === 200, 10_000)
  t.equal(await channelsOfConnection(), afterBinds, '200 unbinds opened no channel')
  t.equal(manager.stats().binds, 200)
})
