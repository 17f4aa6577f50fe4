/**
 * How far the workers are behind: the depth of each send queue (shard), read with a
 * queue.declare every few hundred milliseconds (the same method works on RabbitMQ 3.x
 * and 4.x, classic and quorum queues). The declare carries the queue's full arguments
 * rather than `passive`: a queue not declared yet (no worker and no send so far) is
 * created, as the gateway's first send would, instead of failing and closing the
 * channel every few hundred milliseconds.
 *
 * A gateway refuses new sends to a shard while its queue holds at least the limit;
 * sends to the other shards, stored by other workers, are still taken. Past the
 * workers' capacity, accepting more only makes every message later, and the broker
 * spends its CPU on a backlog instead of on the workers; the benchmark's 2.5x overload
 * run kept persisting at two thirds of the ceiling with confirms timing out. A refusal
 * is cheap, immediate and never published, so a retry with the same clientMsgId is
 * always safe.
 */
import type { Channel, Cmd, Connection, MethodParams } from 'rabbitmq-client'

export interface BacklogWatchOptions {
  connection: Connection
  /** The send queues' declarations, by shard (src/broker/topology.ts). */
  queues: Array<MethodParams[Cmd.QueueDeclare] & { queue: string }>
  /** Refuse sends to a shard while at least this many messages wait in it; 0 never refuses (depths and consumers are still read). */
  max: number
  intervalMs: number
  /** Called when a read fails (connection down, or a queue declared with other arguments). */
  onError?: (err: unknown) => void
  /** Called when a shard's queue is found with no consumer after having one (or at the first read): its sends wait for a worker. */
  onUnconsumed?: (shard: number, queue: string) => void
}

/** Below this share of `max` the watch accepts again, so it does not flap at the limit. */
const RESUME_AT = 0.8

export class BacklogWatch {
  readonly #o: BacklogWatchOptions
  readonly #timer: NodeJS.Timeout | undefined
  /** By shard; undefined where the last read failed. */
  #depths: Array<number | undefined>
  #over: boolean[]
  /** By shard: consumers at the last read; undefined where unknown. */
  #consumers: Array<number | undefined>
  #reading: Promise<void> | undefined
  #closed = false
  /**
   * Its own channel: a declare that fails (arguments that differ from the broker's)
   * closes the channel it ran on, which must not be the connection's shared one (route
   * setup uses it).
   */
  #channel: Channel | undefined

  constructor (options: BacklogWatchOptions) {
    this.#o = options
    this.#depths = options.queues.map(() => undefined)
    this.#over = options.queues.map(() => false)
    this.#consumers = options.queues.map(() => undefined)
    // A slow read (a broker that does not answer) is not stacked with more.
    this.#timer = setInterval(() => { if (this.#reading === undefined) void this.read() }, options.intervalMs)
    this.#timer.unref()
  }

  /** Messages waiting in a shard's queue (the deepest without `shard`) at the last read; undefined if unknown or never read. */
  depth (shard?: number): number | undefined {
    if (shard !== undefined) return this.#depths[shard]
    let deepest = 0
    for (const d of this.#depths) {
      if (d === undefined) return undefined
      deepest = Math.max(deepest, d)
    }
    return deepest
  }

  /**
   * Shards whose queue had no consumer at the last read: no worker stores their sends (a
   * WORKER_SHARDS or WORKER_CONSUME_SHARDS that does not match the gateways', or every
   * worker of the shard down). Their sends are confirmed and wait. Undefined while a
   * shard's count is unknown: a gauge must not read a healthy 0 then.
   */
  unconsumed (): number | undefined {
    if (this.#consumers.includes(undefined)) return undefined
    return this.#consumers.filter((c) => c === 0).length
  }

  /** True while a shard's backlog (any shard's, without `shard`) is over the limit, until it falls below 80 % of it. */
  over (shard?: number): boolean {
    return shard !== undefined ? this.#over[shard] === true : this.#over.includes(true)
  }

  /** Reads every shard now, after any read in progress (which may have started too early); never throws. */
  async read (): Promise<void> {
    while (this.#reading !== undefined) await this.#reading
    if (this.#closed) return
    this.#reading = this.#readAll().finally(() => { this.#reading = undefined })
    await this.#reading
  }

  async #readAll (): Promise<void> {
    for (const [shard, declaration] of this.#o.queues.entries()) {
      const queue = declaration.queue
      // A channel opened after close() would keep Connection.close() waiting for ever.
      if (this.#closed) return
      try {
        if (this.#channel?.active !== true) {
          const channel = await this.#o.connection.acquire()
          if (this.#closed) {
            await channel.close().catch(() => {})
            return
          }
          this.#channel = channel
        }
        const { messageCount, consumerCount } = await this.#channel.queueDeclare(declaration)
        this.#depths[shard] = messageCount
        if (consumerCount === 0 && this.#consumers[shard] !== 0) this.#o.onUnconsumed?.(shard, queue)
        this.#consumers[shard] = consumerCount
        if (this.#o.max <= 0) continue
        if (messageCount >= this.#o.max) this.#over[shard] = true
        else if (messageCount < this.#o.max * RESUME_AT) this.#over[shard] = false
      } catch (err) {
        // Unknown depth: stop refusing. If the broker is really gone, sends fail on their own.
        this.#depths[shard] = undefined
        this.#over[shard] = false
        this.#consumers[shard] = undefined
        this.#o.onError?.(err)
      }
    }
  }

  /** Lets a read in progress finish (2 s at most), then closes the watch's channel. Idempotent. */
  async close (): Promise<void> {
    this.#closed = true
    clearInterval(this.#timer)
    // A channel.close sent while a declare is failing crosses the broker's own close of
    // that channel, and the broker then closes the whole connection ("expected
    // 'channel.open'"), which rabbitmq-client reopens while the gateway shuts down: a
    // CI run hung there. A read that is still acquiring a channel closes it itself.
    if (this.#reading !== undefined) await Promise.race([this.#reading, new Promise((resolve) => setTimeout(resolve, 2000).unref())])
    if (this.#channel?.active === true) await this.#channel.close().catch(() => {})
  }
}
