/**
 * Where each outgoing delivery is routed. A group message is published once, routed
 * `channel:{id}`: RabbitMQ copies it to every gateway bound to that key, never once per
 * member. A direct message is published once per member, routed `user:{id}`.
 *
 * Not one publish with the sender's key in the CC header: RabbitMQ 3.10 routes a
 * multi-key publish with an ETS match over every binding of the exchange instead of a
 * key lookup, and the benchmark caught the worker's publishing channel spending most of
 * the broker's CPU there (recon: 12.5 M reductions in 5 s at 1,000 DMs/s with 2,000
 * bindings). Two single-key publishes cost two lookups.
 */
import type { Envelope } from 'rabbitmq-client'
import type { Delivery } from '../contracts/envelopes.js'
import type { Message } from '../contracts/protocol.js'
import { channelKey, userKey } from './topology.js'

/**
 * Typing notices older than this are useless: the receiving gateway drops them. Not a
 * broker expiration: a message that expires in a gateway queue is dead-lettered to the
 * gateway's drops exchange like one the full queue dropped, and a backlog of typing
 * notices would make the gateway re-read every membership and resync every socket.
 */
export const TYPING_TTL_MS = 5000

export function deliveryEnvelope (exchange: string, delivery: Delivery): Envelope {
  // Transient: PostgreSQL is the record, and gateway queues are not durable anyway.
  const base: Envelope = { exchange, durable: false, contentType: 'application/json' }
  switch (delivery.t) {
    case 'message': {
      const m = delivery.message
      if (m.kind === 'group') return { ...base, routingKey: channelKey(m.channelId) }
      return { ...base, routingKey: userKey(delivery.forUser ?? m.toUserId ?? m.senderId) }
    }
    case 'typing':
      return delivery.kind === 'group' || delivery.peerId === undefined
        ? { ...base, routingKey: channelKey(delivery.channelId) }
        : { ...base, routingKey: userKey(delivery.peerId) }
    case 'joined':
    case 'left':
    case 'rejected':
      return { ...base, routingKey: userKey(delivery.userId) }
  }
}

/** The deliveries of one stored message: one for a group, one per member of a direct channel. */
export function messageDeliveries (message: Message): Delivery[] {
  if (message.kind === 'group') return [{ t: 'message', message }]
  const to = message.toUserId ?? message.senderId
  return to === message.senderId
    ? [{ t: 'message', message, forUser: to }]
    : [{ t: 'message', message, forUser: to }, { t: 'message', message, forUser: message.senderId }]
}
