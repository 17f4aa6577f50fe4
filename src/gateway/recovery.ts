/**
 * Recovery after deliveries were lost while sockets stayed connected: the gateway's
 * queue died with a broker connection (an outage), or the broker dropped the oldest
 * deliveries of a full queue. Either way joined/left notices may be gone, so the
 * gateway re-reads what its users belong to (binding and announcing what changed) and
 * then tells its sockets to catch up from history (docs/PROTOCOL.md, recovery flow).
 *
 * One re-read runs at a time. A request while one runs asks for another pass after it,
 * since the running one may have read too early; a pass tells each user's sockets
 * `session:resync` once that user's channels are re-read. Drops come in bursts: a pass
 * starts once they pause for `quietMs`, or `maxWaitMs` after the first, whichever is
 * sooner.
 *
 * Users the worker did not answer for are re-read alone until it does; one the worker
 * refuses alone is told to reconnect by Sessions.resync; neither holds up the others.
 */
import type { ServerToClientEvents } from '../contracts/protocol.js'
import type { Logger } from '../log.js'
import type { Sessions } from './sessions.js'
import { userRoom, type AppIo } from './types.js'

export type ResyncReason = Parameters<ServerToClientEvents['session:resync']>[0]['reason']

export interface RecoveryOptions {
  io: AppIo
  sessions: Pick<Sessions, 'resync'>
  log: Logger
  /** No re-read starts while this is true (the gateway is shutting down). */
  stopped: () => boolean
  /** @default 1000 */
  quietMs?: number
  /** @default 10000 */
  maxWaitMs?: number
}

export function createRecovery (o: RecoveryOptions) {
  const quietMs = o.quietMs ?? 1000
  const maxWaitMs = o.maxWaitMs ?? 10_000
  let running = false
  let closed = false
  let again: ResyncReason | undefined
  let firstDropAt: number | undefined
  let timer: NodeJS.Timeout | undefined

  // An outage says more than drops (every key was re-bound): keep it in the reason.
  const merge = (a: ResyncReason | undefined, b: ResyncReason): ResyncReason => a === 'BROKER_RECONNECTED' ? a : b

  /**
   * Re-reads every local user's channels and tells each user's sockets to catch up as soon
   * as that user's are right: a part the worker does not answer (one slow read, a worker
   * restarting) must not keep the others from catching up. Those left unresolved are read
   * again, alone, until they are (giving up would leave their memberships stale for as
   * long as they stay connected).
   * @returns false when the gateway stopped first
   */
  async function reread (reason: ResyncReason): Promise<boolean> {
    let only: ReadonlySet<string> | undefined
    // Once the worker answered for some users, a user re-read alone and refused (not timed
    // out) is refused for their own sake, and is told to reconnect: taken for a worker
    // failing everything, a user whose first read timed out and whose every read fails
    // (a row the worker cannot read) would be re-read for as long as they stay connected.
    let answered = false
    for (let attempt = 0; ; attempt++) {
      if (o.stopped()) return false
      // Deliveries were lost again meanwhile (more drops, another outage): every user must be
      // re-read, the unresolved among them. Re-reading only these, for as long as the worker
      // does not answer for one of them, would never serve that request.
      if (only !== undefined && again !== undefined) {
        again = merge(reason, again)
        return true
      }
      const started = performance.now()
      try {
        // Each part's users are told as soon as it is applied, not when the pass ends.
        const told = new Set<string>()
        const pass = await o.sessions.resync(only, (userIds) => {
          for (const id of userIds) told.add(id)
          tell(userIds, reason)
        }, answered)
        if (pass.resolved.length > 0 || pass.ended > 0) answered = true
        tell(pass.resolved.filter((id) => !told.has(id)), reason)
        // `ended`: sockets of users the worker refused alone, told to reconnect (Sessions.resync).
        o.log.info({ users: pass.resolved.length, unresolved: pass.unresolved.length, ended: pass.ended, reason, durationMs: Math.round(performance.now() - started) }, 're-read channel memberships')
        if (pass.unresolved.length === 0) return true
        only = new Set(pass.unresolved)
        o.log.warn({ users: only.size, attempt, reason }, 'the worker did not answer for some users; re-reading them')
      } catch (err) {
        // Not expected (resync reports what it could not read): the same users again.
        o.log.error({ err, attempt, reason }, 'could not re-read channel memberships; retrying')
      }
      await backoff(attempt)
    }
  }

  const backoff = (attempt: number) => new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * 2 ** Math.min(attempt, 5))).unref())

  function tell (userIds: string[], reason: ResyncReason): void {
    if (userIds.length === 0) return
    try {
      o.io.to(userIds.map(userRoom)).emit('session:resync', { reason })
    } catch (err) {
      // The memberships are right; a request made meanwhile still gets its pass.
      o.log.error({ err, reason }, 'could not tell the sockets to catch up')
    }
  }

  async function run (reason: ResyncReason): Promise<void> {
    running = true
    try {
      for (let next: ResyncReason | undefined = reason; next !== undefined;) {
        again = undefined
        if (!await reread(next)) return
        next = again
      }
    } finally {
      running = false
    }
  }

  function request (reason: ResyncReason): void {
    if (closed) return
    if (running) {
      again = merge(again, reason)
      return
    }
    run(reason).catch((err: unknown) => { o.log.error({ err, reason }, 'recovery after lost deliveries failed') })
  }

  return {
    /** The queue was re-attached after a broker outage. */
    outage (): void { request('BROKER_RECONNECTED') },
    /** The broker reported deliveries dropped from the full queue. */
    dropped (): void {
      if (closed) return
      const now = performance.now()
      firstDropAt ??= now
      clearTimeout(timer)
      timer = setTimeout(() => {
        firstDropAt = undefined
        request('DELIVERIES_DROPPED')
      }, Math.max(0, Math.min(quietMs, firstDropAt + maxWaitMs - now))).unref()
    },
    close (): void {
      closed = true
      clearTimeout(timer)
    }
  }
}
