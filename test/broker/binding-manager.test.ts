import t, { type Test } from 'tap'
import { Connection, type AsyncMessage } from 'rabbitmq-client'
import { BindingManager } from '../../src/broker/binding-manager.js'
import { silentLogger } from '../../src/log.js'
import { closeConnections, createVhost, listBindings, listQueues, rabbitmqctl } from '../helpers/services.js'
import { sleep, waitUntil } from '../helpers/system.js'

const { vhost, url } = await createVhost(t)
const EXCHANGE = 'bm.outgoing'

async function setup (t: Test, opts: { unbindGraceMs?: number, poolSize?: number } = {}) {
  const name = `bm-${Math.random().toString(36).slice(2, 8)}`
  const connection = new Connection({ url, connectionName: name, retryLow: 100, retryHigh: 500 })
  connection.on('error', () => {})
  await connection.exchangeDeclare({ exchange: EXCHANGE, type: 'direct', durable: true })
  const received: AsyncMessage[] = []
  const manager = new BindingManager({ connection, exchange: EXCHANGE, onMessage: (m) => received.push(m), log: silentLogger, unbindGraceMs: opts.unbindGraceMs ?? 0, poolSize: opts.poolSize ?? 4 })
  t.teardown(async () => {
    await manager.close()
    await connection.close()
  })
  await waitUntil(() => manager.settled, 10_000, 'queue ready')
  const keysOnBroker = async () => (await listBindings(vhost, EXCHANGE)).filter((b) => b.queue === manager.queue).map((b) => b.routingKey).sort()
  return { connection, manager, received, name, keysOnBroker }
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
  const { connection, manager, received } = await setup(t)
  await manager.acquire('user:x')
  const pub = connection.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  await pub.send({ exchange: EXCHANGE, routingKey: 'user:x' }, { hello: 'x' })
  await pub.send({ exchange: EXCHANGE, routingKey: 'user:y' }, { hello: 'y' })
  await waitUntil(() => received.length >= 1)
  await sleep(200)
  t.same(received.map((m) => m.body), [{ hello: 'x' }])
})

t.test('a lazy unbind absorbs a quick re-acquire', async (t) => {
  const { manager, keysOnBroker } = await setup(t, { unbindGraceMs: 2500 })
  await manager.acquire('user:flap')
  manager.release('user:flap')
  await sleep(100)
  await manager.acquire('user:flap')
  await sleep(2600)
  t.same(await keysOnBroker(), ['user:flap'])
  t.equal(manager.stats().unbinds, 0, 'no unbind was sent')
  manager.release('user:flap')
  t.same(await keysOnBroker(), ['user:flap'], 'still inside the grace period')
  await waitUntil(() => manager.stats().unbinds === 1, 5000)
  t.same(await keysOnBroker(), [])
})

t.test('after a broker connection loss, the new queue gets every key back before settling', async (t) => {
  const { manager, keysOnBroker, name } = await setup(t, { poolSize: 8 })
  const keys = Array.from({ length: 300 }, (_, i) => (i % 3 === 0 ? `channel:${i}` : `user:u${i}`))
  await Promise.all(keys.map((k) => manager.acquire(k)))
  const before = manager.queue
  t.equal((await keysOnBroker()).length, 300)
  let rebound: { keys: number, durationMs: number } | undefined
  manager.on('rebound', (info) => { rebound = info })
  t.equal(await closeConnections(vhost, name), 1)
  await waitUntil(() => !manager.settled, 5000, 'unsettled after the loss')
  await waitUntil(() => manager.settled, 20_000, 'settled again')
  t.not(manager.queue, before, 'the broker gave us a new server-named queue')
  t.same(await keysOnBroker(), [...keys].sort(), 'every key is bound to the new queue')
  t.notOk((await listQueues(vhost)).some((q) => q.name === before), 'the old exclusive queue is gone')
  t.equal(rebound?.keys, 300)
  t.match(manager.stats(), { desired: 300, missing: 0, generation: 2 })
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
  // pool (3) + consumer (1) + the connection's own lazy channel used by setup's exchangeDeclare
  t.ok(afterBinds <= 5, `at most 5 channels, saw ${afterBinds}`)
  for (let i = 0; i < 200; i++) manager.release(`user:p${i}`)
  await waitUntil(() => manager.stats().unbinds === 200, 10_000)
  t.equal(await channelsOfConnection(), afterBinds, '200 unbinds opened no channel')
  t.equal(manager.stats().binds, 200)
})
