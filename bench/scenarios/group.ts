/**
 * group: channels of 10 and of 100 members, members spread evenly over the gateways
 * (user i on gateway i % n), a few senders per channel. A ramp in deliveries/s per
 * channel size: each step offers deliveries/size messages per second.
 */
import { LoadPool } from '../load/pool.js'
import type { RunContext } from '../lib/context.js'
import { envOption, num, numList } from '../lib/context.js'
import { phaseRow, runPhase, type PhaseResult } from '../lib/phase.js'
import type { ScenarioResult } from '../lib/report.js'
import { createGroups, createSystem, usageGroups } from '../lib/system.js'
import { checkDeliveries, checkPersisted } from '../lib/verify.js'
import { queueDepth } from '../lib/services.js'

export async function group (ctx: RunContext): Promise<ScenarioResult> {
  const users = num(ctx, 'users', 2000, 200)
  const gateways = num(ctx, 'gateways', 2)
  const sizes = numList(ctx, 'sizes', [10, 100])
  const sendersPerChannel = num(ctx, 'senders', 2)
  const steps = numList(ctx, 'deliveries', [10_000, 25_000, 50_000, 60_000, 75_000], [2000, 5000])
  const stepMs = num(ctx, 'step', 8, 3) * 1000

  const sys = await createSystem(ctx, { gateways, workers: num(ctx, 'workers', 1, 1), gatewayEnv: envOption(ctx, 'gateway-env'), workerEnv: envOption(ctx, 'worker-env') })
  const ids = Array.from({ length: users }, (_, i) => `g${i}`)
  // Channels of each size over consecutive users; members alternate gateways.
  const channelsBySize = new Map<number, { id: string, members: string[] }[]>()
  const members = new Map<string, string[]>()
  for (const size of sizes) {
    const groups = Array.from({ length: Math.floor(users / size) }, (_, c) => ids.slice(c * size, (c + 1) * size))
    const channelIds = await createGroups(sys.sql, groups, `size${size}`)
    channelsBySize.set(size, groups.map((m, c) => ({ id: channelIds[c]!, members: m })))
    groups.forEach((m, c) => members.set(channelIds[c]!, m))
  }
  const pool = LoadPool.start(num(ctx, 'agents', 2))
  const placements = pool.add(ids.map((userId, i) => ({ userId, url: sys.gateways[i % gateways]!.url })))
  const conn = await pool.connect({ concurrency: 200 })
  const connected = await pool.stats()
  if (connected.ready !== ids.length) throw new Error(`only ${connected.ready}/${ids.length} sockets became ready`)
  const index = new Map(ids.map((u, i) => [u, i]))
  const usage = usageGroups({ gateways: sys.gateways, workers: sys.workers, loadPids: pool.pids })

  const results: PhaseResult[] = []
  const best = new Map<number, number>()
  let first = true
  for (const size of sizes) {
    const channels = channelsBySize.get(size)!
    const senders = channels.flatMap((ch) => ch.members.slice(0, sendersPerChannel).map((u) => ({ placement: placements[index.get(u)!]!, target: { channelId: ch.id } })))
    const common = { pool, senders, fanout: size, usage, workerUrls: sys.workers.map((w) => w.url) }
    if (first) {
      results.push(await runPhase({ ...common, label: 'warm-up', ratePerSec: 200, durationMs: 2000 }))
      first = false
    }
    for (const deliveries of steps) {
      const rate = Math.max(1, Math.round(deliveries / size))
      const res = await runPhase({ ...common, label: `size ${size}: ${deliveries}/s`, ratePerSec: rate, durationMs: stepMs, drainMaxMs: 30_000 })
      results.push(res)
      const kept = res.deliveredPerSec >= 0.95 * deliveries && res.shed === 0
      if (kept) best.set(size, Math.max(best.get(size) ?? 0, res.deliveredPerSec))
      if (!kept || res.latency.delivery.p99Ms > 2000) break
    }
  }

  const report = await pool.report()
  const delivery = checkDeliveries(report, (_s, channelId) => members.get(channelId) ?? [])
  const persisted = await checkPersisted(sys.sql, report, 'messages', await queueDepth(sys.vhost, sys.sendQueues).catch(() => 0))
  await pool.disconnect()
  const top = Math.max(0, ...best.values())
  return {
    scenario: 'group',
    title: `group: ${users} users over ${gateways} gateways, channels of ${sizes.join(' and ')}, ${sendersPerChannel} senders per channel (connect ${(conn.durationMs / 1000).toFixed(1)} s)`,
    rows: results.map((r) => ({ ...phaseRow(r), 'msg/s': Math.round(r.ackedPerSec) })),
    targets: [{
      name: 'group deliveries/s across the gateways (highest step kept with nothing shed)',
      target: '≥ 50,000/s',
      measured: [...best].map(([s, d]) => `size ${s}: ${Math.round(d)}/s`).join(', ') || 'no step kept up',
      met: ctx.quick ? null : top >= 50_000 && delivery.ok && persisted.ok
    }],
    usage: results.filter((r) => r.label !== 'warm-up').map((r) => ({ phase: r.label, ...r.usage })),
    notes: [
      'delivered/s counts message:new received by all sockets (sender echo included) during the step; latency is send→receive at the other members',
      `deliveries: expected ${delivery.expected}, unique ${delivery.unique}, missing ${delivery.missing}, duplicates ${delivery.duplicates}, extra ${delivery.extra}`,
      `database: ${persisted.rows} rows for ${persisted.acked} acked sends, lost ${persisted.lost}, still queued ${persisted.queuedAtEnd}, duplicate rows ${persisted.duplicateRows}, seq gaps ${persisted.seqGaps}`
    ],
    details: { users, gateways, sizes, sendersPerChannel, phases: results.map(({ report: _r, ...rest }) => rest), delivery, persisted }
  }
}
