/**
 * BindingManager.close() at its edges: the connection lost while it waits for a
 * basic.cancel, and a socket corked by another write of the same event-loop turn (the
 * production connection coalesces writes). Either way close() must finish its work:
 * every consumer closed, and route, holder and lease deleted while the broker is there.
 */
import t from 'tap'
import { Connection } from 'rabbitmq-client'
import { BindingManager } from '../../src/broker/binding-manager.js'
import { openConnection } from '../../src/broker/connection.js'
import { isOpen } from '../../src/broker/socket.js'
import { silentLogger } from '../../src/log.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { AMQP_PORT, createVhost, listQueues, rabbitmqctl } from '../helpers/services.js'
import { sleep, waitUntil } from '../helpers/system.js'

const { vhost, url } = await createVhost(t)
const EXCHANGE = 'bm.outgoing'
const settle = <T>(p: Promise<T>, ms: number) => Promise.race([p.then(() => 'resolved', (err: unknown) => `rejected: ${String((err as Error).message)}`), sleep(ms).then(() => 'pending')])

t.test('the connection lost during close(): close() resolves, and no consumer sets up again to hold the connection open', async (t) => {
  const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
  const name = `bml-${Math.random().toString(36).slice(2, 8)}`
  const connection = new Connection({ url: viaProxy(url, proxy), connectionName: name, retryLow: 100, retryHigh: 500 })
  connection.on('error', () => {})
  await connection.exchangeDeclare({ exchange: EXCHANGE, type: 'direct', durable: true })
  const route = { exchange: `bm.gateway.${name}`, holder: `bm.gateway.${name}.holder`, lease: `bm.gateway.${name}.lease`, drops: `bm.gateway.${name}.drops` }
  const manager = new BindingManager({ connection, exchange: EXCHANGE, route, onMessage: () => {}, log: silentLogger, poolSize: 2, unbindGraceMs: 0 })
  await waitUntil(() => manager.settled, 10_000, 'settled')
  await manager.acquire('user:z')

  proxy.freeze(true) // the broker's answer to basic.cancel never comes
  const closing = manager.close()
  await sleep(200)
  proxy.freeze(false)
  proxy.cut() // ...and the connection is lost meanwhile; it reconnects at once
  const closed = await settle(closing, 10_000)
  t.equal(closed, 'resolved', 'BindingManager.close() resolves: ' + closed)
  await sleep(2000) // the reconnect happens; consumers not closed would set up again
  const connClosed = await settle(connection.close(), 10_000)
  t.equal(connClosed, 'resolved', 'Connection.close() resolves (no channel of ours left open): ' + connClosed)
  if (connClosed !== 'resolved') connection.unsafeDestroy()
})

t.test('a write elsewhere on the connection in the same turn: close() still deletes route, holder and lease', async (t) => {
  const name = `bmc-${Math.random().toString(36).slice(2, 8)}`
  // The production connection: openConnection() coalesces writes.
  const connection = openConnection({ url, name, heartbeatSeconds: 10, log: silentLogger })
  t.teardown(() => connection.close())
  await connection.exchangeDeclare({ exchange: EXCHANGE, type: 'direct', durable: true })
  const route = { exchange: `bm.gateway.${name}`, holder: `bm.gateway.${name}.holder`, lease: `bm.gateway.${name}.lease`, drops: `bm.gateway.${name}.drops` }
  const manager = new BindingManager({ connection, exchange: EXCHANGE, route, onMessage: () => {}, log: silentLogger, poolSize: 2, unbindGraceMs: 0 })
  await waitUntil(() => manager.settled, 10_000, 'settled')
  await manager.acquire('user:z')

  // Another user of the same connection writes (here a heartbeat frame, which any AMQP peer
  // may send at any time; in the gateway: BacklogWatch's declares, the drops consumer's acks).
  const socket = (connection as unknown as { _socket: { write: (b: Buffer) => boolean } })._socket
  const HEARTBEAT = Buffer.from([8, 0, 0, 0, 0, 0, 0, 0xce])
  let writing = true
  const writer = () => { if (!writing) return; socket.write(HEARTBEAT); setImmediate(writer) }
  writer()
  t.equal(isOpen(connection), true, 'the connection is open')
  t.equal(connection.ready, false, 'but rabbitmq-client reports a corked socket as not ready')
  await manager.close()
  writing = false

  const exchanges = (await rabbitmqctl('list_exchanges', '-p', vhost, '--no-table-headers', 'name')).split('\n')
  t.notOk(exchanges.includes(route.exchange), 'route deleted by close()')
  t.notOk(exchanges.includes(route.holder), 'holder deleted by close()')
  t.notOk((await listQueues(vhost)).some((q) => q.name === route.lease), 'lease queue deleted by close()')
})
