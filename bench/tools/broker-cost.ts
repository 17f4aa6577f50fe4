/**
 * RabbitMQ's CPU per message, alone: publish N messages in bursts of 200 with confirms to
 * one queue, consume them on the same connection, read beam.smp's CPU from /proc.
 *
 *   node --import tsx bench/tools/broker-cost.ts            # rabbitmq-client as is
 *   COALESCE=1 node --import tsx bench/tools/broker-cost.ts # with src/broker/socket.ts
 *   AMQP_PORT=5673 …                                         # another node on this host
 *
 * Uses the default vhost with queues named micro.* (deleted afterwards).
 */
import { readFileSync } from 'node:fs'
import { Connection } from 'rabbitmq-client'
import { coalesceWrites } from '../../src/broker/socket.js'
import { listenerPid } from '../lib/usage.js'

const port = Number(process.env.AMQP_PORT ?? 5672)
const beam = listenerPid(port)
if (beam === undefined) throw new Error(`nothing listens on 127.0.0.1:${port}`)
const ticks = () => {
  const f = readFileSync(`/proc/${beam}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return Number(f[11]) + Number(f[12])
}
const rabbit = new Connection({ url: `amqp://guest:guest@127.0.0.1:${port}`, noDelay: true })
if (process.env.COALESCE !== undefined) coalesceWrites(rabbit)
const N = 20_000

async function run (name: string, o: { persistent: boolean, noAck: boolean, mandatory?: boolean, queueArgs?: Record<string, unknown> }): Promise<void> {
  const queue = `micro.${name}`
  await rabbit.queueDelete(queue).catch(() => {})
  const queueOptions = { durable: o.persistent, exclusive: !o.persistent, ...(o.queueArgs !== undefined ? { arguments: o.queueArgs } : {}) }
  await rabbit.queueDeclare({ queue, ...queueOptions })
  let got = 0
  let done = () => {}
  const finished = new Promise<void>((resolve) => { done = resolve })
  const sub = rabbit.createConsumer({ queue, queueOptions, noAck: o.noAck, ...(o.noAck ? {} : { qos: { prefetchCount: 500 }, concurrency: 500 }) }, () => { if (++got === N) done() })
  await new Promise((resolve) => sub.once('ready', resolve))
  const pub = rabbit.createPublisher({ confirm: true })
  const t0 = ticks()
  const c0 = process.cpuUsage()
  const w0 = Date.now()
  for (let i = 0; i < N; i += 200) {
    await Promise.all(Array.from({ length: 200 }, () => pub.send({ routingKey: queue, durable: o.persistent, mandatory: o.mandatory === true }, { v: 1, content: 'hello there, a typical chat message', senderId: 'abc', clientMsgId: 'x' })))
  }
  await finished
  const c1 = process.cpuUsage(c0)
  const seconds = (Date.now() - w0) / 1000
  // /proc ticks are 10 ms.
  console.log(`${name.padEnd(28)} ${(N / seconds).toFixed(0).padStart(6)} msg/s  broker ${(((ticks() - t0) * 10_000) / N).toFixed(0).padStart(4)} µs/msg  client ${((c1.user + c1.system) / N).toFixed(0).padStart(4)} µs/msg`)
  await sub.close()
  await pub.close()
  await rabbit.queueDelete(queue)
}

await run('transient-exclusive-noack', { persistent: false, noAck: true })
await run('transient-exclusive-ack', { persistent: false, noAck: false })
await run('persistent-classic-ack', { persistent: true, noAck: false })
await run('persistent-quorum-ack', { persistent: true, noAck: false, queueArgs: { 'x-queue-type': 'quorum' } })
await run('persistent-quorum-ack-mand', { persistent: true, noAck: false, mandatory: true, queueArgs: { 'x-queue-type': 'quorum' } })
await rabbit.close()
