/**
 * dm: persisted direct messages between users spread over 2 gateways. Users are
 * paired across gateways and both send to each other, so every message crosses
 * gateways once (recipient) and is echoed once (sender's socket).
 *
 * Phases: warm-up (creates the direct channels), a throughput ramp, a fixed-rate
 * latency run, and the sustained run; correctness is checked over all of them.
 */
import { LoadPool } from '../load/pool.js'
import type { RunContext } from '../lib/context.js'
import { num, numList, envOption } from '../lib/context.js'
import { phaseRow, runPhase, type PhaseResult } from '../lib/phase.js'
import type { ScenarioResult } from '../lib/report.js'
import { createSystem, usageGroups } from '../lib/system.js'
import { checkDeliveries, checkPersisted } from '../lib/verify.js'
import { queueDepth } from '../lib/services.js'

export async function dm (ctx: RunContext): Promise<ScenarioResult> {
  const users = num(ctx, 'users', 2000, 200)
  const gateways = num(ctx, 'gateways', 2)
  const phases = String(ctx.opts.phases ?? 'ramp,latency,sustained').split(',')
  const ramp = numList(ctx, 'ramp', [1000, 2000, 3000, 4000, 5000, 6000, 8000], [300, 600])
  const stepMs = num(ctx, 'step', 8, 3) * 1000
  const latencyRate = num(ctx, 'latency-rate', 2000, 300)
  const latencyMs = num(ctx, 'latency-duration', 20, 4) * 1000
  const rate = num(ctx, 'rate', 5000, 500)
  const durationMs = num(ctx, 'duration', 60, 5) * 1000

  const sys = await createSystem(ctx, { gateways, workers: num(ctx, 'workers', 1, 1), gatewayEnv: envOption(ctx, 'gateway-env'), workerEnv: envOption(ctx, 'worker-env') })
  const pool = LoadPool.start(num(ctx, 'agents', 2))
  const ids = Array.from({ length: users - (users % 2) }, (_, i) => `dm${i}`)
  // User i on gateway i % n; pairs (2k, 2k+1) therefore sit on different gateways.
  const placements = pool.add(ids.map((userId, i) => ({ userId, url: sys.gateways[i % gateways]!.url })))
  const conn = await pool.connect({ concurrency: 200 })
  const connected = await pool.stats()
  if (connected.ready !== ids.length) throw new Error(`only ${connected.ready}/${ids.length} sockets became ready`)
  const peer = (i: number) => i ^ 1
  const senders = ids.map((_, i) => ({ placement: placements[i]!, target: { toUserId: ids[peer(i)]! } }))
  const groups = usageGroups({ gateways: sys.gateways, workers: sys.workers, loadPids: pool.pids })
  const common = { pool, senders, fanout: 2, usage: groups, workerUrls: sys.workers.map((w) => w.url) }

  const results: PhaseResult[] = []
  results.push(await runPhase({ ...common, label: 'warm-up', ratePerSec: Math.min(500, rate), durationMs: ctx.quick ? 2000 : 4000 }))
  let ceiling = 0
  if (phases.includes('ramp')) {
    for (const r of ramp) {
      const res = await runPhase({ ...common, label: `ramp ${r}/s`, ratePerSec: r, durationMs: stepMs, drainMaxMs: 30_000 })
      results.push(res)
      const kept = (res.persistedPerSec ?? 0) >= 0.95 * r && res.shed === 0
      if (kept) ceiling = Math.max(ceiling, res.persistedPerSec ?? 0)
      // Past the knee: persisted/s falls behind, or latency explodes. Higher steps only queue.
      if (!kept || res.latency.delivery.p99Ms > 2000) break
    }
  }
  let latencyRun: PhaseResult | undefined
  if (phases.includes('latency')) {
    latencyRun = await runPhase({ ...common, label: `latency ${latencyRate}/s`, ratePerSec: latencyRate, durationMs: latencyMs })
    results.push(latencyRun)
  }
  let sustained: PhaseResult | undefined
  if (phases.includes('sustained')) {
    sustained = await runPhase({ ...common, label: `sustained ${rate}/s`, ratePerSec: rate, durationMs, drainMaxMs: 60_000 })
    results.push(sustained)
  }

  const report = await pool.report()
  const delivery = checkDeliveries(report, (s, to) => [s, to])
  const persisted = await checkPersisted(sys.sql, report, 'messages', await queueDepth(sys.vhost, sys.sendQueues).catch(() => 0))
  await pool.disconnect()

  const targets: ScenarioResult['targets'] = []
  if (sustained !== undefined) {
    const held = (sustained.persistedPerSec ?? 0) >= 5000 && sustained.shed === 0 && sustained.drained
    targets.push({
      name: 'dm sustained persisted/s for the run, zero loss and duplicates',
      target: '≥ 5,000/s for 60 s',
      measured: `${Math.round(sustained.persistedPerSec ?? 0)}/s over ${sustained.seconds.toFixed(0)} s at ${rate}/s offered (drain ${(sustained.drainMs / 1000).toFixed(1)} s), lost ${persisted.lost} (${persisted.queuedAtEnd} still queued, ${delivery.missing} deliveries not seen), duplicates ${delivery.duplicates + persisted.duplicateRows}`,
      met: ctx.quick ? null : held && durationMs >= 60_000 && delivery.ok && persisted.ok
    })
  }
  if (latencyRun !== undefined) {
    targets.push({
      name: 'dm send→receive p99 at 2,000 msg/s',
      target: '≤ 50 ms',
      measured: `p99 ${latencyRun.latency.delivery.p99Ms} ms (p50 ${latencyRun.latency.delivery.p50Ms}, max ${latencyRun.latency.delivery.maxMs}) at ${latencyRate}/s`,
      met: ctx.quick || latencyRate !== 2000 ? null : latencyRun.latency.delivery.p99Ms <= 50
    })
  }
  return {
    scenario: 'dm',
    title: `dm: ${ids.length} users over ${gateways} gateways, ${sys.workers.length} worker${sys.workers.length === 1 ? '' : 's'} (connect ${(conn.durationMs / 1000).toFixed(1)} s)`,
    rows: results.map(phaseRow),
    targets,
    usage: results.filter((r) => r.label !== 'warm-up').map((r) => ({ phase: r.label, ...r.usage })),
    notes: [
      `ramp ceiling (highest step with persisted ≥ 95 % of offered and nothing shed): ${Math.round(ceiling)}/s`,
      `deliveries: expected ${delivery.expected}, unique ${delivery.unique}, missing ${delivery.missing}, duplicates ${delivery.duplicates}, extra ${delivery.extra}`,
      `database: ${persisted.rows} rows for ${persisted.acked} acked sends, lost ${persisted.lost}, still queued ${persisted.queuedAtEnd}, duplicate rows ${persisted.duplicateRows}, stored without ack ${persisted.storedUnacked}, channels with seq gaps ${persisted.seqGaps}`
    ],
    details: { users: ids.length, gateways, phases: results.map(({ report: _r, ...rest }) => rest), delivery, persisted, connectMs: conn.durationMs }
  }
}
