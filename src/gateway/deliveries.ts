/**
 * Turns deliveries from the gateway's queue into socket emits. Rooms make each
 * emit reach every local socket that should see it exactly once: `c:{id}` holds the
 * sockets of local channel members, `u:{id}` every socket of a user.
 */
import type { AsyncMessage } from 'rabbitmq-client'
import { TYPING_TTL_MS } from '../broker/deliveries.js'
import type { Delivery } from '../contracts/envelopes.js'
import type { Logger } from '../log.js'
import type { GatewayMetrics } from './metrics.js'
import type { Sessions } from './sessions.js'
import { channelRoom, userRoom, type AppIo } from './types.js'

/**
 * Message ids this gateway emitted lately. A worker that crashed after publishing but
 * before acking publishes the batch again on redelivery; sockets must not see those
 * messages twice.
 */
const RECENT_IDS = 100_000

const KNOWN_TYPES = new Set<string>(['message', 'typing', 'joined', 'left', 'rejected'] satisfies Array<Delivery['t']>)

export function createDeliveryHandler (io: AppIo, sessions: Sessions, metrics: GatewayMetrics, log: Logger) {
  const recent = new Set<string>()
  const firstTime = (id: string): boolean => {
    if (recent.has(id)) return false
    recent.add(id)
    // Sets iterate in insertion order: drop the oldest.
    if (recent.size > RECENT_IDS) recent.delete(recent.values().next().value as string)
    return true
  }
  return (msg: AsyncMessage): void => {
    const d = msg.body as Delivery
    if (d === null || typeof d !== 'object' || typeof d.t !== 'string') {
      metrics.deliveries.inc({ type: 'malformed' })
      log.warn({ routingKey: msg.routingKey }, 'dropped a malformed delivery')
      return
    }
    // The label comes from a known list, never from the body: a newer publisher's types count as unknown.
    metrics.deliveries.inc({ type: KNOWN_TYPES.has(d.t) ? d.t : 'unknown' })
    switch (d.t) {
      case 'message': {
        const m = d.message
        // One copy per direct member: de-duplicate per (message, user).
        if (!firstTime(d.forUser === undefined ? m.id : `${m.id}\n${d.forUser}`)) {
          metrics.deliveries.inc({ type: 'duplicate' })
          return
        }
        if (m.kind === 'group') {
          io.to(channelRoom(m.channelId)).emit('message:new', m)
          sessions.emitted(m.channelId, m.seq)
          return
        }
        const to = m.toUserId ?? m.senderId
        const forUser = d.forUser ?? to
        const peerId = forUser === m.senderId ? to : m.senderId
        io.to(userRoom(forUser)).emit('message:new', m)
        // A direct channel is created by its first message and no `joined` announces it:
        // learn it here, or typing, sends and history by its id are refused until the
        // user reconnects. joined() does nothing for users not on this gateway.
        if (sessions.channelOf(forUser, m.channelId) === undefined) {
          void sessions.joined(forUser, { id: m.channelId, kind: 'direct', name: peerId, lastSeq: m.seq, peerId })
        }
        return
      }
      case 'typing':
        if (typeof d.sentAt === 'number' && Date.now() - d.sentAt > TYPING_TTL_MS) {
          metrics.deliveries.inc({ type: 'stale' })
          return
        }
        if (d.kind === 'group') io.to(channelRoom(d.channelId)).except(userRoom(d.userId)).emit('typing', { channelId: d.channelId, userId: d.userId })
        else if (d.peerId !== undefined) io.to(userRoom(d.peerId)).except(userRoom(d.userId)).emit('typing', { channelId: d.channelId, userId: d.userId })
        return
      case 'joined':
        void sessions.joined(d.userId, d.channel)
        return
      case 'left':
        void sessions.left(d.userId, d.channelId)
        return
      case 'rejected':
        io.to(userRoom(d.userId)).emit('message:rejected', { clientMsgId: d.clientMsgId, error: d.error })
        return
    }
  }
}
