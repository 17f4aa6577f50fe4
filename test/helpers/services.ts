/**
 * The real local services, isolated per test file: a RabbitMQ vhost and a
 * PostgreSQL database of its own, both deleted at teardown.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import postgres from 'postgres'
import type { Test } from 'tap'
import { runMigrations } from '../../src/db/migrate.js'

const run = promisify(execFile)

// The broker under test: the local 3.10 by default; TEST_AMQP_PORT and TEST_RABBITMQCTL
// point the suite at another node (README, "Commands").
export const AMQP_PORT = Number(process.env.TEST_AMQP_PORT ?? 5672)
export const AMQP_HOST = `127.0.0.1:${AMQP_PORT}`
const RABBITMQCTL = process.env.TEST_RABBITMQCTL ?? 'rabbitmqctl'
export const PG_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres'

export const uniqueName = (prefix: string) => `${prefix}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`

export async function rabbitmqctl (...args: string[]): Promise<string> {
  const { stdout } = await run(RABBITMQCTL, ['-q', ...args], { timeout: 60_000 })
  return stdout
}

/** A fresh vhost with guest permissions; returns its AMQP URL. Deleted at teardown. */
export async function createVhost (t: Test): Promise<{ vhost: string, url: string }> {
  const vhost = uniqueName('t')
  await rabbitmqctl('add_vhost', vhost)
  await rabbitmqctl('set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*')
  t.teardown(async () => { await rabbitmqctl('delete_vhost', vhost) })
  return { vhost, url: `amqp://guest:guest@${AMQP_HOST}/${encodeURIComponent(vhost)}` }
}

export interface Binding { source: string, destination: string, kind: 'queue' | 'exchange', routingKey: string }

/**
 * The broker's own list of bindings in a vhost (from rabbitmqctl, not from us), without
 * the default exchange's. A gateway's keys are bindings from the outgoing exchange to
 * its route exchange (`app.bindings.route`).
 */
export async function listBindings (vhost: string, exchange?: string): Promise<Binding[]> {
  const out = await rabbitmqctl('list_bindings', '-p', vhost, '--formatter', 'json', 'source_name', 'destination_name', 'destination_kind', 'routing_key')
  const rows = JSON.parse(out) as Array<{ source_name: string, destination_name: string, destination_kind: 'queue' | 'exchange', routing_key: string }>
  return rows
    .filter((r) => r.source_name !== '' && (exchange === undefined || r.source_name === exchange))
    .map((r) => ({ source: r.source_name, destination: r.destination_name, kind: r.destination_kind, routingKey: r.routing_key }))
}

export async function listQueues (vhost: string): Promise<Array<{ name: string, messages: number }>> {
  const out = await rabbitmqctl('list_queues', '-p', vhost, '--formatter', 'json', 'name', 'messages')
  return JSON.parse(out) as Array<{ name: string, messages: number }>
}

/** Closes (as the broker would on a network failure) every connection whose name contains `nameIncludes`. */
export async function closeConnections (vhost: string, nameIncludes: string): Promise<number> {
  const out = await rabbitmqctl('--no-table-headers', 'list_connections', 'pid', 'vhost', 'client_properties')
  let closed = 0
  for (const line of out.split('\n')) {
    const [pid, vh, props] = line.split('\t')
    if (pid === undefined || vh !== vhost || props === undefined || !props.includes(nameIncludes)) continue
    await rabbitmqctl('close_connection', pid, 'test: simulated connection loss')
    closed++
  }
  return closed
}

/** A fresh, migrated database; returns its URL. Dropped at teardown. */
export async function createDatabase (t: Test): Promise<string> {
  const name = uniqueName('t')
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database "${name}"`)
  await admin.end()
  const url = `postgres://postgres@127.0.0.1:5432/${name}`
  t.teardown(async () => {
    const a = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} })
    await a.unsafe(`drop database if exists "${name}" with (force)`)
    await a.end()
  })
  await runMigrations(url)
  return url
}

/** A short-lived SQL client for assertions; closed at teardown. */
export function sqlClient (t: Test, url: string) {
  const sql = postgres(url, { max: 2, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 2 }))
  return sql
}
