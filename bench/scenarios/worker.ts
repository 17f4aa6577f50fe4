/**
 * worker: the send queues are preloaded with SendCommand envelopes while no worker
 * runs (published as a gateway does: persistent, confirmed, to the incoming
 * exchange, routed by shard), then the workers start and we time how fast they persist
 * them alone. One pass per variant of worker settings (defaults, then tuned).
 * `--workers N`: N send shards, one worker process each.
 */
import { randomUUID } from 'node:crypto'
import { Connection } from 'rabbitmq-client'
import type { RunContext } from '../lib/context.js'
import { envOption, nodeArgsOption, num } from '../lib/context.js'
import { sleep, startWorker } from '../lib/processes.js'
import { readMetric } from '../lib/prom.js'
import { progress, progressEnd, type Row, type ScenarioResult } from '../lib/report.js'
import { onCleanup } from '../lib/cleanup.js'
import { createGroups, createSystem, usageGroups } from '../lib/system.js'
import { queueDepth } from '../lib/services.js'
import { UsageWindow, type UsageReport } from '../lib/usage.js'
import { ENVELOPE_VERSION, type SendCommand } from '../../src/contracts/envelopes.js'
import { sendShard } from '../../src/broker/shards.js'
import { sendRoute } from '../../src/broker/topology.js'

/** Publishes every command as a gateway would; returns the time it took and the queue's depth after. */
async function preload (amqpUrl: string, exchange: string, queues: string[], commands: () => Iterable<SendCommand>, total: number, label: string): Promise<{ ms: number, depth: number }> {
  const conn = new Connection({ url: amqpUrl, noDelay: true, frameMax: 131_072 })
  onCleanup('close preload connection', () => conn.close())
  const pub = conn.createPublisher({ confirm: true, maxAttempts: 1 })
  const started = performance.now()
  const window = 2000
  const inflight = new Set<Promise<void>>()
  let sent = 0
  for (const command of commands()) {
    const p: Promise<void> = pub.send({ exchange, routingKey: sendRoute(sendShard(command, queues.length)), durable: true, contentType: 'application/json', messageId: command.clientMsgId }, command)
      .finally(() => inflight.delete(p))
    inflight.add(p)
    sent++
    if (inflight.size >= window) await Promise.race(inflight)
    if (sent % 5000 === 0) progress(`${label}: preloading ${sent}/${total}`)
  }
  await Promise.all(inflight)
  const ms = performance.now() - started
  progressEnd()
  await pub.close()
  let depth = 0
  for (const queue of queues) depth += (await conn.queueDeclare({ queue, passive: true })).messageCount
  await conn.close()
  return { ms, depth }
}

const cpuPerMsg = (u: UsageReport, group: string, n: number) => n > 0 ? Math.round((u.groups.find((g) => g.name === group)?.cpuSeconds ?? 0) * 1e6 / n) : 0

export async function worker (ctx: RunContext): Promise<ScenarioResult> {
  const messages = num(ctx, 'messages', 50_000, 5000)
  const users = num(ctx, 'users', 1000, 100)
  const target = String(ctx.opts.target ?? 'dm')
  const shards = num(ctx, 'workers', 1, 1)
  const variants: Array<{ name: string, env: Record<string, string> }> = [
    { name: 'defaults', env: envOption(ctx, 'worker-env') },
    { name: 'tuned', env: { WORKER_PREFETCH: '2000', WORKER_BATCH_MAX: '1000', WORKER_BATCH_WAIT_MS: '5', ...envOption(ctx, 'tuned-env') } }
  ].filter((v) => ctx.opts.variants === undefined || String(ctx.opts.variants).split(',').includes(v.name))

  // The worker declares the topology; stopped at once so the queue only fills.
  const sys = await createSystem(ctx, { gateways: 0, workers: shards, tag: 'ours' })
  await Promise.all(sys.workers.map((w) => w.stop()))
  const exchange = `${sys.env.prefix}.incoming`
  const queues = sys.sendQueues
  const ids = Array.from({ length: users }, (_, i) => `w${i}`)
  // dm: user i writes to i^1. group: channels of 10, every member writes to its channel.
  const channelOf: string[] = []
  if (target === 'group') {
    const groups = Array.from({ length: Math.floor(users / 10) }, (_, c) => ids.slice(c * 10, c * 10 + 10))
    const chIds = await createGroups(sys.sql, groups, 'worker')
    groups.forEach((g, c) => g.forEach(() => channelOf.push(chIds[c]!)))
  }
  const content = 'x'.repeat(100)
  function * commands (): Iterable<SendCommand> {
    for (let i = 0; i < messages; i++) {
      const u = i % ids.length
      const base = { v: ENVELOPE_VERSION, senderId: ids[u]!, clientMsgId: randomUUID(), content, sentAt: Date.now() } as const
      yield target === 'group' ? { ...base, channelId: channelOf[u]! } : { ...base, toUserId: ids[u ^ 1]! }
    }
  }

  const rows: Row[] = []
  const usages: Array<{ phase: string } & UsageReport> = []
  const results: Array<{ variant: string, env: Record<string, string>, steadyPerSec: number, overallPerSec: number, seconds: number, persisted: number }> = []
  let before = 0
  for (const v of variants) {
    const { ms: preloadMs, depth } = await preload(sys.env.amqpUrl, exchange, queues, commands, messages, v.name)
    const spawned = performance.now()
    const sharding = (i: number): Record<string, string> => shards > 1 ? { WORKER_SHARDS: String(shards), WORKER_CONSUME_SHARDS: String(i) } : {}
    const ws = await Promise.all(Array.from({ length: shards }, (_, i) =>
      startWorker(shards > 1 ? `worker-${v.name}-${i}` : `worker-${v.name}`, sys.env, { logDir: ctx.logDir, cpuProfile: ctx.cpuProfile, nodeArgs: nodeArgsOption(ctx, 'worker-node-args') }, { ...sharding(i), ...v.env }, false)))
    const sum = async (metric: string) => (await Promise.all(ws.map((w) => readMetric(`${w.url}/metrics`, metric)))).reduce((a, b) => a + b, 0)
    const usage = new UsageWindow(usageGroups({ workers: ws })).start()
    const marks: Array<{ t: number, n: number }> = []
    let n = 0
    while (n < messages && performance.now() - spawned < 180_000) {
      await sleep(100)
      const exited = ws.find((w) => w.child.exitCode !== null)
      if (exited !== undefined) throw new Error(`worker exited; see ${exited.log}`)
      try { n = await sum('chat_worker_messages_persisted_total') } catch { continue }
      marks.push({ t: performance.now(), n })
      progress(`${v.name}: persisted ${n}/${messages}`)
    }
    progressEnd()
    const u = usage.stop()
    usages.push({ phase: v.name, ...u })
    const at = (share: number) => marks.find((m) => m.n >= messages * share)
    const a = at(0.1)
    const b = at(0.9)
    const steady = a !== undefined && b !== undefined && b.t > a.t ? (b.n - a.n) / ((b.t - a.t) / 1000) : 0
    const last = marks[marks.length - 1]
    const seconds = last === undefined ? 0 : (last.t - spawned) / 1000
    // Stopping now would hand back the last batches before their acks: wait until the queue is empty.
    const drainStart = performance.now()
    while (performance.now() - drainStart < 30_000 && await queueDepth(sys.vhost, queues).catch(() => 0) > 0) await sleep(250)
    const batches = await sum('chat_worker_batch_size_count')
    const dbSeconds = await sum('chat_worker_db_batch_seconds_sum')
    await Promise.all(ws.map((w) => w.stop()))
    const [row] = await sys.sql<Array<{ n: number, u: number }>>`select count(*)::int as n, count(distinct (sender_id, client_msg_id))::int as u from messages`
    const [gaps] = await sys.sql<Array<{ n: number }>>`select count(*)::int as n from (select channel_id from messages group by channel_id having max(seq) <> count(*)) g`
    const stored = (row?.n ?? 0) - before
    before = row?.n ?? 0
    results.push({ variant: v.name, env: v.env, steadyPerSec: steady, overallPerSec: seconds > 0 ? n / seconds : 0, seconds, persisted: n })
    rows.push({
      variant: v.name,
      settings: Object.entries(v.env).map(([k, val]) => `${k}=${val}`).join(' ') || '(defaults)',
      preloaded: depth,
      'preload/s': Math.round(messages / (preloadMs / 1000)),
      'persisted/s (10→90 %)': Math.round(steady),
      'incl. start s': Math.round(seconds * 10) / 10,
      'rows stored': stored,
      'duplicate rows': (row?.n ?? 0) - (row?.u ?? 0),
      'seq gaps': gaps?.n ?? 0,
      'batch avg': batches > 0 ? Math.round(n / batches) : 0,
      'db ms/batch': batches > 0 ? Math.round(dbSeconds / batches * 10000) / 10 : 0,
      'queue left': await queueDepth(sys.vhost, queues).catch(() => -1),
      // CPU per message holds up better than msg/s on a shared machine.
      'worker CPU µs/msg': ws.reduce((a, w) => a + cpuPerMsg(u, w.name, n), 0),
      'rabbitmq µs/msg': cpuPerMsg(u, 'rabbitmq', n),
      'postgres µs/msg': cpuPerMsg(u, 'postgres', n)
    })
  }
  const best = Math.max(0, ...results.map((r) => r.steadyPerSec))
  return {
    scenario: 'worker',
    title: `worker: ${messages} ${target} sends preloaded, then ${shards > 1 ? `${shards} workers (one per send shard)` : 'one worker persists'}${shards > 1 ? ' persist' : ''} them alone`,
    rows,
    targets: [{ name: 'worker persisted messages/s in batch mode', target: '≥ 20,000/s', measured: results.map((r) => `${r.variant}: ${Math.round(r.steadyPerSec)}/s`).join(', '), met: ctx.quick ? null : best >= 20_000 }],
    usage: usages,
    notes: ['deliveries are published to the outgoing exchange as usual; no gateway is bound, so the broker drops them after confirming'],
    details: { messages, users, target, workers: shards, results }
  }
}
