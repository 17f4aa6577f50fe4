/**
 * Reads a list of items in one request, and when that request is refused, in halves, down
 * to the items refused on their own, so that one item whose read fails (a user in more
 * channels than one answer may list, a row the worker cannot read) cannot stop the read
 * of the others. Used by the re-read of memberships after lost deliveries
 * (src/gateway/sessions.ts).
 *
 * Bounded: `maxRequests` per call (a list of n items needs at most 2n - 1 without it).
 * When it is spent, every item of a part still refused counts as failed.
 *
 * A failure that says nothing of the items (`inconclusive`: no answer in time) is not
 * split and blames no one: the worker may be down or overloaded, which is exactly when
 * every gateway re-reads at once after a broker outage, and more, smaller requests (or
 * sending users away to reconnect and open sessions) would only add to its load. Such
 * items are returned as `unresolved`, for the caller to read again later.
 */

export interface BisectOptions {
  /** Requests at most, the first included. */
  maxRequests: number
  /** True for a failure that may be the reader's fault (no answer), not the items'. */
  inconclusive: (err: unknown) => boolean
}

export interface BisectResult<T> {
  /** Items refused on their own (or in a part still refused when the budget ran out). */
  failed: Array<{ item: T, err: unknown }>
  /** Items of parts that got no answer: neither read nor refused. */
  unresolved: T[]
  requests: number
}

/** @param read reads one part; resolves once the part is applied, rejects if it could not be read */
export async function readBisecting<T> (items: T[], read: (part: T[]) => Promise<void>, o: BisectOptions): Promise<BisectResult<T>> {
  const result: BisectResult<T> = { failed: [], unresolved: [], requests: 0 }
  let level: T[][] = items.length === 0 ? [] : [items]
  while (level.length > 0) {
    result.requests += level.length
    // One level at a time, its parts at once: a read takes at most log2(n) + 1 round trips.
    const outcomes = await Promise.all(level.map((part) => read(part).then(() => undefined, (err: unknown) => ({ err }))))
    const next: T[][] = []
    for (const [k, outcome] of outcomes.entries()) {
      if (outcome === undefined) continue
      const part = level[k]!
      if (o.inconclusive(outcome.err)) {
        result.unresolved.push(...part)
      } else if (part.length === 1 || result.requests + next.length * 2 + 2 > o.maxRequests) {
        for (const item of part) result.failed.push({ item, err: outcome.err })
      } else {
        const half = Math.ceil(part.length / 2)
        next.push(part.slice(0, half), part.slice(half))
      }
    }
    level = next
  }
  return result
}
