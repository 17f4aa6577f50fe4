/**
 * How far the workers are behind: the depth of the worker queue, read with a passive
 * queue.declare every few hundred milliseconds (the same method works on RabbitMQ 3.x
 * and 4.x, classic and quorum queues).
 *
 * A gateway refuses new sends while the queue is deeper than its limit. Past the
 * workers' capacity, accepting more only makes every message later, and the broker
 * spends its CPU on a backlog instead of on the workers; the benchmark's 2.5x overload
 * run kept persisting at two thirds of the ceiling with confirms timing out. A refusal
 * is cheap, immediate and never published, so a retry with the same clientMsgId is
 * always safe.
 */
import type { Connection } from 'rabbitmq-client'

export interface BacklogWatchOptions {
  connection: Connection
  queue: string
  /** Refuse while at least this many messages wait; 0 turns the watch off. */
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
  #depth: number | undefined
  #over = false
  #reading = false
  #closed = false

  constructor (options: BacklogWatchOptions) {
    this.#o = options
    if (options.max > 0) {
      this.#timer = setInterval(() => { void this.read() }, options.intervalMs)
      this.#timer.unref()
    }
  }

  /** Messages waiting in the worker queue at the last read; undefined if never read or off. */
  get depth (): number | undefined { return this.#depth }

  /** True while the backlog is over the limit (until it falls below 80 % of it). */
  get over (): boolean { return this.#over }

  /** Reads the depth now; never throws. Exposed so tests need not wait for the timer. */
  async read (): Promise<void> {
    if (this.#reading || this.#closed || this.#o.max <= 0) return
    this.#reading = true
    try {
      const { messageCount } = await this.#o.connection.queueDeclare({ queue: this.#o.queue, passive: true })
      this.#depth = messageCount
      if (messageCount >= this.#o.max) this.#over = true
      else if (messageCount < this.#o.max * RESUME_AT) this.#over = false
    } catch (err) {
      // Unknown depth: stop refusing. If the broker is really gone, sends fail on their own.
      this.#depth = undefined
      this.#over = false
      this.#o.onError?.(err)
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
