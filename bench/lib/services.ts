/**
 * The local RabbitMQ and PostgreSQL, isolated per run: a vhost and a database of the
 * run's own, both removed by cleanup. The bench never stops or reconfigures the
 * shared services themselves; a broker "cut" happens in a TCP proxy of ours.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import postgres from 'postgres'
import { runMigrations } from '../../src/db/migrate.js'
import { onCleanup } from './cleanup.js'

const run = promisify(execFile)

export const AMQP_HOST = '127.0.0.1'
/** The broker under test: the local one, or another node on this host (`--amqp-port`, `--rabbitmqctl`). */
const broker = { port: 5672, rabbitmqctl: 'rabbitmqctl' }
export function useBroker (opts: { port?: number, rabbitmqctl?: string }): void { Object.assign(broker, opts) }
export const amqpPort = (): number => broker.port
export const PG_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres'
export const REDIS_URL = 'redis://127.0.0.1:6379'

export async function rabbitmqctl (...args: string[]): Promise<string> {
  const { stdout } = await run(broker.rabbitmqctl, ['-q', ...args], { timeout: 120_000, maxBuffer: 64 * 1024 * 1024 })
  return stdout
}

export const amqpUrl = (vhost: string, port = amqpPort()) => `amqp://guest:guest@${AMQP_HOST}:${port}/${encodeURIComponent(vhost)}`

/** A fresh vhost with guest permissions, deleted at cleanup. */
export async function createVhost (name: string): Promise<string> {
  await rabbitmqctl('add_vhost', name)
  onCleanup(`delete vhost ${name}`, async () => { await rabbitmqctl('delete_vhost', name) })
  await rabbitmqctl('set_permissions', '-p', name, 'guest', '.*', '.*', '.*')
  return name
}

/** Number of bindings on `exchange` in `vhost`, as the broker itself reports them. */
export async function countBindings (vhost: string, exchange: string): Promise<number> {
  const out = await rabbitmqctl('list_bindings', '-p', vhost, '--no-table-headers', 'source_name')
  let n = 0
  for (const line of out.split('\n')) if (line.trim() === exchange) n++
  return n
}

/** Messages in a queue, or in all of several (the send shards) together. */
export async function queueDepth (vhost: string, queue: string | string[]): Promise<number> {
  const names = new Set(typeof queue === 'string' ? [queue] : queue)
  const out = await rabbitmqctl('list_queues', '-p', vhost, '--no-table-headers', 'name', 'messages')
  let depth = 0
  for (const line of out.split('\n')) {
    const [name, messages] = line.split('\t')
    if (name !== undefined && names.has(name)) depth += Number(messages)
  }
  return depth
}

/** A fresh, migrated database; returns its URL. Dropped at cleanup. */
export async function createDatabase (name: string): Promise<string> {
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`create database "${name}"`)
  } finally {
    await admin.end({ timeout: 5 })
  }
  onCleanup(`drop database ${name}`, async () => {
    const a = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} })
    try {
      await a.unsafe(`drop database if exists "${name}" with (force)`)
    } finally {
      await a.end({ timeout: 5 })
    }
  })
  const url = `postgres://postgres@127.0.0.1:5432/${name}`
  await runMigrations(url)
  return url
}

/** A small SQL client for setup and checks, closed at cleanup. */
export function sqlClient (url: string, max = 4): postgres.Sql {
  const sql = postgres(url, { max, onnotice: () => {} })
  onCleanup('close sql client', () => sql.end({ timeout: 5 }))
  return sql
}

/** Versions of the services, for the report. */
export async function serviceVersions (): Promise<Record<string, string>> {
  const versions: Record<string, string> = { node: process.version }
  try { versions.rabbitmq = (await rabbitmqctl('version')).trim() } catch { versions.rabbitmq = 'unknown' }
  try {
    const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} })
    const [row] = await admin<Array<{ server_version: string }>>`show server_version`
    versions.postgresql = row?.server_version ?? 'unknown'
    await admin.end({ timeout: 5 })
  } catch { versions.postgresql = 'unknown' }
  try { versions.redis = (await run('redis-server', ['--version'])).stdout.match(/v=(\S+)/)?.[1] ?? 'unknown' } catch { versions.redis = 'unknown' }
  return versions
}
