/**
 * Orders a user's joined/left notices and the channel lists read for them (session.open,
 * memberships.list): a list read by the worker may be older than a notice the gateway
 * applied while the list was in flight, and must not undo it (src/gateway/sessions.ts,
 * #apply). Only a list in flight can be older than a notice (one requested later is read
 * after it), so what is remembered per channel is kept only while a list is in flight:
 * without that, a user who stays connected and loops create-then-leave, or messages
 * fresh ids, grew it without bound.
 */

export interface ListClock {
  /** Ticks at every joined/left applied and every channel list requested. */
  clock: number
  /** `clock` when each channel was last joined or left by a notice, while a list is in flight (created on first use; see settled()). */
  touched?: Map<string, number>
  /** `clock` at the request of each channel list not yet applied or given up (created on first use). */
  reading?: Set<number>
  /** `clock` at the request of the newest channel list applied; an older one changes no membership. */
  listedAt: number
}

export function touch (user: ListClock, channelId: string): void {
  user.clock++
  // No list in flight: every list from now on is read after this notice.
  if (user.reading === undefined || user.reading.size === 0) return
  ;(user.touched ??= new Map()).set(channelId, user.clock)
}

/**
 * A channel list is about to be requested: ticks the clock and keeps the list in flight
 * until settled().
 * @returns `since`, the list's place among the user's notices
 */
export function reading (user: ListClock): number {
  const since = ++user.clock
  ;(user.reading ??= new Set()).add(since)
  return since
}

/**
 * The list requested at `since` was applied or given up: drop what `touched` no longer
 * needs. An entry matters only to a list applied later that was requested before it
 * (#apply's changedSince) and is not older than `listedAt` (such a list changes no
 * membership): so only entries newer than both `listedAt` and the oldest list still in
 * flight are kept, and none once no list is.
 */
export function settled (user: ListClock, since: number): void {
  user.reading?.delete(since)
  if (user.touched === undefined) return
  if (user.reading === undefined || user.reading.size === 0) {
    user.touched = undefined
    return
  }
  const keepAfter = Math.max(user.listedAt, Math.min(...user.reading))
  for (const [id, at] of user.touched) if (at <= keepAfter) user.touched.delete(id)
}

