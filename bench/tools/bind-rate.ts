/**
 * How fast RabbitMQ binds keys to a fresh exclusive queue, alone and while it
 * deletes the previous queue's bindings (what a gateway's rebind after a connection
 * cut runs into). Binds run on N channels in parallel, one RPC in flight each, as
 * the binding manager does. Uses a vhost of its own, deleted at the end.
 *
 *   node --import tsx bench/tools/bind-rate.ts [--keys 11000] [--channels 64]
 */
import { parseArgs } from 'node:util'
import { Connection, type Channel } from 'rabbitmq-client'
import { cleanupAll, installSignalHandlers } from '../lib/cleanup.js'
import { amqpUrl, createVhost } from '../lib/services.js'

const { values } = parseArgs({ options: { keys: { type: 'string', default: '11000' }, channels: { type: 'string', default: '64' } } })
const keys = Array.from({ length: Number(values.keys) }, (_, i) => `user:k${i}`)
const lanes = Number(values.channels)
installSignalHandlers()

async function bindAll (conn: Connection, queue: string, exchange: string): Promise<number> {
  const channels: Channel[] = await Promise.all(Array.from({ length: lanes }, () => conn.acquire()))
  let next = 0
  const started = performance.now()
  await Promise.all(channels.map(async (ch) => {
    while (next < keys.length) await ch.queueBind({ queue, exchange, routingKey: keys[next++]! })
  }))
  const ms = performance.now() - started
  await Promise.all(channels.map((ch) => ch.close()))
  return ms
}

try {
  const vhost = await createVhost(`bench_bindrate_${Date.now().toString(36)}`)
  const url = amqpUrl(vhost)
  const exchange = 'bench.outgoing'
  const first = new Connection({ url, noDelay: true })
  await first.exchangeDeclare({ exchange, type: 'direct', durable: true })
  const q1 = (await first.queueDeclare({ queue: '', exclusive: true, autoDelete: true })).queue
  const alone = await bindAll(first, q1, exchange)
  process.stdout.write(`bind ${keys.length} keys to a fresh queue on ${lanes} channels: ${(alone / 1000).toFixed(2)} s (${Math.round(keys.length / (alone / 1000))}/s)\n`)
  // What a gateway whose queue survived the cut would do: bind again what is already bound.
  const again = await bindAll(first, q1, exchange)
  process.stdout.write(`bind the same keys again to the queue that still has them: ${(again / 1000).toFixed(2)} s (${Math.round(keys.length / (again / 1000))}/s)\n`)
  // Drop the first connection (its exclusive queue and every binding go with it) and
  // bind the same keys to a new queue at once, as a gateway does after a cut.
  const second = new Connection({ url, noDelay: true })
  const q2 = (await second.queueDeclare({ queue: '', exclusive: true, autoDelete: true })).queue
  first.unsafeDestroy()
  const during = await bindAll(second, q2, exchange)
  process.stdout.write(`same, while the broker deletes the old queue's ${keys.length} bindings: ${(during / 1000).toFixed(2)} s (${Math.round(keys.length / (during / 1000))}/s)\n`)
  const third = new Connection({ url, noDelay: true })
  const q3 = (await third.queueDeclare({ queue: '', exclusive: true, autoDelete: true })).queue
  await new Promise((resolve) => setTimeout(resolve, 100))
  const t0 = performance.now()
  await second.close()
  const closeMs = performance.now() - t0
  await new Promise((resolve) => setTimeout(resolve, 10_000))
  const after = await bindAll(third, q3, exchange)
  process.stdout.write(`closing a connection whose queue holds ${keys.length} bindings took ${(closeMs / 1000).toFixed(2)} s; binding again 10 s later: ${(after / 1000).toFixed(2)} s\n`)
  await third.close()
} finally {
  await cleanupAll()
}
