/**
 * A long-lived publisher with publisher confirms, used for every write that must
 * not be lost. `publish()` resolves only when the broker has taken responsibility
 * for the message: confirmed, and routed to at least one queue when `mandatory`
 * (RabbitMQ confirms unroutable messages too, so a confirm alone proves nothing).
 */
import { randomUUID } from 'node:crypto'
import type { Connection, Envelope, Publisher, PublisherProps, ReturnedMessage } from 'rabbitmq-client'
import { AppError } from '../errors.js'

/** Header naming one mandatory publish, to match a basic.return to it. */
const PUBLISH_ID = 'x-chat-publish-id'

export class PublishError extends AppError {
  /** True when retrying the same message later may succeed (timeout, connection loss, nack). */
  readonly retryable: boolean
  constructor (code: `APP_${string}`, message: string, retryable: boolean, cause?: unknown) {
    super(code, message, { cause })
    this.name = 'PublishError'
    this.retryable = retryable
  }
}

export class ConfirmedPublisher {
  readonly #publisher: Publisher
  readonly #returned = new Set<string>()
  #closing: Promise<void> | undefined

  constructor (connection: Connection, props: Omit<PublisherProps, 'confirm'> = {}) {
    this.#publisher = connection.createPublisher({ ...props, confirm: true, maxAttempts: 1 })
    // basic.return precedes the basic.ack of the same message on the same channel, but
    // rabbitmq-client emits it a turn later (setImmediate) while it resolves the confirm
    // at once: publishAll() waits for that turn before it looks.
    this.#publisher.on('basic.return', (msg: ReturnedMessage) => {
      const id = msg.headers?.[PUBLISH_ID]
      if (typeof id === 'string') this.#returned.add(id)
    })
  }

  /**
   * @param timeoutMs reject with APP_PUBLISH_TIMEOUT after this long; the message may
   *   still reach the broker later, so callers retry only idempotent messages.
   * @throws PublishError
   */
  async publish (envelope: Envelope, body: unknown, timeoutMs: number): Promise<void> {
    await this.publishAll([{ envelope, body }], timeoutMs)
  }

  /**
   * Publishes several messages at once (their frames leave in one write, see
   * socket.ts) under one timer; resolves when every one is confirmed.
   * @throws PublishError for the first that fails
   */
  async publishAll (messages: Array<{ envelope: Envelope, body: unknown }>, timeoutMs: number): Promise<void> {
    if (this.#closing !== undefined) throw new PublishError('APP_PUBLISHER_CLOSED', 'publisher is closed', true)
    // Only a mandatory message can come back, and only an id of its own tells which one
    // did: messageId is the client's, and two sends may carry the same one.
    const sends = messages.map(({ envelope, body }) => {
      const id = envelope.mandatory === true ? randomUUID() : undefined
      const tracked = id === undefined ? envelope : { ...envelope, headers: { ...envelope.headers, [PUBLISH_ID]: id } }
      return this.#publisher.send(tracked, body).then(async () => {
        if (id === undefined) return
        await new Promise((resolve) => setImmediate(resolve))
        if (this.#returned.delete(id)) {
          throw new PublishError('APP_PUBLISH_UNROUTABLE', `no queue is bound to ${tracked.exchange ?? ''}/${tracked.routingKey ?? ''}`, false)
        }
      }, (err: unknown) => {
        // Its basic.return, if any, is emitted a turn later: forget it then.
        if (id !== undefined) setImmediate(() => this.#returned.delete(id))
        throw new PublishError('APP_PUBLISH_FAILED', 'broker refused or lost the message', true, err)
      })
    })
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new PublishError('APP_PUBLISH_TIMEOUT', `broker did not confirm within ${timeoutMs} ms`, true)), timeoutMs)
    })
    try {
      await Promise.race([Promise.all(sends), timeout])
    } finally {
      clearTimeout(timer)
      // Settle the losers of the race so none becomes an unhandled rejection.
      for (const send of sends) send.catch(() => {})
    }
  }

  /** Idempotent. */
  close (): Promise<void> {
    this.#closing ??= this.#publisher.close()
    return this.#closing
  }
}
