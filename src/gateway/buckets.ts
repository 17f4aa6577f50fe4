/**
 * Rate-limit buckets that outlive their socket for as long as they matter. A new socket
 * starts from a bucket one of its user's recent sockets on this gateway left (refilled
 * for the time since), and such a reconnect costs a token: reconnecting never hands out
 * a fresh burst, and a user cannot make the gateway open sessions (a worker read and
 * binds each) faster than the rate limit. A user gets a fresh, full bucket only when
 * none of theirs is kept, so alternating between sockets gains nothing either.
 */
import { take, type Bucket } from './handle.js'

/** Kept buckets per user; beyond it the fullest are dropped (they are the least owed). */
const MAX_KEPT_PER_USER = 64

export class RecentBuckets {
  readonly #kept = new Map<string, Bucket[]>()
  readonly #rate: number
  readonly #burst: number

  constructor (rate: number, burst: number) {
    this.#rate = rate
    this.#burst = burst
  }

  /** The bucket for a new socket of `userId`; undefined when a reconnect finds no token to pay with. */
  open (userId: string): Bucket | undefined {
    const kept = this.#kept.get(userId)
    if (kept === undefined) return { tokens: this.#burst, last: performance.now() }
    // The fullest: what a legitimate reconnect of a quiet socket expects.
    let best = 0
    for (let i = 1; i < kept.length; i++) {
      if (this.#refilled(kept[i]!) > this.#refilled(kept[best]!)) best = i
    }
    const bucket = kept[best]!
    if (!take(bucket, this.#rate, this.#burst)) return undefined
    kept.splice(best, 1)
    if (kept.length === 0) this.#kept.delete(userId)
    return bucket
  }

  /** A socket of `userId` went away: its bucket is where one of their next sockets starts. */
  keep (userId: string, bucket: Bucket): void {
    const kept = this.#kept.get(userId)
    if (kept === undefined) {
      this.#kept.set(userId, [bucket])
      return
    }
    kept.push(bucket)
    if (kept.length > MAX_KEPT_PER_USER) {
      kept.sort((a, b) => this.#refilled(a) - this.#refilled(b))
      kept.length = MAX_KEPT_PER_USER
    }
  }

  /** Forgets buckets that have refilled completely (they are as good as a new one). */
  prune (): void {
    for (const [userId, kept] of this.#kept) {
      const left = kept.filter((b) => this.#refilled(b) < this.#burst)
      if (left.length === 0) this.#kept.delete(userId)
      else if (left.length < kept.length) this.#kept.set(userId, left)
    }
  }

  /** Tokens the bucket would hold now. */
  #refilled (bucket: Bucket): number {
    return Math.min(this.#burst, bucket.tokens + ((performance.now() - bucket.last) / 1000) * this.#rate)
  }

  get size (): number { return this.#kept.size }
}
