/**
 * Reads a list of items in one request, and when that request fails, in halves, down to
 * the items that fail on their own, so that one item whose read fails (a user in
 * hundreds of thousands of channels: the worker refuses the answer, or it times out)
 * cannot stop the read of the others. Used by the re-read of memberships after lost
 * deliveries (src/gateway/sessions.ts).
 *
 * Bounded: `maxRequests` per call (a list of n items needs at most 2n - 1 without it).
 * When it is spent, every item of a part still failing counts as failed.
 *
 * A failure that says nothing of the items (`inconclusive`: the worker did not answer)
 * may mean the worker is down, and then every half would fail too: once the whole list
 * and both its halves failed that way and nothing was answered, the read gives up and
 * throws, and the caller retries it later; a part that fails inconclusively is counted
 * as failed only if some other part was answered.
 */

export interface BisectOptions {
  /** Requests at most, the first included. */
  maxRequests: number
  /** True for a failure that may be the reader's fault, not the items'. */
  inconclusive: (err: unknown) => boolean
}

export interface BisectResult<T> {
  /** Items whose read failed on its own (or in a part still failing when the budget ran out). */
  failed: Array<{ item: T, err: unknown }>
  requests: number
}

/**
 * @param read reads one part; resolves once the part is applied, rejects if it could not be read
 * @throws the last inconclusive error when no part could be read and none failed conclusively
 */
export async function readBisecting<T> (items: T[], read: (part: T[]) => Promise<void>, o: BisectOptions): Promise<BisectResult<T>> {
  const failed: BisectResult<T>['failed'] = []
  if (items.length === 0) return { failed, requests: 0 }
  let requests = 0
  let answered = 0
  let conclusive = 0
  let lastErr: unknown
  let level: T[][] = [items]
  while (level.length > 0) {
    requests += level.length
    // One level at a time, its parts at once: a pass takes at most log2(n) + 1 timeouts.
    const outcomes = await Promise.all(level.map((part) => read(part).then(() => undefined, (err: unknown) => ({ err }))))
    const next: Array<{ part: T[], err: unknown }> = []
    for (const [k, outcome] of outcomes.entries()) {
      if (outcome === undefined) {
        answered++
        continue
      }
      lastErr = outcome.err
      if (!o.inconclusive(outcome.err)) conclusive++
      next.push({ part: level[k]!, err: outcome.err })
    }
    // Three requests (the list, both halves) and not one answered: the reader, not the items.
    if (answered === 0 && conclusive === 0 && (requests >= 3 || next.every((n) => n.part.length === 1))) throw lastErr
    level = []
    for (const { part, err } of next) {
      if (part.length === 1 || requests + level.length + 2 > o.maxRequests) {
        for (const item of part) failed.push({ item, err })
        continue
      }
      const half = Math.ceil(part.length / 2)
      level.push(part.slice(0, half), part.slice(half))
    }
  }
  return { failed, requests }
}
