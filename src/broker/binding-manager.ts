/**
 * The gateway's routing table lives in RabbitMQ: one exclusive, server-named queue
 * per gateway, bound to the outgoing exchange with one routing key per local user
 * (`user:{id}`) and per channel with a local member (`channel:{id}`).
 *
 * This class owns that queue and its bindings:
 * - keys are reference counted: the first acquire binds, the last release unbinds
 *   (after a grace period that absorbs reconnect flaps);
 * - `acquire()` resolves only once the key is bound, so a client is told it is
 *   ready only when its messages can reach it;
 * - bind/unbind run on a small pool of long-lived AMQP channels (one RPC in flight
 *   per channel, so the pool is the parallelism), never a channel per call;
 * - after every reconnect the broker hands us a new, empty queue: every key still
 *   referenced is bound again, and `settled` stays false until that is done.
 *
 * @see ../../docs/ARCHITECTURE.md#binding-manager
 */
import { EventEmitter } from 'node:events'
import type { AsyncMessage, Channel, Connection, Consumer } from 'rabbitmq-client'
import type { Logger } from '../log.js'
import { keyKind } from './topology.js'

export interface BindingManagerOptions {
  connection: Connection
  /** The durable direct exchange deliveries are routed through. */
  exchange: string
  /** Called synchronously for every delivery (the queue is consumed without acks). */
  onMessage: (msg: AsyncMessage) => void
  log: Logger
  /** AMQP channels used for bind/unbind in parallel. @default 64 */
  poolSize?: number
  /** Delay before a key with no local users is unbound. @default 2000 */
  unbindGraceMs?: number
  /** Queue length cap; the oldest deliveries are dropped beyond it. @default 100000 */
  maxQueueLength?: number
}

export interface BindingStats {
  /** Current server-named queue, '' while (re)connecting. */
  queue: string
  /** Keys with at least one local reference. */
  desired: number
  /** Desired keys not yet bound on the current queue. */
  missing: number
  boundUserKeys: number
  boundChannelKeys: number
  /** Keys waiting for a bind or unbind, plus those in flight. */
  pending: number
  /** Queues the broker has given us: 1 after start, +1 per reconnect. */
  generation: number
  binds: number
  unbinds: number
  failures: number
}

type Lane = { channel: Channel | undefined, busy: boolean }

export interface BindingManager {
  /** The queue was (re)declared and every key referenced at that moment is bound again. */
  on(event: 'rebound', listener: (info: { generation: number, keys: number, durationMs: number }) => void): this
  /** A bind or unbind completed. */
  on(event: 'operation', listener: (info: { op: 'bind' | 'unbind', key: string, durationMs: number }) => void): this
}

export class BindingManager extends EventEmitter {
  readonly #opts: Required<Omit<BindingManagerOptions, 'connection' | 'onMessage' | 'log' | 'exchange'>>
  readonly #connection: Connection
  readonly #exchange: string
  readonly #log: Logger
  readonly #consumer: Consumer

  /** Local references per key; only keys with a count > 0 are present. */
  readonly #refs = new Map<string, number>()
  /** Keys bound on the current queue → logical time of the bind. */
  readonly #bound = new Map<string, number>()
  readonly #dirty = new Set<string>()
  readonly #inflight = new Set<string>()
  readonly #waiters = new Map<string, Array<() => void>>()
  readonly #graceTimers = new Map<string, NodeJS.Timeout>()
  readonly #lanes: Lane[]
  #busyLanes = 0
  #missing = 0
  #boundUser = 0
  #boundChannel = 0
  #queue = ''
  #generation = 0
  #clock = 0
  #rebindStartedAt = 0
  #rebindKeys = 0
  #counters = { binds: 0, unbinds: 0, failures: 0 }
  #closing: Promise<void> | undefined
  /** Set while a new queue waits for the lost one to be deleted before re-binding. */
  #holdUntil: Promise<void> | undefined

  constructor (options: BindingManagerOptions) {
    super()
    this.#connection = options.connection
    this.#exchange = options.exchange
    this.#log = options.log
    this.#opts = {
      poolSize: options.poolSize ?? 64,
      unbindGraceMs: options.unbindGraceMs ?? 2000,
      maxQueueLength: options.maxQueueLength ?? 100_000
    }
    this.#lanes = Array.from({ length: this.#opts.poolSize }, () => ({ channel: undefined, busy: false }))
    const onMessage = options.onMessage
    this.#consumer = this.#connection.createConsumer({
      queue: '', // server-named: a fixed name could race the deletion of our previous queue
      queueOptions: {
        exclusive: true,
        // A channel-only reset must not leave the old queue (and its bindings) behind.
        autoDelete: true,
        durable: false,
        // drop-head, not reject-publish: a rejecting queue would nack the worker's
        // publish and make it retry deliveries other gateways already got.
        arguments: { 'x-max-length': this.#opts.maxQueueLength, 'x-overflow': 'drop-head' }
      },
      // No acks: the queue is exclusive and dies with us, so an ack protects nothing
      // that a crash would not lose anyway (clients recover from history), and acks
      // cost a frame per delivery on both sides. TCP flow control and x-max-length
      // bound what a slow gateway can be sent.
      noAck: true,
      requeue: false
    }, (msg) => { onMessage(msg) })
    this.#consumer.on('ready', () => this.#onQueueReady())
    this.#consumer.on('error', (err) => this.#log.warn({ err }, 'gateway queue consumer error'))
  }

  /** Takes a reference on `key`; resolves once the key is bound (or no longer wanted). */
  acquire (key: string): Promise<void> {
    const count = (this.#refs.get(key) ?? 0) + 1
    this.#refs.set(key, count)
    if (count === 1) {
      this.#cancelGrace(key)
      if (!this.#bound.has(key)) {
        this.#missing++
        this.#markDirty(key)
      }
    }
    return this.whenBound(key)
  }

  /**
   * Resolves once `key` is bound on the current queue, or is no longer referenced, or
   * the manager closes. Takes no reference.
   */
  whenBound (key: string): Promise<void> {
    if (!this.#refs.has(key) || (this.#bound.has(key) && !this.#inflight.has(key)) || this.#closing !== undefined) return Promise.resolve()
    return new Promise((resolve) => {
      const list = this.#waiters.get(key)
      if (list === undefined) this.#waiters.set(key, [resolve])
      else list.push(resolve)
    })
  }

  /** Drops a reference; at zero the key is unbound after the grace period. */
  release (key: string): void {
    const count = this.#refs.get(key)
    if (count === undefined) {
      this.#log.error({ key }, 'binding released more often than acquired')
      return
    }
    if (count > 1) {
      this.#refs.set(key, count - 1)
      return
    }
    this.#refs.delete(key)
    this.#wake(key)
    if (!this.#bound.has(key)) {
      this.#missing--
      // It may have been the last key a re-bind was waiting for.
      this.#checkRebound()
      return
    }
    if (this.#opts.unbindGraceMs === 0) {
      this.#markDirty(key)
      return
    }
    this.#graceTimers.set(key, setTimeout(() => {
      this.#graceTimers.delete(key)
      if (!this.#refs.has(key)) this.#markDirty(key)
    }, this.#opts.unbindGraceMs).unref())
  }

  /** True when `key` is bound on the current queue. */
  isBound (key: string): boolean {
    return this.#bound.has(key) && this.#queueIsCurrent()
  }

  /**
   * Logical time at which `key` was bound on the current queue, or undefined. Compare
   * with `now()` taken earlier to learn whether a key was already bound back then.
   */
  boundSince (key: string): number | undefined {
    return this.#queueIsCurrent() ? this.#bound.get(key) : undefined
  }

  /** The current logical time (see boundSince). */
  now (): number {
    return this.#clock
  }

  /** The queue is consuming and every referenced key is bound on it. */
  get settled (): boolean {
    return this.#queueIsCurrent() && this.#missing === 0 && this.#closing === undefined
  }

  get queue (): string {
    return this.#queueIsCurrent() ? this.#queue : ''
  }

  stats (): BindingStats {
    return {
      queue: this.queue,
      desired: this.#refs.size,
      missing: this.#missing,
      boundUserKeys: this.#boundUser,
      boundChannelKeys: this.#boundChannel,
      pending: this.#dirty.size + this.#inflight.size,
      generation: this.#generation,
      ...this.#counters
    }
  }

  /** Stops consuming and closes the pool; the queue itself goes with the connection. Idempotent. */
  close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    for (const timer of this.#graceTimers.values()) clearTimeout(timer)
    this.#graceTimers.clear()
    this.#dirty.clear()
    for (const key of [...this.#waiters.keys()]) this.#wake(key)
    await this.#consumer.close()
    await Promise.allSettled(this.#lanes.map(async (lane) => {
      const channel = lane.channel
      lane.channel = undefined
      if (channel?.active === true) await channel.close()
    }))
  }

  #queueIsCurrent (): boolean {
    return this.#queue !== '' && this.#consumer.queue === this.#queue
  }

  #onQueueReady (): void {
    if (this.#closing !== undefined) return
    const queue = this.#consumer.queue
    const first = this.#generation === 0
    const previous = this.#queue
    this.#queue = queue
    this.#generation++
    // The new queue is empty: nothing is bound, and pending unbinds are moot.
    this.#bound.clear()
    this.#boundUser = 0
    this.#boundChannel = 0
    for (const timer of this.#graceTimers.values()) clearTimeout(timer)
    this.#graceTimers.clear()
    this.#dirty.clear()
    for (const key of this.#refs.keys()) this.#dirty.add(key)
    this.#missing = this.#refs.size
    this.#rebindStartedAt = performance.now()
    this.#rebindKeys = this.#refs.size
    this.#log.info({ queue, generation: this.#generation, keys: this.#refs.size }, first ? 'gateway queue ready' : 'gateway queue re-declared after reconnect; re-binding')
    this.#checkRebound()
    if (first || previous === '' || previous === queue) {
      this.#pump()
      return
    }
    // While RabbitMQ deletes the lost queue's bindings, binding runs several times slower
    // (measured: 11,000 binds in 14 s instead of 2.2 s on 3.10). Waiting for the old queue
    // to disappear, which takes about a second for 10k bindings, is faster overall.
    const generation = this.#generation
    this.#holdUntil = this.#waitUntilGone(previous, OLD_QUEUE_WAIT_MS).finally(() => {
      if (this.#generation !== generation) return
      this.#holdUntil = undefined
      this.#pump()
    })
  }

  /** Resolves when `queue` no longer exists, or after `maxMs` (a partitioned peer keeps it until its heartbeat times out). */
  async #waitUntilGone (queue: string, maxMs: number): Promise<void> {
    const deadline = performance.now() + maxMs
    while (performance.now() < deadline && this.#closing === undefined) {
      try {
        // Exclusive to the dead connection: a passive declare fails with RESOURCE_LOCKED
        // while it exists and NOT_FOUND once it is gone. Either error closes only the
        // connection's internal channel, which rabbitmq-client reopens on the next call.
        await this.#connection.queueDeclare({ queue, passive: true })
      } catch (err) {
        if ((err as { code?: string }).code === 'NOT_FOUND') return
      }
      await sleep(50)
    }
  }

  #markDirty (key: string): void {
    if (this.#closing !== undefined) return
    this.#dirty.add(key)
    this.#pump()
  }

  #cancelGrace (key: string): void {
    const timer = this.#graceTimers.get(key)
    if (timer !== undefined) {
      clearTimeout(timer)
      this.#graceTimers.delete(key)
    }
  }

  #wake (key: string): void {
    const list = this.#waiters.get(key)
    if (list === undefined) return
    this.#waiters.delete(key)
    for (const resolve of list) resolve()
  }

  #pump (): void {
    if (!this.#queueIsCurrent() || this.#closing !== undefined || this.#holdUntil !== undefined) return
    for (const lane of this.#lanes) {
      if (this.#dirty.size <= this.#busyLanes) return
      if (lane.busy) continue
      void this.#runLane(lane)
    }
  }

  #takeDirty (): string | undefined {
    for (const key of this.#dirty) {
      if (this.#inflight.has(key)) continue
      this.#dirty.delete(key)
      return key
    }
    return undefined
  }

  async #runLane (lane: Lane): Promise<void> {
    lane.busy = true
    this.#busyLanes++
    let failures = 0
    try {
      while (this.#closing === undefined && this.#queueIsCurrent()) {
        const key = this.#takeDirty()
        if (key === undefined) break
        const ok = await this.#reconcile(lane, key)
        if (ok) {
          failures = 0
        } else {
          failures++
          await sleep(Math.min(5000, 50 * 2 ** Math.min(failures, 7)))
        }
      }
    } finally {
      lane.busy = false
      this.#busyLanes--
    }
  }

  /** Makes the broker agree with the refcount for one key. Returns false on failure. */
  async #reconcile (lane: Lane, key: string): Promise<boolean> {
    const want = this.#refs.has(key)
    if (want === this.#bound.has(key)) {
      if (want) this.#wake(key)
      return true
    }
    const generation = this.#generation
    const queue = this.#queue
    this.#inflight.add(key)
    const started = performance.now()
    try {
      const channel = await this.#channel(lane)
      if (generation !== this.#generation) return true // the new queue's pass owns this key now
      const params = { queue, exchange: this.#exchange, routingKey: key }
      if (want) await channel.queueBind(params)
      else await channel.queueUnbind(params)
      if (generation !== this.#generation) return true
      if (want) this.#setBound(key)
      else this.#setUnbound(key)
      this.emit('operation', { op: want ? 'bind' : 'unbind', key, durationMs: performance.now() - started })
      return true
    } catch (err) {
      this.#counters.failures++
      if (generation === this.#generation && this.#closing === undefined) {
        this.#log.warn({ err, key, op: want ? 'bind' : 'unbind' }, 'binding operation failed; will retry')
        this.#dirty.add(key)
      }
      lane.channel = undefined
      return false
    } finally {
      this.#inflight.delete(key)
      if (generation === this.#generation && this.#refs.has(key) !== this.#bound.has(key)) this.#dirty.add(key)
      if (this.#bound.has(key) || !this.#refs.has(key)) this.#wake(key)
      // Another lane may have skipped this key while it was in flight.
      if (this.#dirty.has(key)) this.#pump()
    }
  }

  async #channel (lane: Lane): Promise<Channel> {
    if (lane.channel?.active === true) return lane.channel
    // A failed RPC closes its channel; the next operation on this lane takes a new one.
    const channel = await this.#connection.acquire()
    lane.channel = channel
    return channel
  }

  #setBound (key: string): void {
    if (this.#bound.has(key)) return
    this.#bound.set(key, ++this.#clock)
    this.#counters.binds++
    if (keyKind(key) === 'user') this.#boundUser++
    else this.#boundChannel++
    if (this.#refs.has(key)) {
      this.#missing--
      this.#checkRebound()
    }
  }

  #setUnbound (key: string): void {
    if (!this.#bound.delete(key)) return
    this.#counters.unbinds++
    if (keyKind(key) === 'user') this.#boundUser--
    else this.#boundChannel--
    // Re-acquired while the unbind was in flight: it must be bound again.
    if (this.#refs.has(key)) this.#missing++
  }

  #checkRebound (): void {
    if (this.#missing !== 0 || this.#rebindStartedAt === 0) return
    const durationMs = performance.now() - this.#rebindStartedAt
    this.#rebindStartedAt = 0
    this.emit('rebound', { generation: this.#generation, keys: this.#rebindKeys, durationMs })
  }
}

/** Longest wait for a lost queue's deletion before re-binding anyway. */
const OLD_QUEUE_WAIT_MS = 3000

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref())
