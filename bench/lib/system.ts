/**
 * Our system for one run: a vhost and a database of its own, N gateways (optionally
 * behind a TCP proxy to the broker) and a worker, all real processes.
 */
import type postgres from 'postgres'
import { brokerNames } from '../../src/broker/topology.js'
import { nodeArgsOption, type RunContext } from './context.js'
import { TcpProxy } from './proxy.js'
import { startGateway, startWorker, type Proc, type SystemEnv } from './processes.js'
import { AMQP_HOST, amqpPort, amqpUrl, createDatabase, createVhost, sqlClient } from './services.js'
import { listenerPid, pidsByName, type UsageGroup } from './usage.js'

export interface System {
  env: SystemEnv
  vhost: string
  sql: postgres.Sql
  gateways: Array<Proc & { port: number }>
  /** The first worker, if any. */
  worker: Proc | undefined
  /** Every worker: one per send shard. */
  workers: Proc[]
  /** Names of the send queues (one per shard). */
  sendQueues: string[]
  proxy: TcpProxy | undefined
}

export interface SystemOptions {
  gateways: number
  /** Start the worker (default true). */
  worker?: boolean
  /** Workers, each consuming a send shard of its own (WORKER_SHARDS on every process); default 1. */
  workers?: number
  gatewayEnv?: Record<string, string>
  workerEnv?: Record<string, string>
  /** Route gateways' AMQP through a proxy of ours (to cut it or delay it). */
  proxy?: boolean
  /** Name suffix, to tell apart systems of one run. */
  tag?: string
  /** Gateways write a heap snapshot on SIGWINCH (see processes.ts). */
  heapSnapshots?: boolean
}

export async function createSystem (ctx: RunContext, opts: SystemOptions): Promise<System> {
  const tag = opts.tag ?? 'ours'
  const vhost = await createVhost(`${ctx.runId}_${tag}`)
  const databaseUrl = await createDatabase(`${ctx.runId}_${tag}`)
  const env: SystemEnv = { amqpUrl: amqpUrl(vhost), databaseUrl, prefix: 'bench' }
  const sql = sqlClient(databaseUrl)
  const popts = { logDir: ctx.logDir, cpuProfile: ctx.cpuProfile }
  const workerOpts = { ...popts, nodeArgs: nodeArgsOption(ctx, 'worker-node-args') }
  const shards = opts.workers ?? 1
  const sharding: Record<string, string> = shards > 1 ? { WORKER_SHARDS: String(shards) } : {}
  // The workers first: gateways' session.open needs them.
  const workers = opts.worker === false
    ? []
    : await Promise.all(Array.from({ length: shards }, (_, i) => startWorker(shards > 1 ? `${tag}-worker-${i}` : `${tag}-worker`, env, workerOpts,
      { ...sharding, ...(shards > 1 ? { WORKER_CONSUME_SHARDS: String(i) } : {}), ...opts.workerEnv })))
  const gatewayOpts = { ...popts, nodeArgs: nodeArgsOption(ctx, 'gateway-node-args'), heapSnapshots: opts.heapSnapshots === true }
  let proxy: TcpProxy | undefined
  let gatewaySys = env
  if (opts.proxy === true) {
    proxy = new TcpProxy({ host: AMQP_HOST, port: amqpPort() })
    const port = await proxy.listen()
    gatewaySys = { ...env, amqpUrl: amqpUrl(vhost, port) }
  }
  const gateways = await Promise.all(Array.from({ length: opts.gateways }, (_, i) =>
    startGateway(`${tag}-gateway-${i + 1}`, gatewaySys, gatewayOpts, { ...sharding, ...opts.gatewayEnv })))
  const sendQueues = Array.from({ length: shards }, (_, i) => brokerNames(env.prefix).sendQueue(i))
  return { env, vhost, sql, gateways, worker: workers[0], workers, sendQueues, proxy }
}

/** Creates group channels directly in the database (setup, not measured); returns their ids. */
export async function createGroups (sql: postgres.Sql, groups: string[][], name = 'bench'): Promise<string[]> {
  const ids: string[] = []
  const chunk = 500
  for (let i = 0; i < groups.length; i += chunk) {
    const part = groups.slice(i, i + chunk)
    const rows = await sql<Array<{ id: string }>>`
      insert into channels (kind, name, created_by)
      select 'group', ${name} || '-' || g, 'bench' from generate_series(1, ${part.length}) g
      returning id`
    const channelIds: string[] = []
    const userIds: string[] = []
    rows.forEach((r, j) => {
      ids.push(r.id)
      for (const u of part[j]!) { channelIds.push(r.id); userIds.push(u) }
    })
    await sql`insert into members (channel_id, user_id) select * from unnest(${channelIds}::uuid[], ${userIds}::text[])`
  }
  return ids
}

/** The usual groups for CPU/RSS: every process of ours, the harness itself, the services. */
export function usageGroups (parts: { gateways?: Proc[], worker?: Proc, workers?: Proc[], servers?: Proc[], loadPids?: number[], redis?: boolean, mergeServers?: boolean }): UsageGroup[] {
  const groups: UsageGroup[] = []
  if (parts.mergeServers === true) {
    // One column for all servers of a system (the peer scenario has many systems).
    const all = [...(parts.gateways ?? []), ...(parts.servers ?? [])]
    groups.push({ name: 'servers', pids: () => all.map((p) => p.pid) })
    parts = { ...parts, gateways: [], servers: [] }
  }
  for (const g of parts.gateways ?? []) groups.push({ name: g.name, pids: () => [g.pid] })
  if (parts.worker !== undefined) { const w = parts.worker; groups.push({ name: parts.mergeServers === true ? 'worker' : w.name, pids: () => [w.pid] }) }
  for (const w of parts.workers ?? []) groups.push({ name: w.name, pids: () => [w.pid] })
  for (const s of parts.servers ?? []) groups.push({ name: s.name, pids: () => [s.pid] })
  if (parts.loadPids !== undefined) { const p = parts.loadPids; groups.push({ name: 'load', pids: () => p }) }
  groups.push({ name: 'coordinator', pids: () => [process.pid] })
  // The broker node that listens on the AMQP port, not every Erlang VM on the host.
  const brokerPid = listenerPid(amqpPort())
  if (brokerPid === undefined) process.stderr.write(`bench: no process found listening on AMQP port ${amqpPort()}; counting every beam.smp as RabbitMQ\n`)
  groups.push({ name: 'rabbitmq', pids: () => brokerPid !== undefined ? [brokerPid] : pidsByName('beam.smp') })
  groups.push({ name: 'postgres', pids: () => pidsByName('postgres') })
  if (parts.redis === true) groups.push({ name: 'redis', pids: () => pidsByName('redis-server') })
  return groups
}
