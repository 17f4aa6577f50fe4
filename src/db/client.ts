/**
 * The worker's database handle: drizzle over postgres.js. Only the worker and the
 * migration command open one; gateways never do.
 */
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { drizzle } from 'drizzle-orm/postgres-js'
import postgres from 'postgres'
import * as schema from '../../drizzle/schema.js'

/** What repositories need: any drizzle PostgreSQL database over our schema. */
export type Database = PgDatabase<PgQueryResultHKT, typeof schema>

export interface DatabaseHandle {
  db: Database
  /** Ends the pool; waits for running queries up to the timeout. Idempotent. */
  close: () => Promise<void>
}

export interface OpenDatabaseOptions {
  url: string
  /** Pool size. @default 10 */
  max?: number
  /** Seconds before a connection attempt gives up. @default 5 */
  connectTimeoutSeconds?: number
  applicationName?: string
}

export function openDatabase (opts: OpenDatabaseOptions): DatabaseHandle {
  const client = postgres(opts.url, {
    max: opts.max ?? 10,
    connect_timeout: opts.connectTimeoutSeconds ?? 5,
    idle_timeout: 60,
    // NOTICEs (e.g. "relation already exists") are not worth a log line each.
    onnotice: () => {},
    connection: { application_name: opts.applicationName ?? 'chat-worker' }
  })
  const db = drizzle({ client, schema })
  let closing: Promise<void> | undefined
  return {
    db,
    close: () => {
      closing ??= client.end({ timeout: 5 })
      return closing
    }
  }
}
