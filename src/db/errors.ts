/**
 * Telling a database outage (retry, never dead-letter) from a bad message (which
 * no retry will fix).
 */

// SQLSTATEs that say "the database, its state or its deployment, not this message": the
// work is held and retried, never dead-lettered. Connection (08), transaction state such
// as a read-only standby after a failover (25), login refused (28), no such database (3D),
// rollbacks and deadlocks (40), resources (53), operator intervention (57), system (58);
// and a lock not available, privileges, a missing table or function (a deploy before its
// migration), a pooler's prepared-statement trouble. Anything else (a data exception, a
// constraint, an error raised for one row) isolates the message that causes it: held
// forever, it would stop persistence for everyone behind it.
const TRANSIENT_SQLSTATE_CLASSES = new Set(['08', '25', '28', '3D', '40', '53', '57', '58'])
const TRANSIENT_SQLSTATES = new Set(['55P03', '42501', '42P01', '42883', '26000', '42P05'])
// Node and postgres.js error codes for a lost or refused connection.
const TRANSIENT_NODE_CODES = new Set([
  'APP_DB_TIMEOUT', 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN',
  'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT'
])

/**
 * True when retrying the same work later may succeed: the database was down, busy,
 * deadlocked, read-only, refusing logins or not migrated. Other errors (the data, a
 * bug) are not transient: the worker isolates the message that causes one.
 */
export function isTransientDbError (err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string') {
      if (TRANSIENT_NODE_CODES.has(code)) return true
      if (/^[0-9A-Z]{5}$/.test(code) && (e as { severity?: unknown }).severity !== undefined) {
        return TRANSIENT_SQLSTATES.has(code) || TRANSIENT_SQLSTATE_CLASSES.has(code.slice(0, 2))
      }
    }
    if (e instanceof AggregateError && e.errors.some(isTransientDbError)) return true
    e = (e as { cause?: unknown }).cause
  }
  return false
}

/** The SQLSTATE (or driver code) of a database error, however postgres.js or drizzle wraps it. */
export function sqlState (err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string') return code
    e = e.cause
  }
  return undefined
}

/** A loggable summary without query parameters (they hold message content). */
export function describeDbError (err: unknown): { code?: string, message: string } {
  let e: unknown = err
  while (e instanceof Error && e.cause instanceof Error) e = e.cause
  const code = (e as { code?: unknown }).code
  return { ...(typeof code === 'string' ? { code } : {}), message: e instanceof Error ? e.message : String(e) }
}

/** The database did not answer in time; treated like a lost connection. */
export class DbTimeoutError extends Error {
  readonly code = 'APP_DB_TIMEOUT'
}

/**
 * Rejects with DbTimeoutError after `ms`. postgres.js waits for a connection for as
 * long as a server keeps accepting and dropping it (a proxy or pooler in front of a
 * dead database), so an outage must be noticed by time, not only by errors. The
 * query itself is not cancelled; callers must be idempotent.
 */
export async function withDbTimeout<T> (work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([work, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new DbTimeoutError(`no answer from the database within ${ms} ms`)), ms)
    })])
  } finally {
    clearTimeout(timer)
  }
}
