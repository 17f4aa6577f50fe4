/**
 * Reads and channel commands each user has waiting on the worker through this gateway.
 * Workers serve them first come, first served, from one queue, WORKER_RPC_CONCURRENCY at a
 * time each: without a cap, one user sending heavy reads (full history pages) or large
 * creates as fast as the rate limit allows fills that queue, and every other user's reads,
 * commands and session opens wait behind them until they time out. Per user, not per
 * socket, so that opening more sockets gains nothing.
 */
import { ClientError } from '../errors.js'

export class UserRequests {
  readonly #waiting = new Map<string, number>()
  readonly #max: number

  constructor (max: number) {
    this.#max = max
  }

  /**
   * Runs `call` for `userId` unless that user already has the most requests waiting.
   * @throws ClientError RATE_LIMITED, without running `call`
   */
  async run<T> (userId: string, call: () => Promise<T>): Promise<T> {
    const waiting = this.#waiting.get(userId) ?? 0
    if (waiting >= this.#max) {
      throw new ClientError('RATE_LIMITED', `${this.#max} of your requests are still waiting for answers; send the next when one is answered`)
    }
    this.#waiting.set(userId, waiting + 1)
    try {
      return await call()
    } finally {
      const left = (this.#waiting.get(userId) ?? 1) - 1
      if (left === 0) this.#waiting.delete(userId)
      else this.#waiting.set(userId, left)
    }
  }
}
