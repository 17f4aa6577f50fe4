/**
 * Recovery after deliveries were lost while sockets stayed connected: the gateway's
 * queue died with a broker connection (an outage), or the broker dropped the oldest
 * deliveries of a full queue. Either way joined/left notices may be gone, so the
 * gateway re-reads what its users belong to (binding and announcing what changed) and
 * then tells its sockets to catch up from history (docs/PROTOCOL.md, recovery flow).
 *
 * One re-read runs at a time. A request while one runs asks for another pass after it,
 * since the running one may have read too early; each finished pass emits
 * `session:resync`. Drops come in bursts: a pass starts once they pause for `quietMs`,
 * or `maxWaitMs` after the first, whichever is sooner.
 *
 * A pass fails, and is retried, only when the worker answers nothing: one user whose
 * channels cannot be read is singled out and told to reconnect by Sessions.resync, so
 * the others still get their pass.
 */
import type { ServerToClientEvents } from '../contracts/protocol.js'
import type { Logger } from '../log.js'
import type { Sessions } from './sessions.js'
import type { AppIo } from './types.js'

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

  async function reread (reason: ResyncReason): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      if (o.stopped()) return false
      try {
        const started = performance.now()
        const { users, ended } = await o.sessions.resync()
        // `ended`: sockets of users whose own read kept failing, told to reconnect (Sessions.resync).
        o.log.info({ users, ended, reason, durationMs: Math.round(performance.now() - started) }, 're-read channel memberships')
        return true
      } catch (err) {
        // Until it succeeds (a worker restarting, a broker alarm): giving up would leave
        // memberships stale for as long as the users stay connected.
        o.log.warn({ err, attempt, reason }, 'could not re-read channel memberships; retrying')
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * 2 ** Math.min(attempt, 5))).unref())
      }
    }
  }

  async function run (reason: ResyncReason): Promise<void> {
    running = true
    try {
      for (let next: ResyncReason | undefined = reason; next !== undefined;) {
        again = undefined
        if (!await reread(next)) return
        try {
          o.io.local.emit('session:resync', { reason: next })
        } catch (err) {
          // The memberships are right; a request made meanwhile still gets its pass.
          o.log.error({ err, reason: next }, 'could not tell the sockets to catch up')
        }
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
