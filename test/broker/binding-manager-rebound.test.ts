/**
 * 'rebound' (which makes the gateway re-read memberships and tell its sockets to catch
 * up) must fire for every reconnect, also when the last key still missing is released
 * instead of bound. Which bind finishes last cannot be chosen against a real broker, so
 * the manager runs here on a connection held in hand; test/broker/binding-manager.test.ts
 * covers it against RabbitMQ.
 */
import { EventEmitter } from 'node:events'
import type { Connection } from 'rabbitmq-client'
import t from 'tap'
import { BindingManager } from '../../src/broker/binding-manager.js'
import { silentLogger } from '../../src/log.js'

class HeldConsumer extends EventEmitter {
  queue = ''
  async close (): Promise<void> {}
}

t.test('a reconnect whose last missing key is released still emits rebound', async (t) => {
  const consumer = new HeldConsumer()
  const held = new Map<string, () => void>()
  let holdKey: string | undefined
  let routeExists = false
  const channel = {
    active: true,
    exchangeBind: async (p: { routingKey: string }) => {
      if (p.routingKey === holdKey) await new Promise<void>((resolve) => held.set(p.routingKey, resolve))
    },
    exchangeUnbind: async () => {},
    close: async () => {}
  }
  const connection = {
    createConsumer: () => consumer,
    acquire: async () => channel,
    queueDeclare: async () => {},
    exchangeDeclare: async () => { routeExists = true },
    exchangeDelete: async () => {},
    // The route check: binding the lease queue to the route's holder fails once they are gone.
    queueBind: async (p: { routingKey: string }) => {
      if (p.routingKey === 'lease' && !routeExists) throw Object.assign(new Error('no route'), { code: 'NOT_FOUND' })
    },
    exchangeBind: async () => {}
  }
  const manager = new BindingManager({ connection: connection as unknown as Connection, exchange: 'x', route: { exchange: 'x.gateway.1', holder: 'x.gateway.1.holder', lease: 'x.gateway.1.lease', drops: 'x.gateway.1.drops' }, onMessage: () => {}, log: silentLogger, poolSize: 4, unbindGraceMs: 0 })
  t.teardown(() => manager.close())
  const rebounds: number[] = []
  manager.on('rebound', ({ generation }: { generation: number }) => rebounds.push(generation))
  const turn = () => new Promise((resolve) => setTimeout(resolve, 20))

  consumer.queue = 'q1'
  consumer.emit('ready')
  await Promise.all([manager.acquire('user:a'), manager.acquire('user:b')])
  t.same(rebounds, [1])

  // The outage outlasted the lease: the route is gone and every key must be bound again.
  routeExists = false
  holdKey = 'user:b'
  consumer.queue = 'q2'
  consumer.emit('ready')
  await manager.whenBound('user:a')
  await turn()
  t.equal(manager.settled, false, 'user:b is still being bound on the new queue')
  manager.release('user:b')
  await turn()
  t.equal(manager.settled, true)
  t.same(rebounds, [1, 2], 'rebound fires when the last missing key goes away')
  held.get('user:b')?.()
  await turn()
  t.same(rebounds, [1, 2], 'and only once')
})
