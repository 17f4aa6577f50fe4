/**
 * The coordinator's side of the load processes: forks them, spreads clients over
 * them (and over source addresses), and aggregates their stats and reports.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { onCleanup, trackPid, untrackPid } from '../lib/cleanup.js'
import { mergeEncoded, type Histogram } from '../lib/histogram.js'
import { JWT_SECRET } from '../lib/processes.js'
import type { AgentReport, AgentStats, ClientSpec, Command, Reply, SendTarget } from './protocol.js'

const AGENT = fileURLToPath(new URL('./agent.ts', import.meta.url))
/** Source addresses 127.0.0.2…: each has its own ~28k ephemeral ports toward one server port. */
const SOURCE_ADDRESSES = 16

export interface Placement { agent: number, index: number }

class Agent {
  readonly child: ChildProcess
  readonly pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void }>()
  readonly clients: ClientSpec[] = []
  connectedUpTo = 0
  #next = 0

  constructor (readonly n: number) {
    this.child = fork(AGENT, [], {
      execArgv: ['--import', 'tsx', '--max-old-space-size=4096'],
      env: { ...process.env, BENCH_JWT_SECRET: JWT_SECRET },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      // Own process group: the terminal's Ctrl-C reaches the coordinator only, which cleans up.
      detached: true
    })
    const pid = this.child.pid
    if (pid !== undefined) trackPid(pid)
    this.child.on('message', (reply: Reply) => {
      const p = this.pending.get(reply.id)
      if (p === undefined) return
      this.pending.delete(reply.id)
      if (reply.ok) p.resolve(reply.result)
      else p.reject(new Error(`load process ${n}: ${reply.error}`))
    })
    this.child.on('exit', (code, signal) => {
      if (pid !== undefined) untrackPid(pid)
      for (const p of this.pending.values()) p.reject(new Error(`load process ${n} exited (${signal ?? code})`))
      this.pending.clear()
    })
  }

  get pid (): number { return this.child.pid ?? 0 }

  call<T> (cmd: Command): Promise<T> {
    const id = ++this.#next
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.child.send({ id, ...cmd })
    })
  }
}

export interface LoadOptions {
  kind?: 'message' | 'typing'
  ratePerSec: number
  durationMs: number
  contentBytes?: number
  /** Per load process. */
  maxInflight?: number
  ackTimeoutMs?: number
}

export interface PoolReport {
  stats: AgentStats
  delivery: Histogram
  echo: Histogram
  ack: Histogram
  ready: Histogram
  sockets: AgentReport['sockets']
  senders: AgentReport['senders']
}

export class LoadPool {
  readonly agents: Agent[]
  #rr = 0

  private constructor (n: number) {
    this.agents = Array.from({ length: n }, (_, i) => new Agent(i))
    onCleanup('stop load processes', () => this.close())
  }

  static start (n: number): LoadPool {
    return new LoadPool(n)
  }

  get pids (): number[] { return this.agents.map((a) => a.pid) }

  /** Places clients round-robin over the load processes; returns where each went. */
  add (specs: Array<Omit<ClientSpec, 'localAddress'>>): Placement[] {
    return specs.map((spec) => {
      const agent = this.#rr++ % this.agents.length
      const a = this.agents[agent]!
      const localAddress = `127.0.0.${2 + ((a.clients.length * this.agents.length + agent) % SOURCE_ADDRESSES)}`
      a.clients.push({ ...spec, localAddress })
      return { agent, index: a.clients.length - 1 }
    })
  }

  /** Connects every client added since the last call; resolves when each is ready or failed. */
  async connect (opts: { concurrency: number, reconnection?: boolean, timeoutMs?: number }): Promise<{ durationMs: number }> {
    const started = performance.now()
    await Promise.all(this.agents.map(async (a) => {
      const fresh = a.clients.slice(a.connectedUpTo)
      a.connectedUpTo = a.clients.length
      if (fresh.length === 0) return
      await a.call({ op: 'connect', clients: fresh, concurrency: Math.max(1, Math.ceil(opts.concurrency / this.agents.length)), reconnection: opts.reconnection ?? false, timeoutMs: opts.timeoutMs ?? 30_000 })
    }))
    return { durationMs: performance.now() - started }
  }

  /** Starts paced sending; the total rate is split over load processes by their share of senders. */
  async load (senders: Array<{ placement: Placement, target: SendTarget }>, opts: LoadOptions): Promise<void> {
    const per = this.agents.map(() => [] as Array<{ client: number, target: SendTarget }>)
    for (const s of senders) per[s.placement.agent]!.push({ client: s.placement.index, target: s.target })
    await Promise.all(this.agents.map(async (a, i) => {
      const mine = per[i]!
      if (mine.length === 0) return
      await a.call({
        op: 'load',
        senders: mine,
        kind: opts.kind ?? 'message',
        ratePerSec: opts.ratePerSec * mine.length / senders.length,
        durationMs: opts.durationMs,
        contentBytes: opts.contentBytes ?? 100,
        maxInflight: opts.maxInflight ?? 5000,
        ackTimeoutMs: opts.ackTimeoutMs ?? 30_000
      })
    }))
  }

  async stats (): Promise<AgentStats> {
    const all = await Promise.all(this.agents.map((a) => a.call<AgentStats>({ op: 'stats' })))
    return sumStats(all)
  }

  async resetHistograms (): Promise<void> {
    await Promise.all(this.agents.map((a) => a.call({ op: 'resetHistograms' })))
  }

  async report (): Promise<PoolReport> {
    const all = await Promise.all(this.agents.map((a) => a.call<AgentReport>({ op: 'report' })))
    return {
      stats: sumStats(all.map((r) => r.stats)),
      delivery: mergeEncoded(all.map((r) => r.histograms.delivery)),
      echo: mergeEncoded(all.map((r) => r.histograms.echo)),
      ack: mergeEncoded(all.map((r) => r.histograms.ack)),
      ready: mergeEncoded(all.map((r) => r.histograms.ready)),
      sockets: all.flatMap((r) => r.sockets),
      senders: all.flatMap((r) => r.senders)
    }
  }

  async disconnect (): Promise<void> {
    await Promise.all(this.agents.map((a) => a.call({ op: 'disconnect' }).catch(() => {})))
  }

  async close (): Promise<void> {
    await Promise.all(this.agents.map(async (a) => {
      if (a.child.exitCode !== null || a.child.signalCode !== null) return
      const exited = new Promise((resolve) => a.child.once('exit', resolve))
      a.child.kill('SIGTERM')
      const forced = setTimeout(() => a.child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(forced)
    }))
  }
}

function sumStats (all: AgentStats[]): AgentStats {
  const total: AgentStats = {
    clients: 0, connected: 0, ready: 0, connectFailed: 0, disconnects: 0, sent: 0, acked: 0, shed: 0, inflight: 0,
    errors: {}, received: 0, duplicates: 0, typingSent: 0, typingAcked: 0, typingReceived: 0, loadDone: true
  }
  for (const s of all) {
    for (const k of ['clients', 'connected', 'ready', 'connectFailed', 'disconnects', 'sent', 'acked', 'shed', 'inflight', 'received', 'duplicates', 'typingSent', 'typingAcked', 'typingReceived'] as const) total[k] += s[k]
    for (const [code, n] of Object.entries(s.errors)) total.errors[code] = (total.errors[code] ?? 0) + n
    total.loadDone &&= s.loadDone
  }
  return total
}
