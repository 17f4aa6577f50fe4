/**
 * Reads a list of items in one request, and when that request fails, in halves, down to
 * the items that fail on their own, so that one item whose read fails (a user in more
 * channels than one answer may list, a row the worker cannot read, a read too slow to
 * answer in time) cannot stop the read of the others. Used by the re-read of memberships
 * after lost deliveries (src/gateway/sessions.ts).
 *
 * - Bounded: `maxRequests` per call (a list of n items needs at most 2n - 1 without it).
 * - An item is `failed` (its user is sent away to reconnect) only when a part the reader
 *   refused (not `inconclusive`) cannot be split further: alone, or the budget spent.
 * - A part that got no answer in time (`inconclusive`) is split too, since one slow item
 *   can time out a whole part, but its items are never blamed: once it cannot be split
 *   they are `unresolved`, for the caller to read again later. The worker may be
 *   overloaded, as when every gateway re-reads after an outage, and sending users away to
 *   open sessions would only add to its load.
 * - When the list, its halves and its quarters failed and nothing was answered, the fault is the
 *   reader's (the worker down, or failing every request, as one deployed ahead of its
 *   migration would): it stops there and every item is `unresolved`. Unless the reader
 *   said the items themselves are the cause (`definite`: too many channels to list), or the
 *   caller knows the reader answers (`readerAnswers`: it answered for others in an earlier
 *   pass, so one user re-read alone and refused is refused for that user's own sake).
 */

export interface BisectOptions {
  /** Requests at most, the first included. */
  maxRequests: number
  /** True for a failure that may not be the items' fault (no answer in time). */
  inconclusive: (err: unknown) => boolean
  /** True for a refusal that names the items as its cause, whatever else failed. */
  definite: (err: unknown) => boolean
  /** True when the reader is known to answer: a refusal is then never taken for the reader's own fault. */
  readerAnswers?: boolean
}

export interface BisectResult<T> {
  /** Items refused on their own (or in a refused part when the budget ran out). */
  failed: Array<{ item: T, err: unknown }>
  /** Items neither read nor refused: read them again later. */
  unresolved: T[]
  /** Items read. */
  read: number
  requests: number
}

/** @param read reads one part; resolves once the part is applied, rejects if it could not be read */
export async function readBisecting<T> (items: T[], read: (part: T[]) => Promise<void>, o: BisectOptions): Promise<BisectResult<T>> {
  const result: BisectResult<T> = { failed: [], unresolved: [], read: 0, requests: 0 }
  let level: T[][] = items.length === 0 ? [] : [items]
  while (level.length > 0) {
    result.requests += level.length
    // One level at a time, its parts at once: a read takes at most log2(n) + 1 round trips.
    const outcomes = await Promise.all(level.map((part) => read(part).then(() => undefined, (err: unknown) => ({ err }))))
    const failed: Array<{ part: T[], err: unknown }> = []
    for (const [k, outcome] of outcomes.entries()) {
      if (outcome === undefined) result.read += level[k]!.length
      else failed.push({ part: level[k]!, err: outcome.err })
    }
    // Three levels failed (the list, its halves and quarters), or every part left is one
    // item, and nothing was answered: the reader, not the items. Not fewer levels: two
    // unreadable users, one in each half, would look the same at two.
    const blind = o.readerAnswers !== true && failed.length > 0 && !failed.some((f) => o.definite(f.err)) && result.read === 0 && result.failed.length === 0
    if (blind && (result.requests >= 7 || failed.every((f) => f.part.length === 1))) {
      for (const { part } of failed) result.unresolved.push(...part)
      break
    }
    const next: T[][] = []
    for (const { part, err } of failed) {
      // Each split adds two requests to the next level.
      if (part.length > 1 && result.requests + next.length + 2 <= o.maxRequests) {
        const half = Math.ceil(part.length / 2)
        next.push(part.slice(0, half), part.slice(half))
      } else if (o.inconclusive(err)) {
        result.unresolved.push(...part)
      } else {
        for (const item of part) result.failed.push({ item, err })
      }
    }
    level = next
  }
  return result
}
