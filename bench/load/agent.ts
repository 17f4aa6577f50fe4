/**
 * A load process: holds many socket.io-client sockets, sends at a paced rate when
 * told, and records what arrives (exactly-once bookkeeping and latency histograms).
 * Started by load/pool.ts with fork(); several run at once so that no process hits
 * the 20,000 open-files limit and the client work spreads over cores.
 *
 * Hot paths (send tick, message:new) avoid allocation beyond what socket.io does.
 */
import { randomUUID } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import { io, type Socket } from 'socket.io-client'
import { encodeHistogram, newHistogram, nowUs } from '../lib/histogram.js'
import { Bits } from './bits.js'
import { decodeContent, encodeContent } from './content.js'
import type { AgentReport, AgentStats, ClientSpec, Command, Reply, Request, SenderSpec } from './protocol.js'

const secret = process.env.BENCH_JWT_SECRET
if (secret === undefined || process.send === undefined) {
  process.stderr.write('load/agent.ts runs as a child of the bench (fork with BENCH_JWT_SECRET)\n')
  process.exit(2)
}
const sign = createSigner({ key: secret, expiresIn: 6 * 3_600_000 })

interface Client {
  spec: ClientSpec
  socket: Socket | undefined
  ready: boolean
  seen: Map<string, Bits>
  duplicates: number
  typing: number
  /** Next message number of this client as a sender (numbers are per sender, over all targets). */
  next: number
  /** Per target (user or channel id): what this client sent there. */
  targets: Map<string, TargetCounts>
}

interface TargetCounts { sent: number, acked: number, typingAcked: number }

const targetKey = (s: SenderSpec) => 'toUserId' in s.target ? s.target.toUserId : s.target.channelId
function countsFor (c: Client, s: SenderSpec): TargetCounts {
  const key = targetKey(s)
  let t = c.targets.get(key)
  if (t === undefined) { t = { sent: 0, acked: 0, typingAcked: 0 }; c.targets.set(key, t) }
  return t
}

const clients: Client[] = []
const hist = { delivery: newHistogram(), echo: newHistogram(), ack: newHistogram(), ready: newHistogram() }
const stats: AgentStats = {
  clients: 0, connected: 0, ready: 0, connectFailed: 0, disconnects: 0, sent: 0, acked: 0, shed: 0, inflight: 0,
  errors: {}, received: 0, duplicates: 0, typingSent: 0, typingAcked: 0, typingReceived: 0, loadDone: true
}
const countError = (code: string) => { stats.errors[code] = (stats.errors[code] ?? 0) + 1 }

function connectOne (c: Client, reconnection: boolean, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    const started = nowUs()
    const auth: Record<string, unknown> = { token: sign({ sub: c.spec.userId }) }
    if (c.spec.channels !== undefined) auth.channels = c.spec.channels
    // `localAddress` reaches ws's http.request; socket.io-client's option types omit it.
    const options = { transports: ['websocket'], auth, reconnection, forceNew: true, timeout: timeoutMs, ...(c.spec.localAddress !== undefined ? { localAddress: c.spec.localAddress } : {}) }
    const socket = io(c.spec.url, options)
    c.socket = socket
    let settled = false
    const done = () => { if (!settled) { settled = true; clearTimeout(timer); resolve() } }
    const timer = setTimeout(() => { countError('READY_TIMEOUT'); stats.connectFailed++; done() }, timeoutMs)
    socket.on('connect', () => { stats.connected++ })
    socket.on('disconnect', () => {
      stats.connected--
      stats.disconnects++
      if (c.ready) { c.ready = false; stats.ready-- }
    })
    socket.on('connect_error', (err: Error) => {
      if (!reconnection) { countError(`CONNECT_${err.message}`); stats.connectFailed++; done() }
    })
    socket.on('session:ready', () => {
      if (!c.ready) { c.ready = true; stats.ready++ }
      if (!settled) hist.ready.recordValue(Math.max(1, nowUs() - started))
      done()
    })
    socket.on('message:new', (m: { senderId: string, content: string }) => {
      stats.received++
      const d = decodeContent(m.content)
      if (d === undefined) return
      let bits = c.seen.get(m.senderId)
      if (bits === undefined) { bits = new Bits(); c.seen.set(m.senderId, bits) }
      if (!bits.set(d.n)) { c.duplicates++; stats.duplicates++; return }
      const latency = Math.max(1, nowUs() - d.sentAtUs)
      if (m.senderId === c.spec.userId) hist.echo.recordValue(latency)
      else hist.delivery.recordValue(latency)
    })
    socket.on('typing', () => { c.typing++; stats.typingReceived++ })
  })
}

async function connect (cmd: Extract<Command, { op: 'connect' }>): Promise<{ durationMs: number }> {
  const started = performance.now()
  const fresh = cmd.clients.map((spec): Client => ({ spec, socket: undefined, ready: false, seen: new Map(), duplicates: 0, typing: 0, next: 0, targets: new Map() }))
  clients.push(...fresh)
  stats.clients = clients.length
  let i = 0
  const lane = async () => {
    while (i < fresh.length) {
      const c = fresh[i++]!
      await connectOne(c, cmd.reconnection, cmd.timeoutMs)
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(cmd.concurrency, fresh.length)) }, lane))
  return { durationMs: performance.now() - started }
}

type Ack = { ok: boolean, error?: { code: string } }

function sendMessage (c: Client, s: SenderSpec, contentBytes: number, ackTimeoutMs: number): void {
  const socket = c.socket
  if (socket === undefined) return
  const n = c.next++
  const sentAt = nowUs()
  const t = countsFor(c, s)
  t.sent++
  stats.sent++
  stats.inflight++
  socket.timeout(ackTimeoutMs).emit('message:send', { clientMsgId: randomUUID(), content: encodeContent(n, sentAt, contentBytes), ...s.target }, (err: Error | null, res: Ack | undefined) => {
    stats.inflight--
    if (err !== null) { countError('ACK_TIMEOUT'); return }
    if (res?.ok !== true) { countError(res?.error?.code ?? 'UNKNOWN'); return }
    t.acked++
    stats.acked++
    hist.ack.recordValue(Math.max(1, nowUs() - sentAt))
  })
}

function sendTyping (c: Client, s: SenderSpec, ackTimeoutMs: number): void {
  const socket = c.socket
  if (socket === undefined || !('channelId' in s.target)) return
  const t = countsFor(c, s)
  t.sent++
  stats.typingSent++
  stats.inflight++
  socket.timeout(ackTimeoutMs).emit('typing', { channelId: s.target.channelId }, (err: Error | null, res: Ack | undefined) => {
    stats.inflight--
    if (err !== null) { countError('TYPING_ACK_TIMEOUT'); return }
    if (res?.ok !== true) { countError(`TYPING_${res?.error?.code ?? 'UNKNOWN'}`); return }
    t.typingAcked++
    stats.typingAcked++
  })
}

/** Paced open-loop sending: every tick sends what is due; beyond maxInflight, the excess is shed and counted. */
function load (cmd: Extract<Command, { op: 'load' }>): { offered: number } {
  const senders = cmd.senders
  if (senders.length === 0 || cmd.ratePerSec <= 0) return { offered: 0 }
  stats.loadDone = false
  const started = performance.now()
  let issued = 0
  let rr = 0
  const timer = setInterval(() => {
    const elapsed = Math.min(performance.now() - started, cmd.durationMs)
    const due = Math.floor(cmd.ratePerSec * elapsed / 1000)
    while (issued < due) {
      issued++
      if (stats.inflight >= cmd.maxInflight) { stats.shed++; continue }
      const s = senders[rr]!
      rr = (rr + 1) % senders.length
      const c = clients[s.client]!
      if (cmd.kind === 'message') sendMessage(c, s, cmd.contentBytes, cmd.ackTimeoutMs)
      else sendTyping(c, s, cmd.ackTimeoutMs)
    }
    if (elapsed >= cmd.durationMs) {
      clearInterval(timer)
      stats.loadDone = true
    }
  }, 5)
  return { offered: Math.floor(cmd.ratePerSec * cmd.durationMs / 1000) }
}

function report (): AgentReport {
  return {
    stats,
    histograms: { delivery: encodeHistogram(hist.delivery), echo: encodeHistogram(hist.echo), ack: encodeHistogram(hist.ack), ready: encodeHistogram(hist.ready) },
    sockets: clients.map((c) => {
      let unique = 0
      for (const b of c.seen.values()) unique += b.count
      return { userId: c.spec.userId, unique, duplicates: c.duplicates, typing: c.typing }
    }),
    senders: clients.flatMap((c) => [...c.targets].map(([target, t]) => ({ userId: c.spec.userId, target, ...t })))
  }
}

async function execute (cmd: Command): Promise<unknown> {
  switch (cmd.op) {
    case 'connect': return await connect(cmd)
    case 'load': return load(cmd)
    case 'stats': return stats
    case 'resetHistograms':
      for (const h of Object.values(hist)) h.reset()
      return {}
    case 'report': return report()
    case 'disconnect':
      for (const c of clients) c.socket?.disconnect()
      return {}
  }
}

process.on('message', (req: Request) => {
  execute(req).then(
    (result) => process.send!({ id: req.id, ok: true, result } satisfies Reply),
    (err: unknown) => process.send!({ id: req.id, ok: false, error: (err as Error).message ?? String(err) } satisfies Reply)
  )
})
// The coordinator went away: nothing left to do.
process.on('disconnect', () => process.exit(0))
