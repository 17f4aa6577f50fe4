/**
 * Rate-limit buckets that outlive their socket for as long as they matter. A socket
 * starts from the bucket its user's last socket left (refilled for the time since), and
 * such a reconnect costs a token: reconnecting no longer hands out a fresh burst, and a
 * user cannot make the gateway open sessions (a worker read and binds each) faster than
 * the rate limit. A user with no recent socket starts with a full burst.
 */
import { take, type Bucket } from './handle.js'

export class RecentBuckets {
  readonly #kept = new Map<string, Bucket>()
  readonly #rate: number
  readonly #burst: number

  constructor (rate: number, burst: number) {
    this.#rate = rate
    this.#burst = burst
  }

  /** The bucket for a new socket of `userId`; undefined when a reconnect finds no token to pay with. */
  open (userId: string): Bucket | undefined {
    const bucket = this.#kept.get(userId)
    if (bucket === undefined) return { tokens: this.#burst, last: performance.now() }
    if (!take(bucket, this.#rate, this.#burst)) return undefined
    this.#kept.delete(userId)
    return bucket
  }

  /** A socket of `userId` went away: its bucket is where their next socket starts. */
  keep (userId: string, bucket: Bucket): void {
    this.#kept.set(userId, bucket)
  }

  /** Forgets buckets that have refilled completely (they are as good as a new one). */
  prune (): void {
    const fullAfterMs = (this.#burst / this.#rate) * 1000
    const now = performance.now()
    for (const [userId, bucket] of this.#kept) if (now - bucket.last >= fullAfterMs) this.#kept.delete(userId)
  }

  get size (): number { return this.#kept.size }
}
