/**
 * How far the workers are behind: the depth of each send queue (shard), read with a
 * passive queue.declare every few hundred milliseconds (the same method works on
 * RabbitMQ 3.x and 4.x, classic and quorum queues).
 *
 * A gateway refuses new sends to a shard while its queue is deeper than the limit;
 * sends to the other shards, stored by other workers, are still taken. Past the
 * workers' capacity, accepting more only makes every message later, and the broker
 * spends its CPU on a backlog instead of on the workers; the benchmark's 2.5x overload
 * run kept persisting at two thirds of the ceiling with confirms timing out. A refusal
 * is cheap, immediate and never published, so a retry with the same clientMsgId is
 * always safe.
 */
import type { Connection } from 'rabbitmq-client'

export interface BacklogWatchOptions {
  connection: Connection
  /** The send queues, by shard. */
  queues: string[]
  /** Refuse sends to a shard while at least this many messages wait in it; 0 turns the watch off. */
  max: number
  intervalMs: number
  /** Called when a read fails (queue not declared yet, connection down). */
  onError?: (err: unknown) => void
}

/** Below this share of `max` the watch accepts again, so it does not flap at the limit. */
const RESUME_AT = 0.8

export class BacklogWatch {
  readonly #o: BacklogWatchOptions
  readonly #timer: NodeJS.Timeout | undefined
  /** By shard; undefined where the last read failed. */
  #depths: Array<number | undefined>
  #over: boolean[]
  #reading = false
  #closed = false

  constructor (options: BacklogWatchOptions) {
    this.#o = options
    this.#depths = options.queues.map(() => undefined)
    this.#over = options.queues.map(() => false)
    if (options.max > 0) {
      this.#timer = setInterval(() => { void this.read() }, options.intervalMs)
      this.#timer.unref()
    }
  }

  /** Messages waiting in a shard's queue (the deepest without `shard`) at the last read; undefined if never read or off. */
  depth (shard?: number): number | undefined {
    if (shard !== undefined) return this.#depths[shard]
    const known = this.#depths.filter((d) => d !== undefined)
    return known.length === 0 ? undefined : Math.max(...known)
  }

  /** True while a shard's backlog (any shard's, without `shard`) is over the limit, until it falls below 80 % of it. */
  over (shard?: number): boolean {
    return shard !== undefined ? this.#over[shard] === true : this.#over.includes(true)
  }

  /** Reads the depth now; never throws. Exposed so tests need not wait for the timer. */
  async read (): Promise<void> {
    if (this.#reading || this.#closed || this.#o.max <= 0) return
    this.#reading = true
    try {
      for (const [shard, queue] of this.#o.queues.entries()) {
        try {
          const { messageCount } = await this.#o.connection.queueDeclare({ queue, passive: true })
          this.#depths[shard] = messageCount
          if (messageCount >= this.#o.max) this.#over[shard] = true
          else if (messageCount < this.#o.max * RESUME_AT) this.#over[shard] = false
        } catch (err) {
          // Unknown depth: stop refusing. If the broker is really gone, sends fail on their own.
          this.#depths[shard] = undefined
          this.#over[shard] = false
          this.#o.onError?.(err)
        }
      }
    } finally {
      this.#reading = false
    }
  }

  /** Idempotent. */
  close (): void {
    this.#closed = true
    clearInterval(this.#timer)
  }
}
