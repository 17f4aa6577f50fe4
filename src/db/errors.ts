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
// postgres.js (and our own) codes for a lost, refused or silent connection; a DNS failure.
const TRANSIENT_DRIVER_CODES = new Set([
  'APP_DB_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT', 'EAI_AGAIN'
])
// Node's socket errors (ECONNREFUSED, ENETDOWN, EADDRNOTAVAIL…) and TLS and certificate
// failures (DEPTH_ZERO_SELF_SIGNED_CERT, CERT_HAS_EXPIRED, ERR_TLS_CERT_ALTNAME_INVALID,
// UNABLE_TO_VERIFY_LEAF_SIGNATURE…): the path to the database or its deployment is wrong
// (an expired or replaced certificate, an interceptor), never one message. Classed as
// refusals, they split the batch and dead-letter every good message while the worker
// reports the database up. Only codes of errors the server did not send: a server's
// error always carries a SQLSTATE and a severity, and is judged by that SQLSTATE.
const TRANSIENT_NODE_CODE = /^(E[A-Z]+|ERR_(SSL|TLS|SOCKET)_[A-Z_]+|[A-Z_]*CERT[A-Z_]*|UNABLE_TO_[A-Z_]+)$/

/**
 * True when retrying the same work later may succeed: the database was down, busy,
 * deadlocked, read-only, refusing logins or not migrated. Other errors (the data, a
 * bug) are not transient: the worker isolates the message that causes one.
 */
export function isTransientDbError (err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string') {
      if (TRANSIENT_DRIVER_CODES.has(code)) return true
      if ((e as { severity?: unknown }).severity !== undefined) {
        if (/^[0-9A-Z]{5}$/.test(code)) return TRANSIENT_SQLSTATES.has(code) || TRANSIENT_SQLSTATE_CLASSES.has(code.slice(0, 2))
      } else if (TRANSIENT_NODE_CODE.test(code)) {
        return true
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
