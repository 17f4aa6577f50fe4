/**
 * What the gateway's route exchange costs RabbitMQ per delivery: the same transient
 * publishes (routing keys spread over 10,000 bound `user:` keys, confirms, one consumer
 * without acks) routed either straight to the queue (keys bound on the queue, as before
 * routes) or through a topic route exchange bound with the keys and feeding the queue
 * with `#` (as the binding manager does now). Reads beam.smp's CPU from /proc.
 *
 *   node --import tsx bench/tools/route-cost.ts [rounds=3]
 *   AMQP_PORT=5673 RABBITMQCTL=/path/to/ctl …   # another node on this host
 *
 * Runs in its own vhost, deleted afterwards.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { Connection } from 'rabbitmq-client'
import { coalesceWrites } from '../../src/broker/socket.js'
import { listenerPid } from '../lib/usage.js'

const port = Number(process.env.AMQP_PORT ?? 5672)

const vhost = `bench-route-cost-${process.pid}`
const rabbitmqctl = (...args: string[]) => execFileSync(process.env.RABBITMQCTL ?? 'rabbitmqctl', ['-q', ...args]).toString()
rabbitmqctl('add_vhost', vhost)
rabbitmqctl('set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*')
const beam = listenerPid(port)
if (beam === undefined) throw new Error(`nothing listens on 127.0.0.1:${port}`)
const ticks = () => {
  const f = readFileSync(`/proc/${beam}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return Number(f[11]) + Number(f[12])
}
const rabbit = new Connection({ url: `amqp://guest:guest@127.0.0.1:${port}/${vhost}`, noDelay: true })
coalesceWrites(rabbit)
const N = Number(process.env.N ?? 20_000)
const KEYS = 10_000
const rounds = Number(process.argv[2] ?? 3)

async function bindAll (bind: (key: string) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < KEYS; i += 200) await Promise.all(Array.from({ length: 200 }, (_, j) => bind(`user:${i + j}`)))
}

async function run (variant: 'queue' | 'route' | 'topic-lease' | 'fanout' | 'fanout-lease' | 'headers'): Promise<{ rate: number, brokerUs: number }> {
  const outgoing = `out.${variant}`
  await rabbit.exchangeDeclare({ exchange: outgoing, type: 'direct', durable: true })
  let got = 0
  let done = () => {}
  const finished = new Promise<void>((resolve) => { done = resolve })
  const sub = rabbit.createConsumer({ queue: '', queueOptions: { exclusive: true, autoDelete: true }, noAck: true }, () => { if (++got === N) done() })
  await new Promise((resolve) => sub.once('ready', resolve))
  const queue = sub.queue
  if (variant === 'queue') {
    await bindAll((routingKey) => rabbit.queueBind({ queue, exchange: outgoing, routingKey }))
  } else if (variant === 'headers') {
    // A headers route: the queue's binding (x-match all, no header) takes every delivery;
    // the lease's requires a header no delivery carries.
    const route = `headers.${process.pid}`
    const lease = `lease.${process.pid}`
    await rabbit.exchangeDeclare({ exchange: route, type: 'headers', durable: true, autoDelete: true })
    await rabbit.queueDeclare({ queue: lease, durable: true, arguments: { 'x-expires': 60_000 } })
    await rabbit.queueBind({ queue: lease, exchange: route, routingKey: '', arguments: { 'x-match': 'all', 'x-chat-lease': 'never' } })
    await rabbit.queueBind({ queue, exchange: route, routingKey: '', arguments: { 'x-match': 'all' } })
    await bindAll((routingKey) => rabbit.exchangeBind({ destination: route, source: outgoing, routingKey }))
  } else if (variant === 'topic-lease' || variant === 'fanout-lease') {
    // What the binding manager declares (topic; fanout before 2026-12-02): a route feeding
    // the queue and a holder (direct) that holds the lease queue by a key no delivery
    // carries, so every delivery visits it and goes no further.
    const type = variant === 'topic-lease' ? 'topic' : 'fanout'
    const route = `${type}.${process.pid}`
    const holder = `holder.${process.pid}`
    const lease = `lease.${process.pid}`
    await rabbit.exchangeDeclare({ exchange: route, type, durable: true, autoDelete: true })
    await rabbit.exchangeDeclare({ exchange: holder, type: 'direct', durable: true, autoDelete: true })
    await rabbit.queueDeclare({ queue: lease, durable: true, arguments: { 'x-expires': 60_000 } })
    await rabbit.queueBind({ queue: lease, exchange: holder, routingKey: 'lease' })
    await rabbit.exchangeBind({ destination: holder, source: route, routingKey: 'lease' })
    await rabbit.queueBind({ queue, exchange: route, routingKey: type === 'topic' ? '#' : '' })
    await bindAll((routingKey) => rabbit.exchangeBind({ destination: route, source: outgoing, routingKey }))
  } else if (variant === 'fanout') {
    // A fanout route: the lease would have to hang off a second exchange, or it would get every delivery.
    const route = `fanout.${process.pid}`
    await rabbit.exchangeDeclare({ exchange: route, type: 'fanout', durable: true, autoDelete: true })
    await rabbit.queueBind({ queue, exchange: route, routingKey: '' })
    await bindAll((routingKey) => rabbit.exchangeBind({ destination: route, source: outgoing, routingKey }))
  } else {
    const route = `route.${process.pid}`
    await rabbit.exchangeDeclare({ exchange: route, type: 'topic', durable: true, autoDelete: true })
    await rabbit.queueBind({ queue, exchange: route, routingKey: '#' })
    await bindAll((routingKey) => rabbit.exchangeBind({ destination: route, source: outgoing, routingKey }))
  }
  const pub = rabbit.createPublisher({ confirm: true })
  const t0 = ticks()
  const w0 = Date.now()
  for (let i = 0; i < N; i += 200) {
    await Promise.all(Array.from({ length: 200 }, (_, j) => pub.send({ exchange: outgoing, routingKey: `user:${(i + j) % KEYS}`, mandatory: true }, { v: 1, content: 'hello there, a typical chat message', senderId: 'abc', clientMsgId: 'x' })))
  }
  await finished
  const seconds = (Date.now() - w0) / 1000
  const result = { rate: N / seconds, brokerUs: ((ticks() - t0) * 10_000) / N }
  await pub.close()
  await sub.close()
  await rabbit.exchangeDelete({ exchange: outgoing })
  return result
}

try {
  for (let r = 0; r < rounds; r++) {
    for (const variant of (process.env.VARIANTS ?? 'queue,route').split(',') as Array<'queue' | 'route' | 'topic-lease' | 'fanout' | 'fanout-lease' | 'headers'>) {
      const { rate, brokerUs } = await run(variant)
      console.log(`round ${r + 1} ${variant.padEnd(6)} ${rate.toFixed(0).padStart(6)} msg/s  broker ${brokerUs.toFixed(0).padStart(4)} µs/msg`)
    }
  }
} finally {
  await rabbit.close()
  rabbitmqctl('delete_vhost', vhost)
}
