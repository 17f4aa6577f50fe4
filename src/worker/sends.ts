/**
 * The worker's write path: validate → persist a batch in one transaction → publish
 * deliveries with confirms → ack. A message is acked only after its row is
 * committed and its delivery confirmed.
 *
 * Failure policy:
 * - malformed or unknown input (poison): dead-lettered with the reason, then acked;
 * - the database is down or busy (transient): the batch is retried with backoff and
 *   nothing is acked or dead-lettered meanwhile; the worker reports unready;
 * - a row the database refuses for good: the batch is split to find it, and only that
 *   message is dead-lettered;
 * - deliveries cannot be published (the broker confirms late, blocks or reconnects):
 *   the rows are committed, so the batch stays unacked and the publish is retried with
 *   backoff; only at shutdown is it given back (a redelivery finds the rows as duplicates
 *   and publishes their deliveries). Requeueing at once would burn the queue's delivery
 *   limit and dead-letter stored messages.
 */
import type { AsyncMessage, Envelope } from 'rabbitmq-client'
import { ConsumerStatus } from 'rabbitmq-client'
import { SendCommandSchema, type Delivery, type SendCommand } from '../contracts/envelopes.js'
import { compile } from '../contracts/validate.js'
import { isUserId, isUuid } from '../contracts/ids.js'
import { deliveryEnvelope, messageDeliveries } from '../broker/deliveries.js'
import type { ConfirmedPublisher } from '../broker/publisher.js'
import { ConcurrentInsertError, type MessagesRepository, type PersistOutcome } from '../db/repositories/messages.js'
import { describeDbError, isTransientDbError, withDbTimeout } from '../db/errors.js'
import type { Logger } from '../log.js'
import type { WorkerMetrics } from './metrics.js'

const validateSend = compile(SendCommandSchema)

/** Backoff with jitter for retrying a batch (database or broker trouble): 100 ms doubling to 5 s. */
const retryDelayMs = (attempt: number) => Math.min(5000, 100 * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random() / 2)

/**
 * Settles a send by leaving it unacked for the broker to take back when the worker
 * closes its channel at shutdown: every such send returns at once, in delivery order.
 */
export const GIVE_BACK = 'give-back'

export interface PendingSend {
  msg: AsyncMessage
  settle: (status: ConsumerStatus | typeof GIVE_BACK) => void
}

export interface SendPipelineOptions {
  messages: MessagesRepository
  publisher: ConfirmedPublisher
  outgoingExchange: string
  deadLetter: (msg: AsyncMessage, reason: string) => Promise<void>
  maxContentChars: number
  log: Logger
  metrics: WorkerMetrics
  /** Reports database health for readiness. */
  onDatabaseState: (up: boolean) => void
  /** True once shutdown began: stop retrying and hand messages back to the queue. */
  isClosing: () => boolean
  dbTimeoutMs: number
  publishTimeoutMs?: number
}

type Valid = PendingSend & { command: SendCommand }

export class SendPipeline {
  readonly #o: SendPipelineOptions
  readonly #publishing = new Set<Promise<void>>()

  constructor (options: SendPipelineOptions) {
    this.#o = options
  }

  /** Resolves once every batch's deliveries are confirmed (or given back). */
  async idle (): Promise<void> {
    while (this.#publishing.size > 0) await Promise.allSettled([...this.#publishing])
  }

  /**
   * Persists one batch and starts publishing its deliveries; resolves when the batch
   * is committed, so the next batch can be persisted while this one's deliveries are
   * confirmed. Batches must run one at a time: that keeps seq in queue order. Every
   * item is settled exactly once.
   */
  async run (items: PendingSend[]): Promise<void> {
    this.#o.metrics.batchSize.observe(items.length)
    const valid: Valid[] = []
    await Promise.all(items.map(async (item) => {
      const reason = this.#invalidReason(item.msg.body)
      if (reason === undefined) {
        valid.push({ ...item, command: item.msg.body as SendCommand })
        return
      }
      await this.#poison(item, reason)
    }))
    if (valid.length > 0) await this.#persist(valid)
  }

  #invalidReason (body: unknown): string | undefined {
    if (Buffer.isBuffer(body) || typeof body === 'string') return 'body is not JSON'
    const checked = validateSend(body)
    if (!checked.ok) return `invalid send command: ${checked.reason}`
    const c = checked.value
    if ((c.toUserId === undefined) === (c.channelId === undefined)) return 'invalid send command: exactly one of toUserId and channelId is required'
    if (c.content.length > this.#o.maxContentChars) return `invalid send command: content longer than ${this.#o.maxContentChars} characters`
    return undefined
  }

  async #poison (item: PendingSend, reason: string, code: 'VALIDATION' | 'INTERNAL' = 'VALIDATION'): Promise<void> {
    try {
      await this.#o.deadLetter(item.msg, reason)
      this.#o.metrics.deadLettered.inc()
      this.#o.log.warn({ reason, messageId: item.msg.messageId }, 'dead-lettered a message')
      item.settle(ConsumerStatus.ACK)
      this.#tellSender(item.msg.body, { code, message: reason })
    } catch (err) {
      // Could not park it: let the broker's own dead-lettering take it (queue DLX).
      this.#o.log.error({ err, reason }, 'could not publish to the dead-letter exchange; dropping to the queue DLX')
      item.settle(ConsumerStatus.DROP)
    }
  }

  /**
   * The gateway acked this send, so its sender waits for it: say it will never come
   * (`message:rejected`), when the body names a sender and a clientMsgId at all.
   * Best effort: the dead-letter queue holds the message either way.
   */
  #tellSender (body: unknown, error: { code: 'VALIDATION' | 'INTERNAL', message: string }): void {
    if (body === null || typeof body !== 'object') return
    const { senderId, clientMsgId } = body as { senderId?: unknown, clientMsgId?: unknown }
    if (typeof senderId !== 'string' || !isUserId(senderId) || typeof clientMsgId !== 'string' || !isUuid(clientMsgId)) return
    const delivery: Delivery = { t: 'rejected', userId: senderId, clientMsgId, error: { code: error.code, message: error.message.slice(0, 500) } }
    this.#o.publisher.publish(deliveryEnvelope(this.#o.outgoingExchange, delivery), delivery, this.#o.publishTimeoutMs ?? 10_000)
      .catch((err: unknown) => this.#o.log.warn({ err, clientMsgId }, 'could not tell the sender of a dead-lettered message'))
  }

  /**
   * @param retried an earlier attempt may have committed: publish duplicates' deliveries too
   * @returns 'given back' when the batch went back to the broker (stopping during an outage)
   */
  async #persist (batch: Valid[], retried = false): Promise<'done' | 'given back'> {
    let outcomes: PersistOutcome[] | undefined
    let attempt = 0
    while (outcomes === undefined) {
      const started = performance.now()
      try {
        outcomes = await withDbTimeout(this.#o.messages.persistBatch(batch.map((b) => b.command)), this.#o.dbTimeoutMs)
        this.#o.metrics.dbLatency.observe((performance.now() - started) / 1000)
        this.#o.onDatabaseState(true)
      } catch (err) {
        attempt++
        if (err instanceof ConcurrentInsertError && attempt < 5) continue
        if (isTransientDbError(err) || err instanceof ConcurrentInsertError) {
          this.#o.onDatabaseState(false)
          this.#o.metrics.retried.inc(batch.length)
          if (this.#o.isClosing()) {
            for (const b of batch) b.settle(GIVE_BACK)
            return 'given back'
          }
          const delay = retryDelayMs(attempt)
          this.#o.log.warn({ err: describeDbError(err), attempt, delayMs: Math.round(delay), batch: batch.length }, 'database unavailable; retrying the batch')
          await new Promise((resolve) => setTimeout(resolve, delay))
          continue
        }
        // The database refuses something in this batch for good: it answers, so it is up.
        this.#o.onDatabaseState(true)
        if (batch.length > 1) {
          for (const [i, one] of batch.entries()) {
            if (await this.#persist([one], retried || attempt > 1) === 'given back') {
              // Storing the later ones now would number them before the one given back.
              for (const rest of batch.slice(i + 1)) rest.settle(GIVE_BACK)
              return 'given back'
            }
          }
          return 'done'
        }
        const reason = `database refused the message: ${describeDbError(err).message}`
        await this.#poison(batch[0]!, reason, 'INTERNAL')
        return 'done'
      }
    }

    // After a retry, a "duplicate" may be our own earlier attempt that committed late.
    const publishing = this.#publish(batch, outcomes, retried || attempt > 0).finally(() => this.#publishing.delete(publishing))
    this.#publishing.add(publishing)
    return 'done'
  }

  async #publish (batch: Valid[], outcomes: PersistOutcome[], retried: boolean): Promise<void> {
    const messages: Array<{ envelope: Envelope, body: Delivery }> = []
    const counts = { stored: 0, duplicate: 0, rejected: 0 }
    batch.forEach((b, i) => {
      const outcome = outcomes[i]!
      counts[outcome.status]++
      for (const delivery of this.#deliveriesFor(b, outcome, retried)) {
        messages.push({ envelope: deliveryEnvelope(this.#o.outgoingExchange, delivery), body: delivery })
      }
    })
    this.#o.metrics.persisted.inc(counts.stored)
    this.#o.metrics.duplicates.inc(counts.duplicate)
    this.#o.metrics.rejected.inc(counts.rejected)
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#o.publisher.publishAll(messages, this.#o.publishTimeoutMs ?? 10_000)
        this.#o.metrics.delivered.inc(messages.length)
        break
      } catch (err) {
        const delay = retryDelayMs(attempt)
        if (!this.#o.isClosing()) {
          this.#o.log.warn({ err, attempt, delayMs: Math.round(delay), batch: batch.length }, 'could not publish deliveries; retrying')
          await new Promise((resolve) => setTimeout(resolve, delay))
        }
        if (this.#o.isClosing()) {
          // Rows are committed; a redelivery finds them as duplicates and publishes again.
          this.#o.log.warn({ err }, 'could not publish deliveries while stopping; giving the batch back')
          for (const b of batch) b.settle(GIVE_BACK)
          return
        }
      }
    }
    for (const b of batch) b.settle(ConsumerStatus.ACK)
  }

  #deliveriesFor (b: Valid, outcome: PersistOutcome, retried: boolean): Delivery[] {
    switch (outcome.status) {
      case 'stored':
        return messageDeliveries(outcome.message)
      case 'duplicate':
        // A client retry of a delivered message must not be delivered twice; a broker
        // redelivery may follow a crash between commit and publish, so publish again
        // (gateways and clients de-duplicate by id).
        return b.msg.redelivered || retried ? messageDeliveries(outcome.message) : []
      case 'rejected':
        return [{ t: 'rejected', userId: b.command.senderId, clientMsgId: b.command.clientMsgId, error: outcome.error }]
    }
  }
}
