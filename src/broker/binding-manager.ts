/**
 * The gateway's routing table lives in RabbitMQ: one exclusive, server-named queue
 * per gateway, fed through the gateway's own *route* exchange, which is bound to the
 * outgoing exchange with one routing key per local user (`user:{id}`) and per channel
 * with a local member (`channel:{id}`).
 *
 * This class owns that queue, the route and its bindings:
 * - keys are reference counted: the first acquire binds, the last release unbinds
 *   (after a grace period that absorbs reconnect flaps);
 * - `acquire()` resolves only once the key is bound, so a client is told it is
 *   ready only when its messages can reach it;
 * - bind/unbind run on a small pool of long-lived AMQP channels (one RPC in flight
 *   per channel, so the pool is the parallelism), never a channel per call;
 * - the keys sit on the route, not on the queue, so they outlive the exclusive queue:
 *   after a lost connection the broker hands us a new, empty queue and one binding
 *   (route → queue) puts every key back, instead of one per key (10,000 users took
 *   4–5 s to re-bind on loopback, 11 s at 50 ms RTT). `settled` is false until then.
 * - the route is an auto-delete topic exchange kept alive, through an auto-delete holder
 *   exchange, by a lease queue we consume (`x-expires`): when the gateway is gone for
 *   longer than the lease, the lease queue expires, the holder and then the route are
 *   deleted with every key, and a gateway that comes back then declares a new route
 *   and binds each key again.
 *
 * @see ../../docs/ARCHITECTURE.md#binding-manager
 */
import { EventEmitter } from 'node:events'
import type { AsyncMessage, Channel, Connection, Consumer } from 'rabbitmq-client'
import type { Logger } from '../log.js'
import { isOpen } from './socket.js'
import { keyKind } from './topology.js'

export interface BindingManagerOptions {
  connection: Connection
  /** The durable direct exchange deliveries are routed through. */
  exchange: string
  /** This gateway's route, lease and drops names; unique per process (see topology.ts). */
  route: { exchange: string, holder: string, lease: string, drops: string }
  /** Called synchronously for every delivery (the queue is consumed without acks). */
  onMessage: (msg: AsyncMessage) => void
  log: Logger
  /** AMQP channels used for bind/unbind in parallel. @default 64 */
  poolSize?: number
  /** Delay before a key with no local users is unbound. @default 2000 */
  unbindGraceMs?: number
  /** Queue length cap; the oldest deliveries are dropped beyond it (and reported, see 'dropped'). @default 100000 */
  maxQueueLength?: number
  /** How long the route and its keys outlive a lost connection. @default 120000 */
  leaseMs?: number
}

export interface BindingStats {
  /** Current server-named queue, '' while (re)connecting. */
  queue: string
  /** This gateway's route exchange, which holds its keys. */
  route: string
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
  /** Routes declared: 1 after start, +1 per outage that outlasted the lease. */
  routes: number
  binds: number
  unbinds: number
  failures: number
  /** Deliveries the full queue dropped (counted as the broker reports them). */
  dropped: number
}

type Lane = { channel: Channel | undefined, busy: boolean }

export interface BindingManager {
  /**
   * The queue was (re)declared and every key referenced at that moment is bound again.
   * `routeKept`: the keys outlived the lost queue on the route (one bind put them back).
   */
  on(event: 'rebound', listener: (info: { generation: number, keys: number, durationMs: number, routeKept: boolean }) => void): this
  /** A bind or unbind completed. */
  on(event: 'operation', listener: (info: { op: 'bind' | 'unbind', key: string, durationMs: number }) => void): this
  /**
   * The queue was full and the broker dropped its oldest deliveries (`count` since the
   * last event, at most one event per event-loop turn). Whatever they carried, joined
   * and left notices included, is lost to this gateway.
   */
  on(event: 'dropped', listener: (info: { count: number }) => void): this
}

export class BindingManager extends EventEmitter {
  readonly #opts: Required<Omit<BindingManagerOptions, 'connection' | 'onMessage' | 'log' | 'exchange' | 'route'>>
  readonly #connection: Connection
  readonly #exchange: string
  readonly #route: { exchange: string, holder: string, lease: string, drops: string }
  readonly #log: Logger
  readonly #consumer: Consumer
  /** Holds the lease: consuming keeps `x-expires` from counting while we are connected. */
  readonly #leaseConsumer: Consumer
  /** Hears of deliveries the full queue dropped. */
  readonly #dropsConsumer: Consumer

  /** Local references per key; only keys with a count > 0 are present. */
  readonly #refs = new Map<string, number>()
  /** Keys bound on the route → logical time of the bind. */
  readonly #bound = new Map<string, number>()
  /**
   * Keys whose last operation failed without an answer (or was in flight when the route
   * was declared anew): never counted as bound; bound again if wanted, unbound if not.
   */
  readonly #uncertain = new Set<string>()
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
  /** The current queue is bound to the route, and the route's keys are known. */
  #attached = false
  /** The drops queue at the drops consumer's last `ready`. */
  #dropsQueue = ''
  /** Logical time of the attach: a key bound earlier routed nothing to us before it. */
  #attachedAt = 0
  /** Bumped whenever the route is declared anew (with no keys); results of older operations are void. */
  #routeEpoch = 0
  #clock = 0
  #rebindStartedAt = 0
  #rebindKeys = 0
  #routeKept = false
  #counters = { binds: 0, unbinds: 0, failures: 0, dropped: 0 }
  /** Drops not reported yet; an event goes out once per turn. */
  #dropsPending = 0
  #closing: Promise<void> | undefined
  /** The attach in progress, awaited by close so that nothing is declared after it. */
  #attaching: Promise<void> = Promise.resolve()

  constructor (options: BindingManagerOptions) {
    super()
    this.#connection = options.connection
    this.#exchange = options.exchange
    this.#route = options.route
    this.#log = options.log
    this.#opts = {
      poolSize: options.poolSize ?? 64,
      unbindGraceMs: options.unbindGraceMs ?? 2000,
      maxQueueLength: options.maxQueueLength ?? 100_000,
      leaseMs: options.leaseMs ?? 120_000
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
        // publish and make it retry deliveries other gateways already got. What it drops
        // is dead-lettered to the drops exchange, whose queue we consume: the gateway
        // learns that it lost deliveries and re-reads what it cannot know otherwise.
        arguments: {
          'x-max-length': this.#opts.maxQueueLength,
          'x-overflow': 'drop-head',
          'x-dead-letter-exchange': this.#route.drops,
          'x-dead-letter-routing-key': DROPS_KEY
        }
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
    // Nothing is ever routed to the lease queue: its one binding's key is never a user or
    // channel key.
    this.#leaseConsumer = this.#connection.createConsumer({
      queue: this.#route.lease,
      queueOptions: this.#leaseQueueOptions(),
      noAck: true,
      requeue: false
    }, () => {})
    this.#leaseConsumer.on('error', (err) => this.#log.warn({ err }, 'route lease consumer error'))
    // Only the fact of a drop matters, not what was dropped: the queue keeps one and we
    // take one at a time (prefetch 1, acked), so an overloaded gateway and broker are not
    // handed a second copy of what they could not take. Exclusive and transient, so a
    // drop costs the broker next to nothing. Server-named behind an exchange, like the
    // main queue: a fixed name would be locked by the previous connection's queue until
    // the broker notices that connection died, and drops meanwhile would go unheard.
    this.#dropsConsumer = this.#connection.createConsumer({
      queue: '',
      queueOptions: { exclusive: true, autoDelete: true, durable: false, arguments: { 'x-max-length': 1 } },
      // Direct, not fanout: a drop happens under overload, when a fanout's routing cost on
      // RabbitMQ 4.0/4.1 with Khepri (a scan of every binding) would hurt most.
      exchanges: [{ exchange: this.#route.drops, type: 'direct', durable: false, autoDelete: true }],
      // No queue name: the queue just declared on the consumer's channel.
      queueBindings: [{ exchange: this.#route.drops, routingKey: DROPS_KEY }],
      qos: { prefetchCount: 1 },
      requeue: false
    }, () => { this.#onDropped() })
    this.#dropsConsumer.on('ready', () => {
      this.#dropsQueue = this.#dropsConsumer.queue
      this.#checkRebound()
    })
    this.#dropsConsumer.on('error', (err) => this.#log.warn({ err }, 'drops consumer error'))
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
    if (!this.#refs.has(key) || (this.#usable() && this.#bound.has(key) && !this.#inflight.has(key)) || this.#closing !== undefined) return Promise.resolve()
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
      if (this.#uncertain.has(key)) this.#markDirty(key)
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

  /** True when `key` routes to the current queue. */
  isBound (key: string): boolean {
    return this.#bound.has(key) && this.#usable()
  }

  /**
   * Logical time at which `key` was bound on the current queue, or undefined. Compare
   * with `now()` taken earlier to learn whether a key was already bound back then.
   */
  boundSince (key: string): number | undefined {
    if (!this.#usable()) return undefined
    const at = this.#bound.get(key)
    return at === undefined ? undefined : Math.max(at, this.#attachedAt)
  }

  /** The current logical time (see boundSince). */
  now (): number {
    return this.#clock
  }

  /**
   * The queue is consuming, every referenced key is bound on it, and drops are heard.
   * Drops count too: after a reconnect the gateway's recovery (re-read, resync) runs once
   * settled, so it covers whatever a full queue dropped before the drops queue was back.
   */
  get settled (): boolean {
    return this.#usable() && this.#missing === 0 && this.#closing === undefined && this.#hearsDrops()
  }

  /** This gateway's route exchange, the destination of its key bindings on the outgoing exchange. */
  get route (): string {
    return this.#route.exchange
  }

  get queue (): string {
    return this.#queueIsCurrent() ? this.#queue : ''
  }

  stats (): BindingStats {
    return {
      queue: this.queue,
      route: this.#route.exchange,
      desired: this.#refs.size,
      missing: this.#missing,
      boundUserKeys: this.#boundUser,
      boundChannelKeys: this.#boundChannel,
      pending: this.#dirty.size + this.#inflight.size,
      generation: this.#generation,
      routes: this.#routeEpoch,
      ...this.#counters
    }
  }

  /**
   * Stops consuming, deletes the route (with every key) and the lease, and closes the
   * pool; the queue itself goes with the connection. Idempotent.
   */
  close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    for (const timer of this.#graceTimers.values()) clearTimeout(timer)
    this.#graceTimers.clear()
    this.#dirty.clear()
    for (const key of [...this.#waiters.keys()]) this.#wake(key)
    // A connection lost mid-close rejects Consumer.close() (its basic.cancel); the other
    // consumers must still be closed, or they set up again and Connection.close() waits for ever.
    for (const consumer of [this.#consumer, this.#dropsConsumer, this.#leaseConsumer]) {
      await consumer.close().catch((err: unknown) => this.#log.warn({ err }, 'closing a consumer failed'))
    }
    // An attach stops at its next step once closing is set; wait for it, so that it
    // declares nothing after the deletes below (bounded: a step may wait for a broker
    // that is not coming back).
    await withTimeout(this.#attaching, 3 * CLOSE_RPC_MS).catch(() => {})
    // Leaving now, not when the lease runs out, spares the broker routing to a dead end.
    // Unreachable broker: the lease expiry removes all three.
    if (isOpen(this.#connection)) {
      await withTimeout(this.#connection.exchangeDelete({ exchange: this.#route.exchange }), CLOSE_RPC_MS)
        .catch((err: unknown) => this.#log.warn({ err }, 'could not delete the route; it goes when its lease expires'))
      await withTimeout(this.#connection.exchangeDelete({ exchange: this.#route.holder }), CLOSE_RPC_MS).catch(() => {})
      await withTimeout(this.#connection.queueDelete({ queue: this.#route.lease }), CLOSE_RPC_MS).catch(() => {})
    }
    await Promise.allSettled(this.#lanes.map(async (lane) => {
      const channel = lane.channel
      lane.channel = undefined
      if (channel?.active === true) await channel.close()
    }))
  }

  #queueIsCurrent (): boolean {
    return this.#queue !== '' && this.#consumer.queue === this.#queue
  }

  /** The drops queue of this connection is consumed (the consumer clears its queue name when it is lost). */
  #hearsDrops (): boolean {
    return this.#dropsQueue !== '' && this.#dropsConsumer.queue === this.#dropsQueue
  }

  /** Deliveries to the route reach the current queue. */
  #usable (): boolean {
    return this.#attached && this.#queueIsCurrent()
  }

  #leaseQueueOptions () {
    // Quorum: a classic queue is unavailable while its one node is down, and the gateway
    // could not attach through a rolling restart of a clustered broker.
    return { durable: true, arguments: { 'x-queue-type': 'quorum' as const, 'x-expires': this.#opts.leaseMs } }
  }

  #onDropped (): void {
    this.#counters.dropped++
    if (this.#dropsPending++ > 0) return
    setImmediate(() => {
      const count = this.#dropsPending
      this.#dropsPending = 0
      if (this.#closing === undefined) this.emit('dropped', { count })
    })
  }

  #onQueueReady (): void {
    if (this.#closing !== undefined) return
    const queue = this.#consumer.queue
    this.#queue = queue
    this.#generation++
    this.#attached = false
    this.#rebindStartedAt = performance.now()
    this.#log.info({ queue, generation: this.#generation, keys: this.#refs.size }, this.#generation === 1 ? 'gateway queue ready' : 'gateway queue re-declared after reconnect; attaching it to the route')
    this.#attaching = this.#attach(this.#generation)
  }

  /** Binds the current queue to the route, declaring the route first if it is gone; retried until it works or the queue changes. */
  async #attach (generation: number): Promise<void> {
    let failures = 0
    while (generation === this.#generation && this.#closing === undefined && this.#queueIsCurrent()) {
      try {
        const kept = await this.#ensureRoute(generation)
        if (kept === undefined || generation !== this.#generation || this.#closing !== undefined) return
        await this.#connection.queueBind({ queue: this.#queue, exchange: this.#route.exchange, routingKey: ROUTE_EVERY_KEY })
        if (generation !== this.#generation || this.#closing !== undefined) return
        this.#attached = true
        this.#attachedAt = ++this.#clock
        this.#routeKept = kept
        this.#rebindKeys = this.#refs.size
        this.#log.info({ queue: this.#queue, route: this.#route.exchange, routeKept: kept, missing: this.#missing }, kept ? 'gateway queue attached; the route kept its keys' : 'gateway queue attached to a new route; binding every key')
        for (const key of [...this.#waiters.keys()]) {
          if (this.#bound.has(key) && !this.#inflight.has(key)) this.#wake(key)
        }
        this.#checkRebound()
        this.#pump()
        return
      } catch (err) {
        failures++
        this.#counters.failures++
        if (generation === this.#generation && this.#closing === undefined) this.#log.warn({ err, route: this.#route.exchange }, 'attaching the gateway queue to its route failed; will retry')
        await sleep(Math.min(5000, 50 * 2 ** Math.min(failures, 7)))
      }
    }
  }

  /**
   * Makes sure the route exists and is held by the lease. Returns true when it still
   * holds the keys bound before; false when it was gone and is now declared empty;
   * undefined when a newer queue took over meanwhile (its own attach decides).
   */
  async #ensureRoute (generation: number): Promise<boolean | undefined> {
    const c = this.#connection
    const { exchange, holder, lease } = this.#route
    // Renews the lease (or creates it again after it expired) before relying on it.
    await c.queueDeclare({ queue: lease, ...this.#leaseQueueOptions() })
    if (this.#routeEpoch > 0) {
      try {
        // Both succeed only while the route and its holder exist, and from then on the
        // lease holds them. Only this process declares the route, and it forgets every
        // key before it does (below), so an existing route holds the keys we know of.
        await c.queueBind({ queue: lease, exchange: holder, routingKey: LEASE_KEY })
        await c.exchangeBind({ destination: holder, source: exchange, routingKey: LEASE_KEY })
        return true
      } catch (err) {
        if ((err as { code?: string }).code !== 'NOT_FOUND') throw err
        this.#log.warn({ route: exchange, leaseMs: this.#opts.leaseMs }, 'the route expired while disconnected; declaring it again')
      }
    }
    const stale = () => generation !== this.#generation || this.#closing !== undefined
    if (stale()) return undefined
    this.#newRoute()
    // A route left without its holder could still hold keys we no longer track.
    await c.exchangeDelete({ exchange }).catch((err: unknown) => { if ((err as { code?: string }).code !== 'NOT_FOUND') throw err })
    // Topic: the queue takes every delivery through `#`, the holder none (its key is a
    // single word, and every delivery key starts with `user:` or `channel:`). Not a
    // fanout: RabbitMQ 4.0 and 4.1 with Khepri route through a fanout by scanning every
    // binding, 988 µs of broker CPU per delivery with 10,000 keys against 21 µs for this
    // (bench/tools/route-cost.ts; fixed in 4.2, rabbitmq-server #14546), and on 3.10 a
    // fanout saved only 1–7 µs. The holder is a direct exchange whose only binding, to the
    // lease queue, has a key no delivery carries. Auto-delete, both:
    // when the lease queue expires the holder goes, and then the route with every key.
    // Each is bound as soon as it is declared: an auto-delete exchange that never had a
    // binding is never deleted.
    if (stale()) return undefined
    await c.exchangeDeclare({ exchange: holder, type: 'direct', durable: true, autoDelete: true })
    await c.queueBind({ queue: lease, exchange: holder, routingKey: LEASE_KEY })
    if (stale()) return undefined
    await c.exchangeDeclare({ exchange, type: 'topic', durable: true, autoDelete: true })
    await c.exchangeBind({ destination: holder, source: exchange, routingKey: LEASE_KEY })
    return false
  }

  /** The route was declared anew: nothing is bound on it, every referenced key must be. */
  #newRoute (): void {
    this.#routeEpoch++
    this.#bound.clear()
    this.#uncertain.clear()
    this.#boundUser = 0
    this.#boundChannel = 0
    this.#dirty.clear()
    for (const key of this.#refs.keys()) this.#dirty.add(key)
    // An operation still in flight from before may land on the new route: settle these
    // keys again, after it (a lane never takes a key in flight).
    for (const key of this.#inflight) {
      this.#uncertain.add(key)
      this.#dirty.add(key)
    }
    this.#missing = this.#refs.size
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
    if (!this.#usable() || this.#closing !== undefined) return
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
      while (this.#closing === undefined && this.#usable()) {
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
    if (want ? this.#bound.has(key) : !this.#bound.has(key) && !this.#uncertain.has(key)) {
      if (want) this.#wake(key)
      return true
    }
    const epoch = this.#routeEpoch
    this.#inflight.add(key)
    const started = performance.now()
    try {
      const channel = await this.#channel(lane)
      if (epoch !== this.#routeEpoch) return true // a new route's pass owns this key now
      // Unbinding a key that is not bound succeeds, so retrying either operation is safe.
      const params = { destination: this.#route.exchange, source: this.#exchange, routingKey: key }
      if (want) await channel.exchangeBind(params)
      else await channel.exchangeUnbind(params)
      if (epoch !== this.#routeEpoch) return true
      this.#uncertain.delete(key)
      if (want) this.#setBound(key)
      else this.#setUnbound(key)
      this.emit('operation', { op: want ? 'bind' : 'unbind', key, durationMs: performance.now() - started })
      return true
    } catch (err) {
      this.#counters.failures++
      if (epoch === this.#routeEpoch && this.#closing === undefined) {
        this.#log.warn({ err, key, op: want ? 'bind' : 'unbind' }, 'binding operation failed; will retry')
        // The operation may have reached the broker without its answer reaching us: the
        // key's state is unknown until an operation on it succeeds. An unbind that did
        // happen must not leave the key counted as bound (a re-acquire would then bind
        // nothing).
        if (!want) this.#setUnbound(key, false)
        this.#uncertain.add(key)
        this.#dirty.add(key)
      }
      lane.channel = undefined
      return false
    } finally {
      this.#inflight.delete(key)
      if (epoch === this.#routeEpoch && (this.#refs.has(key) !== this.#bound.has(key) || (!this.#refs.has(key) && this.#uncertain.has(key)))) this.#dirty.add(key)
      if ((this.#bound.has(key) && this.#usable()) || !this.#refs.has(key)) this.#wake(key)
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

  #setUnbound (key: string, done = true): void {
    if (!this.#bound.delete(key)) return
    if (done) this.#counters.unbinds++
    if (keyKind(key) === 'user') this.#boundUser--
    else this.#boundChannel--
    // Re-acquired while the unbind was in flight: it must be bound again.
    if (this.#refs.has(key)) this.#missing++
  }

  #checkRebound (): void {
    if (this.#missing !== 0 || this.#rebindStartedAt === 0 || !this.#usable() || !this.#hearsDrops()) return
    const durationMs = performance.now() - this.#rebindStartedAt
    this.#rebindStartedAt = 0
    this.emit('rebound', { generation: this.#generation, keys: this.#rebindKeys, durationMs, routeKept: this.#routeKept })
  }
}

/**
 * The key of the lease's two bindings (route → holder, holder → lease queue): one word,
 * never a `user:` or `channel:` key, so neither routes a delivery.
 */
const LEASE_KEY = 'lease'
/** The route's binding to the queue: every key bound on the route. */
const ROUTE_EVERY_KEY = '#'
/** The key the gateway queue dead-letters its drops with, and the drops queue's binding. */
const DROPS_KEY = 'dropped'

/** Bound on each broker call made while closing. */
const CLOSE_RPC_MS = 2000

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref())

async function withTimeout<T> (promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms) })])
  } finally {
    clearTimeout(timer)
  }
}
