/**
 * The worker's database handle: drizzle over postgres.js when DATABASE_URL is set,
 * or over embedded PGlite (PostgreSQL in WebAssembly, in-process, in DATA_DIR) when it
 * is not — the same schema, migrations and repositories either way. Only the worker
 * and the migration command open one; gateways never do.
 */
import { mkdirSync } from 'node:fs'
import { PGlite } from '@electric-sql/pglite'
import { sql } from 'drizzle-orm'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite'
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator'
import { drizzle } from 'drizzle-orm/postgres-js'
import postgres from 'postgres'
import * as schema from '../../drizzle/schema.js'
import { MIGRATIONS_FOLDER } from './migrate.js'

/** What repositories need: any drizzle PostgreSQL database over our schema. */
export type Database = PgDatabase<PgQueryResultHKT, typeof schema>

export interface DatabaseHandle {
  db: Database
  /** 'postgres' (DATABASE_URL) or 'pglite' (embedded). */
  kind: 'postgres' | 'pglite'
  /** Ends the pool; waits for running queries up to the timeout. Idempotent. */
  close: () => Promise<void>
}

export interface OpenDatabaseOptions {
  url: string
  /**
   * Let postgres.js prepare statements (once per connection). Off behind a pooler in
   * transaction mode that cannot keep them (PgBouncer before 1.21). @default true
   */
  prepare?: boolean
  /** Pool size. @default 10 */
  max?: number
  /** Seconds before a connection attempt gives up. @default 5 */
  connectTimeoutSeconds?: number
  applicationName?: string
}

export function openDatabase (opts: OpenDatabaseOptions): DatabaseHandle {
  const client = postgres(opts.url, {
    max: opts.max ?? 10,
    prepare: opts.prepare ?? true,
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
    kind: 'postgres',
    close: () => {
      closing ??= client.end({ timeout: 5 })
      return closing
    }
  }
}

/**
 * Opens (creating it if needed) an embedded database in `dataDir` — or in memory when
 * `dataDir` is undefined — and applies the migrations. One process at a time may
 * open a data directory.
 */
export async function openEmbeddedDatabase (dataDir?: string): Promise<DatabaseHandle> {
  if (dataDir !== undefined) mkdirSync(dataDir, { recursive: true })
  const client = dataDir === undefined ? new PGlite() : new PGlite(dataDir)
  const db = drizzlePglite({ client, schema })
  await migratePglite(db, { migrationsFolder: MIGRATIONS_FOLDER })
  let closing: Promise<void> | undefined
  return {
    db,
    kind: 'pglite',
    close: () => {
      closing ??= client.close()
      return closing
    }
  }
}

/** Rows of one parametrised statement ($1, $2, …), as the driver parses them. */
export type StatementRunner = <T>(text: string, params: unknown[]) => Promise<T[]>

interface PostgresJsClient { unsafe: (text: string, params: unknown[], options: { prepare: boolean }) => Promise<unknown[]> }

/**
 * Runs a statement on the database's own driver. drizzle's `execute` never prepares, so
 * postgres.js asks the server to describe every call first: two round trips, and the
 * statement parsed and planned again each time. Here postgres.js prepares it once per
 * connection (unless `prepare` is off for the pool) and runs it in one round trip.
 */
export function statementRunner (db: Database): StatementRunner {
  const client: unknown = (db as { $client?: unknown }).$client
  if (client instanceof PGlite) {
    return async <T>(text: string, params: unknown[]) => (await client.query<T>(text, params)).rows
  }
  if (typeof client === 'function' && typeof (client as Partial<PostgresJsClient>).unsafe === 'function') {
    const pg = client as unknown as PostgresJsClient
    return async <T>(text: string, params: unknown[]) => await pg.unsafe(text, params, { prepare: true }) as T[]
  }
  // A drizzle transaction has no client of its own: its statements go through drizzle.
  return async <T>(text: string, params: unknown[]) => {
    const chunks = text.split(/\$(\d+)/).map((part, i) => i % 2 === 0 ? sql.raw(part) : sql.param(params[Number(part) - 1]))
    const result = await db.execute(sql.join(chunks)) as unknown as T[] | { rows: T[] }
    return Array.isArray(result) ? result : result.rows
  }
}
