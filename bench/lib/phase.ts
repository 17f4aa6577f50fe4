/**
 * One measured phase: paced load for a fixed time while CPU/RSS, progress and
 * latency are recorded, then a drain until every delivery arrived.
 */
import type { LoadPool, Placement, PoolReport } from '../load/pool.js'
import type { AgentStats, SendTarget } from '../load/protocol.js'
import { summarize, type LatencySummary } from './histogram.js'
import { sleep } from './processes.js'
import { readMetric } from './prom.js'
import { progress, progressEnd } from './report.js'
import { UsageWindow, type UsageGroup, type UsageReport } from './usage.js'
import { drain } from './verify.js'

export interface PhaseOptions {
  label: string
  pool: LoadPool
  senders: Array<{ placement: Placement, target: SendTarget }>
  kind?: 'message' | 'typing'
  ratePerSec: number
  durationMs: number
  /** Deliveries each acked message (or typing notice) makes: the drain waits for them. */
  fanout: number
  usage: UsageGroup[]
  /** Workers' /metrics URLs: persisted/s comes from the sum of their counters. */
  workerUrls?: string[]
  maxInflight?: number
  contentBytes?: number
  drainMaxMs?: number
}

export interface PhaseResult {
  label: string
  offeredPerSec: number
  seconds: number
  sent: number
  acked: number
  shed: number
  errors: Record<string, number>
  ackedPerSec: number
  deliveredPerSec: number
  persistedPerSec: number | undefined
  persisted: number | undefined
  drainMs: number
  drained: boolean
  latency: { delivery: LatencySummary, echo: LatencySummary, ack: LatencySummary }
  usage: UsageReport
  report: PoolReport
}

async function persistedCount (urls: string[] | undefined): Promise<number | undefined> {
  if (urls === undefined || urls.length === 0) return undefined
  const counts = await Promise.all(urls.map((url) => readMetric(`${url}/metrics`, 'chat_worker_messages_persisted_total')))
  return counts.reduce((a, b) => a + b, 0)
}

export async function runPhase (o: PhaseOptions): Promise<PhaseResult> {
  const { pool } = o
  await pool.resetHistograms()
  const before = await pool.stats()
  const p0 = await persistedCount(o.workerUrls)
  const usage = new UsageWindow(o.usage).start()
  const started = performance.now()
  await pool.load(o.senders, { kind: o.kind ?? 'message', ratePerSec: o.ratePerSec, durationMs: o.durationMs, maxInflight: o.maxInflight, contentBytes: o.contentBytes })
  let prev = before
  let prevT = started
  while (performance.now() - started < o.durationMs) {
    await sleep(Math.min(1000, Math.max(10, o.durationMs - (performance.now() - started))))
    const s = await pool.stats()
    const now = performance.now()
    const dt = (now - prevT) / 1000
    const sentKey = o.kind === 'typing' ? 'typingSent' : 'sent'
    const ackKey = o.kind === 'typing' ? 'typingAcked' : 'acked'
    const recvKey = o.kind === 'typing' ? 'typingReceived' : 'received'
    progress(`${o.label}: ${((now - started) / 1000).toFixed(0)}/${(o.durationMs / 1000).toFixed(0)} s  sent ${Math.round((s[sentKey] - prev[sentKey]) / dt)}/s  acked ${Math.round((s[ackKey] - prev[ackKey]) / dt)}/s  received ${Math.round((s[recvKey] - prev[recvKey]) / dt)}/s  in flight ${s.inflight}  shed ${s.shed - before.shed}  errors ${Object.values(s.errors).reduce((a, b) => a + b, 0)}`)
    prev = s
    prevT = now
  }
  progressEnd()
  const end = await pool.stats()
  const seconds = (performance.now() - started) / 1000
  const p1 = await persistedCount(o.workerUrls)
  const usageReport = usage.stop()
  const typing = o.kind === 'typing'
  const got = (s: AgentStats) => typing ? s.typingReceived : s.received - s.duplicates
  const acks = (s: AgentStats) => typing ? s.typingAcked : s.acked
  // The worker has caught up once its persisted count has not moved for a second
  // (a batch takes well under that).
  let lastPersisted = p1
  let movedAt = performance.now()
  const settled = async () => {
    const p = await persistedCount(o.workerUrls)
    if (p !== lastPersisted) { lastPersisted = p; movedAt = performance.now() }
    return performance.now() - movedAt >= 1000
  }
  const drained = await drain(pool, (s) => got(before) + (acks(s) - acks(before)) * o.fanout, got, { label: `${o.label} drain`, maxMs: o.drainMaxMs ?? 60_000, settled })
  const p2 = await persistedCount(o.workerUrls)
  const report = await pool.report()
  const errors: Record<string, number> = {}
  for (const [k, v] of Object.entries(report.stats.errors)) {
    const d = v - (before.errors[k] ?? 0)
    if (d > 0) errors[k] = d
  }
  return {
    label: o.label,
    offeredPerSec: o.ratePerSec,
    seconds,
    sent: typing ? end.typingSent - before.typingSent : end.sent - before.sent,
    acked: typing ? drained.stats.typingAcked - before.typingAcked : drained.stats.acked - before.acked,
    shed: end.shed - before.shed,
    errors,
    ackedPerSec: ((typing ? end.typingAcked - before.typingAcked : end.acked - before.acked)) / seconds,
    deliveredPerSec: (typing ? end.typingReceived - before.typingReceived : end.received - before.received) / seconds,
    persistedPerSec: p0 !== undefined && p1 !== undefined ? (p1 - p0) / seconds : undefined,
    persisted: p0 !== undefined && p2 !== undefined ? p2 - p0 : undefined,
    drainMs: drained.ms,
    drained: drained.complete,
    latency: { delivery: summarize(report.delivery), echo: summarize(report.echo), ack: summarize(report.ack) },
    usage: usageReport,
    report
  }
}

/** The table row of a phase. */
export function phaseRow (r: PhaseResult): Record<string, string | number | boolean | undefined> {
  return {
    phase: r.label,
    'offered/s': r.offeredPerSec,
    'acked/s': Math.round(r.ackedPerSec),
    'persisted/s': r.persistedPerSec === undefined ? undefined : Math.round(r.persistedPerSec),
    'delivered/s': Math.round(r.deliveredPerSec),
    'p50 ms': r.latency.delivery.p50Ms,
    'p95 ms': r.latency.delivery.p95Ms,
    'p99 ms': r.latency.delivery.p99Ms,
    'max ms': r.latency.delivery.maxMs,
    'ack p99 ms': r.latency.ack.p99Ms,
    shed: r.shed,
    errors: Object.entries(r.errors).map(([k, v]) => `${k}:${v}`).join(' '),
    'drain s': Math.round(r.drainMs / 100) / 10
  }
}
