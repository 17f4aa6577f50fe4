/**
 * Gateway → worker requests over RabbitMQ with direct reply-to. The gateway holds
 * no database connection; every read (channel list, history) and channel command
 * is one of these calls.
 *
 * Our own client, not rabbitmq-client's RPCClient: that one publishes requests of
 * concurrent callers on its new channel before it consumes from amq.rabbitmq.reply-to,
 * and RabbitMQ closes the channel for it (PRECONDITION_FAILED), failing every pending
 * call; under steady load after a reconnect that repeated until the load stopped (a
 * review measured 0 answers in 5.5 s at 25 ms from the broker). Its timeout also
 * started only after the publish was confirmed, so a blocked connection held a call
 * forever. Here the channel is used only once it consumes, and the timeout bounds the
 * whole call.
 */
import type { AsyncMessage, Channel, Connection } from 'rabbitmq-client'
import type { RpcOp, RpcRequest, RpcResponse, RpcResults } from '../contracts/envelopes.js'
import { ClientError } from '../errors.js'
import { ROUTE_RPC, type BrokerNames } from './topology.js'

const REPLY_TO = 'amq.rabbitmq.reply-to'

/**
 * Header of a request: how long its caller waits for the answer, in ms. The worker's
 * writes commit early enough for the answer to arrive in time, or not at all, so that
 * a caller told UNAVAILABLE knows nothing changed (src/worker/rpc-handlers.ts).
 */
export const RPC_TIMEOUT_HEADER = 'x-chat-timeout-ms'

/**
 * Header of a request: when it was published (Date.now() of the caller). The worker takes
 * the time since from the caller's timeout: a request that waited in the queue, or in the
 * worker's prefetch behind slower ones, has that much less time to commit in.
 */
export const RPC_SENT_AT_HEADER = 'x-chat-sent-at'

interface Pending {
  resolve: (reply: AsyncMessage) => void
  reject: (err: ClientError) => void
  timer: NodeJS.Timeout
}

export class WorkerRpc {
  readonly #connection: Connection
  readonly #exchange: string
  readonly #timeoutMs: number
  readonly #refuse: () => string | undefined
  readonly #pending = new Map<string, Pending>()
  readonly #calls = new Set<Promise<unknown>>()
  /** Set only once it consumes replies. */
  #channel: Channel | undefined
  #opening: Promise<Channel> | undefined
  #nextId = 0
  #closing: Promise<void> | undefined

  /**
   * @param timeoutMs bounds a whole call (waiting for a channel, publishing, the reply);
   *   requests also expire in the queue after it, so a late worker never does stale work
   * @param refuse why requests cannot be sent now (e.g. the connection is blocked by a
   *   broker alarm, where they would wait in memory)
   */
  constructor (connection: Connection, names: BrokerNames, timeoutMs: number, refuse: () => string | undefined = () => undefined) {
    this.#connection = connection
    this.#exchange = names.incoming
    this.#timeoutMs = timeoutMs
    this.#refuse = refuse
  }

  /**
   * @throws ClientError: the worker's own refusal (FORBIDDEN, NOT_FOUND, VALIDATION…),
   *   or UNAVAILABLE when the broker or every worker is unreachable.
   */
  async call<O extends RpcOp> (request: Extract<RpcRequest, { op: O }>): Promise<RpcResults[O]> {
    if (this.#closing !== undefined) throw new ClientError('UNAVAILABLE', 'gateway is shutting down')
    const refused = this.#refuse()
    if (refused !== undefined) throw new ClientError('UNAVAILABLE', refused)
    const call = this.#send(request)
    this.#calls.add(call)
    try {
      return await call as RpcResults[O]
    } finally {
      this.#calls.delete(call)
    }
  }

  async #send (request: RpcRequest): Promise<unknown> {
    const id = String(++this.#nextId)
    // Monotonic: a wall-clock step must not change what is left of the call.
    const started = performance.now()
    const replied = new Promise<AsyncMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new ClientError('UNAVAILABLE', 'the chat service did not answer in time; retry shortly'))
      }, this.#timeoutMs)
      this.#pending.set(id, { resolve, reject, timer })
    })
    // Getting a channel and writing the request may each wait far longer than the timeout
    // (a reconnect, a silent link, a corked socket): they run on their own, and the caller
    // waits only for `replied`, which the timer settles.
    void (async () => {
      try {
        const channel = await this.#ready()
        // Timed out, or the channel was lost, while waiting for it.
        if (!this.#pending.has(id)) return
        // What is left of the call's time once a channel is had: the request must not
        // outlive its caller in the queue, nor the worker think it has the whole timeout.
        const left = Math.floor(this.#timeoutMs - (performance.now() - started))
        if (left < 1) return
        const sentAt = Date.now()
        await channel.basicPublish({
          exchange: this.#exchange,
          routingKey: ROUTE_RPC,
          replyTo: REPLY_TO,
          correlationId: id,
          expiration: String(left),
          headers: { [RPC_TIMEOUT_HEADER]: left, [RPC_SENT_AT_HEADER]: sentAt },
          contentType: 'application/json'
        }, request)
      } catch (cause) {
        this.#settle(id, (p) => p.reject(new ClientError('UNAVAILABLE', 'the chat service is unavailable; retry shortly', { cause })))
      }
    })()
    const reply = await replied
    const body = reply.body as RpcResponse | undefined
    if (body === undefined || typeof body !== 'object' || body === null || typeof body.ok !== 'boolean') {
      throw new ClientError('INTERNAL', 'malformed reply from worker')
    }
    if (!body.ok) throw new ClientError(body.error.code, body.error.message)
    return body.result
  }

  #settle (id: string, settle: (p: Pending) => void): void {
    const p = this.#pending.get(id)
    if (p === undefined) return
    this.#pending.delete(id)
    clearTimeout(p.timer)
    settle(p)
  }

  /** The reply channel, opened and consuming; one opening at a time, shared by every caller. */
  async #ready (): Promise<Channel> {
    if (this.#channel?.active === true) return this.#channel
    this.#opening ??= this.#open().finally(() => { this.#opening = undefined })
    return await this.#opening
  }

  async #open (): Promise<Channel> {
    const channel = await this.#connection.acquire()
    channel.once('close', () => {
      if (this.#channel === channel) this.#channel = undefined
      // Replies to this channel's requests can no longer arrive.
      for (const id of [...this.#pending.keys()]) {
        this.#settle(id, (p) => p.reject(new ClientError('UNAVAILABLE', 'the connection to the chat service was lost; retry shortly')))
      }
    })
    try {
      await channel.basicConsume({ queue: REPLY_TO, noAck: true }, (reply) => {
        if (typeof reply.correlationId === 'string') this.#settle(reply.correlationId, (p) => p.resolve(reply))
      })
    } catch (err) {
      await channel.close().catch(() => {})
      throw err
    }
    if (this.#closing !== undefined) {
      // close() gave up waiting for this one: it must not outlive the client.
      await channel.close().catch(() => {})
      throw new ClientError('UNAVAILABLE', 'gateway is shutting down')
    }
    this.#channel = channel
    return channel
  }

  /** Waits for calls in flight (each bounded by the timeout), then closes the channel. Idempotent. */
  close (): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#calls])
      // A channel still opening (the broker unreachable) is not waited for past a timeout.
      await Promise.race([this.#opening?.catch(() => undefined), new Promise((resolve) => setTimeout(resolve, this.#timeoutMs).unref())])
      await this.#channel?.close().catch(() => {})
      this.#channel = undefined
    })()
    return this.#closing
  }
}
