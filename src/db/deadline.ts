/**
 * Writes that commit before a deadline or not at all. withDbTimeout only stops waiting:
 * a channel.create answered UNAVAILABLE could commit afterwards, unannounced, and the
 * client's retry made a second channel (a leave: gone, and the retry FORBIDDEN).
 */
import { sql } from 'drizzle-orm'
import type { Database } from './client.js'
import { DbTimeoutError, withDbTimeout } from './errors.js'

type Executor = Pick<Database, 'execute'>

/**
 * A write that had its connection, the database answering, and ran past its deadline (a
 * lock held by another, a long statement). Still a timeout (APP_DB_TIMEOUT), but one a
 * caller with a deadline of its own need not take for the database being down.
 */
export class WriteTooSlowError extends DbTimeoutError {}

export class WriteDeadline {
  /** Date.now() after which the transaction must not commit. */
  readonly at: number
  #state: 'open' | 'committing' | 'abandoned' = 'open'
  /** The transaction had a connection and the database answered its first statement. */
  began = false

  constructor (at: number) {
    this.at = at
  }

  /**
   * First in the transaction: the database itself cancels a statement or a lock wait
   * that would pass the deadline, so locks are not held past it.
   * @throws DbTimeoutError when the deadline passed (waiting for a connection, say)
   */
  async limit (tx: Executor): Promise<void> {
    const ms = this.#remainingOrThrow()
    await tx.execute(sql`select set_config('statement_timeout', ${String(ms)}, true), set_config('lock_timeout', ${String(ms)}, true)`)
    this.began = true
  }

  /**
   * Last in the transaction, right before its commit: throwing rolls it back. Past this
   * point the caller waits for the commit rather than answer that nothing changed.
   */
  commitOrThrow (): void {
    this.#remainingOrThrow()
    this.#state = 'committing'
  }

  /** The caller stops waiting. False when the transaction is already committing. */
  abandon (): boolean {
    if (this.#state === 'committing') return false
    this.#state = 'abandoned'
    return true
  }

  #remainingOrThrow (): number {
    const ms = this.at - Date.now()
    // statement_timeout 0 would mean no limit at all.
    if (this.#state === 'abandoned' || ms < 1) throw new DbTimeoutError('the write passed its deadline; rolled back')
    return ms
  }
}

/**
 * Runs a transactional write that takes `deadline` and calls its limit() first and
 * commitOrThrow() last. Rejects with DbTimeoutError after `ms` only when the transaction
 * has not reached its commit: then it never commits. One that is committing is waited
 * for up to `ms` more; only a connection lost in that window leaves the outcome unknown.
 */
export async function writeWithin<T> (ms: number, write: (deadline: WriteDeadline) => Promise<T>): Promise<T> {
  const deadline = new WriteDeadline(Date.now() + ms)
  const work = write(deadline)
  try {
    return await withDbTimeout(work, ms)
  } catch (err) {
    if (!(err instanceof DbTimeoutError) || deadline.abandon()) {
      work.catch(() => {}) // it rolls back on its own
      throw err instanceof DbTimeoutError && deadline.began ? new WriteTooSlowError(err.message, { cause: err }) : err
    }
    return await withDbTimeout(work, ms)
  }
}
