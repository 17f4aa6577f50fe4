/**
 * CPU and RSS of processes, read from /proc (no dependency, no sampling thread): CPU
 * is utime+stime ticks at the start and end of a window, RSS is VmRSS sampled every
 * second for the peak. Services (RabbitMQ, PostgreSQL, Redis) are found by command
 * name; their figures include whatever else uses them on this machine.
 */
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'

const CLK_TCK = (() => {
  try { return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100 } catch { return 100 }
})()

export interface ProcSample { ticks: number, rssKb: number }

export function readProc (pid: number): ProcSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // comm may contain spaces and parentheses: fields start after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const ticks = Number(rest[11]) + Number(rest[12])
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const rss = /VmRSS:\s+(\d+)/.exec(status)
    return { ticks, rssKb: rss === null ? 0 : Number(rss[1]) }
  } catch {
    return undefined
  }
}

/** Pids whose /proc/<pid>/comm is exactly one of `names`. */
export function pidsByName (...names: string[]): number[] {
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const comm = readFileSync(`/proc/${entry}/comm`, 'utf8').trim()
      if (names.includes(comm)) pids.push(Number(entry))
    } catch { /* exited */ }
  }
  return pids
}

/** The pid listening on a local TCP port (from /proc/net/tcp{,6} and each process's fds), if any. */
export function listenerPid (port: number): number | undefined {
  const inodes = new Set<string>()
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = ''
    try { text = readFileSync(table, 'utf8') } catch { continue }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      // local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 is the inode
      if (f[3] === '0A' && Number.parseInt(f[1]?.split(':')[1] ?? '', 16) === port && f[9] !== undefined) inodes.add(`socket:[${f[9]}]`)
    }
  }
  if (inodes.size === 0) return undefined
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      for (const fd of readdirSync(`/proc/${entry}/fd`)) {
        if (inodes.has(readlinkSync(`/proc/${entry}/fd/${fd}`))) return Number(entry)
      }
    } catch { /* exited, or not ours to read */ }
  }
  return undefined
}

/** Whole-machine busy and total jiffies from /proc/stat, for the load of everything else. */
function machineTicks (): { busy: number, total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? ''
  const v = line.split(/\s+/).slice(1).map(Number)
  const idle = (v[3] ?? 0) + (v[4] ?? 0)
  const total = v.reduce((a, b) => a + b, 0)
  return { busy: total - idle, total }
}

export interface UsageGroup {
  name: string
  /** Called at every sample: processes may come and go (PostgreSQL backends). */
  pids: () => number[]
}

export interface GroupUsage {
  name: string
  processes: number
  cpuSeconds: number
  /** Average cores used over the window. */
  cores: number
  rssMb: number
  peakRssMb: number
}

export interface UsageReport {
  windowSeconds: number
  groups: GroupUsage[]
  /** Cores busy on the whole machine over the window (all processes, other users included). */
  machineBusyCores: number
  loadAverage: string
}

/** Measures CPU and RSS of groups of processes over a window. */
export class UsageWindow {
  readonly #groups: UsageGroup[]
  readonly #startTicks = new Map<string, Map<number, number>>()
  readonly #lastTicks = new Map<string, Map<number, number>>()
  readonly #rss = new Map<string, { last: number, peak: number, n: number }>()
  #t0 = 0
  #m0 = machineTicks()
  #timer: NodeJS.Timeout | undefined

  constructor (groups: UsageGroup[]) {
    this.#groups = groups
  }

  start (): this {
    this.#t0 = performance.now()
    this.#m0 = machineTicks()
    for (const g of this.#groups) {
      const m = new Map<number, number>()
      for (const pid of g.pids()) {
        const s = readProc(pid)
        if (s !== undefined) m.set(pid, s.ticks)
      }
      this.#startTicks.set(g.name, m)
      this.#lastTicks.set(g.name, new Map(m))
    }
    this.#sample()
    this.#timer = setInterval(() => this.#sample(), 1000).unref()
    return this
  }

  #sample (): void {
    for (const g of this.#groups) {
      let rss = 0
      const pids = g.pids()
      const last = this.#lastTicks.get(g.name)!
      const base = this.#startTicks.get(g.name)!
      for (const pid of pids) {
        const s = readProc(pid)
        if (s === undefined) continue
        rss += s.rssKb
        // A process that appeared during the window counts from its first sighting.
        if (!base.has(pid)) base.set(pid, s.ticks)
        last.set(pid, s.ticks)
      }
      const r = this.#rss.get(g.name) ?? { last: 0, peak: 0, n: 0 }
      r.last = rss
      r.peak = Math.max(r.peak, rss)
      r.n = pids.length
      this.#rss.set(g.name, r)
    }
  }

  stop (): UsageReport {
    clearInterval(this.#timer)
    this.#sample()
    const seconds = (performance.now() - this.#t0) / 1000
    const m1 = machineTicks()
    const groups = this.#groups.map((g): GroupUsage => {
      const base = this.#startTicks.get(g.name)!
      const last = this.#lastTicks.get(g.name)!
      let ticks = 0
      for (const [pid, t] of last) ticks += t - (base.get(pid) ?? t)
      const cpuSeconds = ticks / CLK_TCK
      const r = this.#rss.get(g.name) ?? { last: 0, peak: 0, n: 0 }
      return { name: g.name, processes: r.n, cpuSeconds, cores: seconds > 0 ? cpuSeconds / seconds : 0, rssMb: r.last / 1024, peakRssMb: r.peak / 1024 }
    })
    const busy = (m1.busy - this.#m0.busy) / CLK_TCK
    return { windowSeconds: seconds, groups, machineBusyCores: seconds > 0 ? busy / seconds : 0, loadAverage: loadAverage() }
  }
}

export function loadAverage (): string {
  try { return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') } catch { return 'unknown' }
}

/** The kernel's count of connections dropped because a listen queue was full (since boot, all sockets). */
export function listenOverflows (): number {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n')
    for (let i = 0; i + 1 < lines.length; i += 2) {
      if (!lines[i]!.startsWith('TcpExt:')) continue
      const keys = lines[i]!.split(/\s+/)
      const values = lines[i + 1]!.split(/\s+/)
      const k = keys.indexOf('ListenOverflows')
      if (k > 0) return Number(values[k])
    }
  } catch { /* not Linux */ }
  return 0
}
