import { Connection } from 'rabbitmq-client'
import { readFileSync } from 'node:fs'
import { execSync } from 'node:child_process'
const beam = execSync('pgrep -x beam.smp').toString().trim().split('\n').find((p) => p !== String(process.pid))
const ticks = () => { const f = readFileSync(`/proc/${beam}/stat`, 'utf8').split(') ')[1].split(' '); return Number(f[11]) + Number(f[12]) }
const self = () => process.cpuUsage()
const rabbit = new Connection({ url: 'amqp://guest:guest@127.0.0.1:5672', noDelay: true })
if (process.env.COALESCE) { const { coalesceWrites } = await import('./dist/src/broker/coalesce.js'); coalesceWrites(rabbit) }
const N = 20000
async function run (name, { persistent, queueArgs, noAck, mandatory }) {
  const q = `micro.${name}`
  await rabbit.queueDelete(q).catch(() => {})
  await rabbit.queueDeclare({ queue: q, durable: persistent, exclusive: !persistent, arguments: queueArgs })
  let got = 0
  let done
  const finished = new Promise((r) => { done = r })
  const sub = rabbit.createConsumer({ queue: q, queueOptions: { durable: persistent, exclusive: !persistent, arguments: queueArgs }, noAck, qos: noAck ? undefined : { prefetchCount: 500 }, concurrency: noAck ? undefined : 500 }, () => { if (++got === N) done() })
  await new Promise((r) => sub.once('ready', r))
  const pub = rabbit.createPublisher({ confirm: true })
  const t0 = ticks(); const c0 = self(); const w0 = Date.now()
  for (let i = 0; i < N; i += 200) await Promise.all(Array.from({ length: 200 }, () => pub.send({ routingKey: q, durable: persistent, mandatory }, { v: 1, content: 'hello there, a typical chat message', senderId: 'abc', clientMsgId: 'x' })))
  await finished
  const t1 = ticks(); const c1 = self(); const w1 = Date.now()
  console.log(`${name.padEnd(28)} ${(N / ((w1 - w0) / 1000)).toFixed(0).padStart(6)} msg/s  broker ${((t1 - t0) * 10000 / N).toFixed(0).padStart(4)} µs/msg  client ${(((c1.user - c0.user) + (c1.system - c0.system)) / N).toFixed(0).padStart(4)} µs/msg`)
  await sub.close(); await pub.close()
  await rabbit.queueDelete(q)
}
await run('transient-exclusive-noack', { persistent: false, noAck: true })
await run('transient-exclusive-ack', { persistent: false, noAck: false })
await run('persistent-classic-ack', { persistent: true, noAck: false })
await run('persistent-quorum-ack', { persistent: true, noAck: false, queueArgs: { 'x-queue-type': 'quorum' } })
await run('persistent-quorum-ack-mand', { persistent: true, noAck: false, mandatory: true, queueArgs: { 'x-queue-type': 'quorum' } })
await rabbit.close()
