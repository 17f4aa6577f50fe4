/**
 * Correctness while measuring: every acked message delivered exactly once to every
 * socket of its audience, and stored exactly once.
 */
import type postgres from 'postgres'
import type { LoadPool, PoolReport } from '../load/pool.js'
import type { AgentStats } from '../load/protocol.js'
import { progress, progressEnd } from './report.js'
import { sleep } from './processes.js'

export interface DeliveryCheck {
  /** Acked messages × their audience. */
  expected: number
  /** Distinct (sender, number) seen per socket, summed. */
  unique: number
  /** Expected but never seen. */
  missing: number
  /** Seen by a socket that was not in the audience of that many acked messages (e.g. sends whose ack timed out). */
  extra: number
  duplicates: number
  typingExpected: number
  typingReceived: number
  ok: boolean
}

/**
 * @param audience (sender, target user or channel) → user ids whose sockets must see
 *   each such message (the sender's own included: the protocol echoes to the sender).
 */
export function checkDeliveries (report: PoolReport, audience: (sender: string, target: string) => string[]): DeliveryCheck {
  const expected = new Map<string, number>()
  const typing = new Map<string, number>()
  for (const s of report.senders) {
    for (const u of audience(s.userId, s.target)) {
      expected.set(u, (expected.get(u) ?? 0) + s.acked)
      if (u !== s.userId) typing.set(u, (typing.get(u) ?? 0) + s.typingAcked)
    }
  }
  let exp = 0; let unique = 0; let missing = 0; let extra = 0; let duplicates = 0; let typingExpected = 0; let typingReceived = 0
  for (const sock of report.sockets) {
    const e = expected.get(sock.userId) ?? 0
    exp += e
    unique += sock.unique
    duplicates += sock.duplicates
    if (sock.unique < e) missing += e - sock.unique
    else extra += sock.unique - e
    typingExpected += typing.get(sock.userId) ?? 0
    typingReceived += sock.typing
  }
  return { expected: exp, unique, missing, extra, duplicates, typingExpected, typingReceived, ok: missing === 0 && duplicates === 0 }
}

export interface PersistCheck {
  rows: number
  acked: number
  /** Acked, not stored, and no longer in the worker queue: really lost. */
  lost: number
  /** Messages still in the worker queue at the end, per rabbitmqctl (whose counts lag by a few seconds): a backlog, not a loss. */
  queuedAtEnd: number
  /** Stored more often than sent (impossible with the unique key, checked anyway). */
  duplicateRows: number
  /** Stored without an ack (ack timed out or was refused after the broker took it). */
  storedUnacked: number
  /** Channels whose seq is not 1..n without gaps. */
  seqGaps: number
  ok: boolean
}

export async function checkPersisted (sql: postgres.Sql, report: PoolReport, table: 'messages' | 'peer_messages' = 'messages', queuedAtEnd = 0): Promise<PersistCheck> {
  const ackedBy = new Map<string, number>()
  for (const s of report.senders) ackedBy.set(s.userId, (ackedBy.get(s.userId) ?? 0) + s.acked)
  const perSender = await sql<Array<{ sender_id: string, n: number, u: number }>>`
    select sender_id, count(*)::int as n, count(distinct client_msg_id)::int as u from ${sql(table)} group by sender_id`
  const stored = new Map(perSender.map((r) => [r.sender_id, r]))
  let rows = 0; let acked = 0; let lost = 0; let duplicateRows = 0; let storedUnacked = 0
  for (const r of perSender) { rows += r.n; duplicateRows += r.n - r.u }
  for (const [userId, a] of ackedBy) {
    acked += a
    const n = stored.get(userId)?.u ?? 0
    if (n < a) lost += a - n
    else storedUnacked += n - a
  }
  // Still queued is not lost: the run ended before the worker caught up.
  lost = Math.max(0, lost - queuedAtEnd)
  let seqGaps = 0
  if (table === 'messages') {
    const [gaps] = await sql<Array<{ n: number }>>`
      select count(*)::int as n from (select channel_id from messages group by channel_id having max(seq) <> count(*) or min(seq) <> 1) g`
    seqGaps = gaps?.n ?? 0
  }
  return { rows, acked, lost, queuedAtEnd, duplicateRows, storedUnacked, seqGaps, ok: lost === 0 && rows >= acked && duplicateRows === 0 && seqGaps === 0 }
}

/**
 * Waits until every sent message has its ack and its deliveries (received reaches
 * `expected(stats)`) and `settled()` holds, or nothing moved for `quietMs`, or `maxMs`
 * passed. `settled` is for a backlog the counts cannot see: deliveries of sends that
 * were stored without an ack make up, in the count, for acked sends still queued.
 */
export async function drain (pool: LoadPool, expected: (s: AgentStats) => number, got: (s: AgentStats) => number, opts: { quietMs?: number, maxMs?: number, label?: string, settled?: () => Promise<boolean> } = {}): Promise<{ ms: number, complete: boolean, stats: AgentStats }> {
  const started = performance.now()
  let last = -1
  let lastChange = performance.now()
  for (;;) {
    const s = await pool.stats()
    const want = expected(s)
    const have = got(s)
    const complete = s.loadDone && s.inflight === 0 && have >= want && (opts.settled === undefined || await opts.settled())
    const now = performance.now()
    if (have !== last) { last = have; lastChange = now }
    if (complete || now - lastChange > (opts.quietMs ?? 10_000) || now - started > (opts.maxMs ?? 60_000)) {
      progressEnd()
      return { ms: now - started, complete, stats: s }
    }
    progress(`${opts.label ?? 'draining'}: received ${have}/${want}, in flight ${s.inflight}`)
    await sleep(100)
  }
}
