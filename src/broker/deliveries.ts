/**
 * Where each outgoing delivery is routed. One publish per message, never one per
 * member: a group message goes to `channel:{id}` and RabbitMQ copies it to every
 * gateway bound to that key; a direct message goes to `user:{to}` with the sender's
 * key in the CC header (sender-selected distribution), so a gateway holding both
 * users still gets a single copy.
 */
import type { Envelope } from 'rabbitmq-client'
import type { Delivery } from '../contracts/envelopes.js'
import { channelKey, userKey } from './topology.js'

/** Typing notices older than this are useless; the broker drops them instead of queueing. */
export const TYPING_TTL_MS = 5000

export function deliveryEnvelope (exchange: string, delivery: Delivery): Envelope {
  // Transient: PostgreSQL is the record, and gateway queues are not durable anyway.
  const base: Envelope = { exchange, durable: false, contentType: 'application/json' }
  switch (delivery.t) {
    case 'message': {
      const m = delivery.message
      if (m.kind === 'group') return { ...base, routingKey: channelKey(m.channelId) }
      const to = m.toUserId ?? m.senderId
      return to === m.senderId
        ? { ...base, routingKey: userKey(to) }
        : { ...base, routingKey: userKey(to), headers: { CC: [userKey(m.senderId)] } }
    }
    case 'typing':
      return delivery.kind === 'group' || delivery.peerId === undefined
        ? { ...base, routingKey: channelKey(delivery.channelId), expiration: String(TYPING_TTL_MS) }
        : { ...base, routingKey: userKey(delivery.peerId), expiration: String(TYPING_TTL_MS) }
    case 'joined':
    case 'left':
    case 'rejected':
      return { ...base, routingKey: userKey(delivery.userId) }
  }
}
