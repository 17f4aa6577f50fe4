/**
 * peer: the same dm, group and typing workloads, side by side in one run, on
 *  - ours: K gateways + worker (RabbitMQ bindings, PostgreSQL),
 *  - peer: K plain Socket.IO servers with @socket.io/redis-adapter (no persistence),
 *  - peer+pg (dm only): the same servers, each inserting every message into PostgreSQL,
 * for K in --servers (2 and 4). The figure of merit is server CPU per delivered
 * message: CPU seconds of the K server processes over the load window divided by
 * the messages their sockets received in it.
 */
import { LoadPool, type Placement } from '../load/pool.js'
import type { SendTarget } from '../load/protocol.js'
import type { RunContext } from '../lib/context.js'
import { num, numList, envOption } from '../lib/context.js'
import { runPhase, type PhaseResult } from '../lib/phase.js'
import { startPeer, type Proc } from '../lib/processes.js'
import type { Row, ScenarioResult } from '../lib/report.js'
import { createDatabase, REDIS_URL, sqlClient } from '../lib/services.js'
import { createGroups, createSystem, usageGroups } from '../lib/system.js'
import { checkDeliveries, checkPersisted, type DeliveryCheck, type PersistCheck } from '../lib/verify.js'

type Kind = 'ours' | 'peer' | 'peer+pg'
type Workload = 'dm' | 'group' | 'typing'

interface Measured {
  servers: number
  system: Kind
  workload: Workload
  phase: PhaseResult
  serverCpuS: number
  /** CPU of the servers that hold no socket (--idle-servers), all of them together. */
  idleCpuS: number
  /** Messages the senders sent in the window: what every adapter server receives through Redis. */
  sentMessages: number
  /** Servers plus what they need: broker, worker, database / Redis. */
  systemCpuS: number
  deliveries: number
  delivery?: DeliveryCheck
  persisted?: PersistCheck
}

export async function peer (ctx: RunContext): Promise<ScenarioResult> {
  const serverCounts = numList(ctx, 'servers', [2, 4])
  const users = num(ctx, 'users', 1000, 200)
  const groupSize = num(ctx, 'group-size', 100, 50)
  const typingSize = num(ctx, 'typing-size', 10)
  const dmRate = num(ctx, 'dm-rate', 1000, 200)
  const groupRate = num(ctx, 'group-rate', 200, 20)
  const typingRate = num(ctx, 'typing-rate', 1000, 200)
  const durationMs = num(ctx, 'duration', 10, 3) * 1000
  // Servers in the cluster that hold no socket: what each costs is what a server pays
  // for the cluster's traffic beyond its own users (the adapter's broadcast tax).
  const idleCount = num(ctx, 'idle-servers', 0)
  const workloads = String(ctx.opts.workloads ?? 'dm,group,typing').split(',') as Workload[]
  const systems = String(ctx.opts.systems ?? 'ours,peer,peer+pg').split(',') as Kind[]

  const ids = Array.from({ length: users }, (_, i) => `p${i}`)
  const index = new Map(ids.map((u, i) => [u, i]))
  const chunk = (size: number) => Array.from({ length: Math.floor(users / size) }, (_, c) => ids.slice(c * size, (c + 1) * size))
  const bigGroups = chunk(groupSize)
  const smallGroups = chunk(typingSize)
  const measured: Measured[] = []

  for (const k of serverCounts) {
    for (const kind of systems) {
      const tag = `${kind.replace('+', '')}${k}`
      let servers: Proc[]
      let idleServers: Proc[]
      let worker: Proc | undefined
      let bigIds: string[]
      let smallIds: string[]
      let sql
      let serviceGroups: 'ours' | 'redis' | 'redis+pg'
      if (kind === 'ours') {
        const sys = await createSystem(ctx, { gateways: k + idleCount, tag, gatewayEnv: envOption(ctx, 'gateway-env'), workerEnv: envOption(ctx, 'worker-env') })
        servers = sys.gateways.slice(0, k)
        idleServers = sys.gateways.slice(k)
        worker = sys.worker
        sql = sys.sql
        bigIds = await createGroups(sys.sql, bigGroups, 'big')
        smallIds = await createGroups(sys.sql, smallGroups, 'small')
        serviceGroups = 'ours'
      } else {
        // Channel ids only name rooms here; make them look like ours.
        bigIds = bigGroups.map((_, c) => `00000000-0000-4000-8000-${String(c).padStart(12, '0')}`)
        smallIds = smallGroups.map((_, c) => `00000000-0000-4000-9000-${String(c).padStart(12, '0')}`)
        const env: Record<string, string> = { REDIS_URL, REDIS_KEY: `${ctx.runId}_${tag}` }
        if (kind === 'peer+pg') {
          const url = await createDatabase(`${ctx.runId}_${tag}`)
          sql = sqlClient(url)
          await sql`create table if not exists peer_messages (id bigint generated always as identity primary key, sender_id text not null, to_user_id text, channel_id text, client_msg_id uuid not null, content text not null, created_at timestamptz not null default now(), unique (sender_id, client_msg_id))`
          env.DATABASE_URL = url
        }
        const all = await Promise.all(Array.from({ length: k + idleCount }, (_, i) => startPeer(`${tag}-server-${i + 1}`, { logDir: ctx.logDir, cpuProfile: ctx.cpuProfile }, env)))
        servers = all.slice(0, k)
        idleServers = all.slice(k)
        serviceGroups = kind === 'peer' ? 'redis' : 'redis+pg'
      }
      const memberOf = new Map<string, string[]>()
      const channelsOf = new Map<string, string[]>()
      const record = (groups: string[][], chIds: string[]) => groups.forEach((g, c) => {
        memberOf.set(chIds[c]!, g)
        for (const u of g) channelsOf.set(u, [...(channelsOf.get(u) ?? []), chIds[c]!])
      })
      record(bigGroups, bigIds)
      record(smallGroups, smallIds)

      const pool = LoadPool.start(num(ctx, 'agents', 2))
      const placements = pool.add(ids.map((userId, i) => ({ userId, url: servers[i % k]!.url, ...(kind === 'ours' ? {} : { channels: channelsOf.get(userId) ?? [] }) })))
      await pool.connect({ concurrency: 200 })
      const st = await pool.stats()
      if (st.ready !== users) throw new Error(`${tag}: only ${st.ready}/${users} sockets ready`)
      const usage = usageGroups({ servers, worker, loadPids: pool.pids, redis: true, mergeServers: true })
      if (idleServers.length > 0) usage.push({ name: 'idle servers', pids: () => idleServers.map((p) => p.pid) })
      const at = (u: string): Placement => placements[index.get(u)!]!
      const dmSenders = ids.map((u, i) => ({ placement: at(u), target: { toUserId: ids[i ^ 1]! } as SendTarget }))
      const groupSenders = bigGroups.flatMap((g, c) => g.slice(0, 2).map((u) => ({ placement: at(u), target: { channelId: bigIds[c]! } as SendTarget })))
      const typingSenders = smallGroups.flatMap((g, c) => g.slice(0, 2).map((u) => ({ placement: at(u), target: { channelId: smallIds[c]! } as SendTarget })))
      const base = { pool, usage, ...(worker !== undefined ? { workerUrls: [worker.url] } : {}) }
      await runPhase({ ...base, label: `${tag} warm-up`, senders: dmSenders, fanout: 2, ratePerSec: Math.min(300, dmRate), durationMs: 2000 })

      const plan: Array<{ w: Workload, senders: typeof dmSenders, fanout: number, rate: number, kind: 'message' | 'typing' }> = []
      if (workloads.includes('dm')) plan.push({ w: 'dm', senders: dmSenders, fanout: 2, rate: dmRate, kind: 'message' })
      if (kind !== 'peer+pg' && workloads.includes('group')) plan.push({ w: 'group', senders: groupSenders, fanout: groupSize, rate: groupRate, kind: 'message' })
      if (kind !== 'peer+pg' && workloads.includes('typing')) plan.push({ w: 'typing', senders: typingSenders, fanout: typingSize - 1, rate: typingRate, kind: 'typing' })
      for (const p of plan) {
        const phase = await runPhase({ ...base, label: `${tag} ${p.w}`, senders: p.senders, kind: p.kind, fanout: p.fanout, ratePerSec: p.rate, durationMs })
        const cpu = (names: (n: string) => boolean) => phase.usage.groups.filter((g) => names(g.name)).reduce((a, g) => a + g.cpuSeconds, 0)
        const serverCpuS = cpu((n) => n === 'servers')
        const systemCpuS = serverCpuS + cpu((n) => n === 'worker' || (serviceGroups !== 'ours' && n === 'redis') ||
          (serviceGroups === 'ours' && (n === 'rabbitmq' || n === 'postgres')) || (serviceGroups === 'redis+pg' && n === 'postgres'))
        const idleCpuS = cpu((n) => n === 'idle servers')
        measured.push({ servers: k, system: kind, workload: p.w, phase, serverCpuS, idleCpuS, sentMessages: phase.sent, systemCpuS, deliveries: Math.round(phase.deliveredPerSec * phase.seconds) })
      }
      const report = await pool.report()
      const delivery = checkDeliveries(report, (s, target) => memberOf.get(target) ?? [s, target])
      const persisted = sql !== undefined ? await checkPersisted(sql, report, kind === 'ours' ? 'messages' : 'peer_messages') : undefined
      for (const m of measured) if (m.servers === k && m.system === kind) { m.delivery = delivery; if (persisted !== undefined) m.persisted = persisted }
      await pool.disconnect()
      await pool.close()
      await Promise.all([...servers, ...idleServers].map((s) => s.stop()))
      if (worker !== undefined) await worker.stop()
    }
  }

  const us = (m: Measured, cpu: number) => m.deliveries > 0 ? cpu * 1e6 / m.deliveries : NaN
  const rows: Row[] = measured.map((m) => {
    const peerOf = measured.find((x) => x.servers === m.servers && x.workload === m.workload && x.system === 'peer')
    const ratio = peerOf !== undefined && m.system !== 'peer' ? us(m, m.serverCpuS) / us(peerOf, peerOf.serverCpuS) : undefined
    return {
      servers: m.servers,
      system: m.system,
      workload: m.workload,
      'offered/s': m.phase.offeredPerSec,
      'delivered/s': Math.round(m.phase.deliveredPerSec),
      'p50 ms': m.workload === 'typing' ? undefined : m.phase.latency.delivery.p50Ms,
      'p99 ms': m.workload === 'typing' ? undefined : m.phase.latency.delivery.p99Ms,
      'server cores': Math.round(m.serverCpuS / m.phase.seconds * 100) / 100,
      'server µs/delivery': Math.round(us(m, m.serverCpuS) * 10) / 10,
      'per server µs/delivery': Math.round(us(m, m.serverCpuS) / m.servers * 10) / 10,
      'system µs/delivery': Math.round(us(m, m.systemCpuS) * 10) / 10,
      ...(idleCount > 0 ? { 'idle server µs/message sent': m.sentMessages > 0 ? Math.round(m.idleCpuS / idleCount * 1e6 / m.sentMessages * 10) / 10 : undefined } : {}),
      'ratio to peer': ratio === undefined ? undefined : Math.round(ratio * 100) / 100,
      'lost/dup': m.delivery === undefined ? '' : `${m.delivery.missing}/${m.delivery.duplicates}${m.workload === 'typing' ? ` (typing ${m.delivery.typingReceived}/${m.delivery.typingExpected})` : ''}`
    }
  })
  const dm4 = (system: Kind) => measured.find((m) => m.servers === Math.max(...serverCounts) && m.workload === 'dm' && m.system === system)
  const o = dm4('ours')
  const p = dm4('peer')
  const ratio = o !== undefined && p !== undefined ? us(o, o.serverCpuS) / us(p, p.serverCpuS) : undefined
  return {
    scenario: 'peer',
    title: `peer: ${users} users; dm ${dmRate}/s, group of ${groupSize} ${groupRate} msg/s, typing in groups of ${typingSize} ${typingRate}/s; ${durationMs / 1000} s each`,
    rows,
    targets: [{
      name: `our server CPU per delivered dm message vs the Redis adapter's, at ${Math.max(...serverCounts)} servers`,
      target: '≤ 0.5×',
      measured: ratio === undefined ? 'not run' : `${ratio.toFixed(2)}× (ours ${us(o!, o!.serverCpuS).toFixed(1)} µs, peer ${us(p!, p!.serverCpuS).toFixed(1)} µs per delivery, all servers' CPU)`,
      met: ctx.quick || ratio === undefined || Math.max(...serverCounts) !== 4 ? null : ratio <= 0.5
    }],
    usage: measured.map((m) => ({ phase: m.phase.label, ...m.phase.usage })),
    notes: [
      'server µs/delivery = CPU of all K server processes in the load window ÷ messages their sockets received in it; "per server" divides by K',
      'system µs/delivery adds what the servers need: ours RabbitMQ + worker + PostgreSQL; peer Redis; peer+pg Redis + PostgreSQL (services include other users of them)',
      'ours persists every message (worker, PostgreSQL) and delivers only where bindings route it; peer persists nothing, and every server receives every broadcast through Redis',
      'typing lost/dup: typing notices are ephemeral (5 s expiry in ours); counts shown as received/expected',
      ...(idleCount > 0 ? [`idle server µs/message sent: CPU of one of the ${idleCount} servers per system that hold no socket, per message sent in the cluster (for the peer, the broadcast tax every server pays)`] : [])
    ],
    details: measured.map(({ phase: { report: _r, ...phase }, ...rest }) => ({ ...rest, phase }))
  }
}
