/**
 * Client events of protocol v1 (docs/PROTOCOL.md). senderId and userId always come
 * from the verified token, never from a payload.
 */
import { ROUTE_SEND } from '../broker/topology.js'
import { PublishError } from '../broker/publisher.js'
import { deliveryEnvelope } from '../broker/deliveries.js'
import { ENVELOPE_VERSION, type Delivery, type SendCommand } from '../contracts/envelopes.js'
import {
  ChannelCreateSchema, ChannelLeaveSchema, ChannelsListSchema, HistoryFetchSchema, MessageSendSchema, TypingSchema
} from '../contracts/protocol.js'
import { ClientError } from '../errors.js'
import type { GatewayContext } from './context.js'
import { createRateLimiter, handle } from './handle.js'
import type { AppSocket } from './types.js'

const DEFAULT_HISTORY_LIMIT = 50
const KNOWN_EVENTS = new Set(['message:send', 'channel:create', 'channel:leave', 'history:fetch', 'channels:list', 'typing'])

export function registerHandlers (ctx: GatewayContext, socket: AppSocket): void {
  const { config, broker, sessions } = ctx
  const userId = socket.data.userId
  const allow = createRateLimiter(config.SOCKET_RATE_PER_SEC, config.SOCKET_RATE_BURST)
  const memberOf = (channelId: string) => {
    const channel = sessions.channelOf(userId, channelId)
    if (channel === undefined) throw new ClientError('FORBIDDEN', 'not a member of this channel')
    return channel
  }

  // Events outside the protocol get a coded answer (when they carry an ack) and count
  // against the same rate limit.
  socket.onAny((event: unknown, ...args: unknown[]) => {
    if (typeof event === 'string' && KNOWN_EVENTS.has(event)) return
    ctx.metrics.events.inc({ event: 'unknown' })
    const ack = args.at(-1)
    const code = allow() ? 'VALIDATION' : 'RATE_LIMITED'
    ctx.metrics.errors.inc({ event: 'unknown', code })
    if (typeof ack === 'function') ack({ ok: false, error: { code, message: 'unknown event' } })
  })

  handle(ctx, socket, allow, 'message:send', MessageSendSchema, async (p) => {
    if ((p.toUserId === undefined) === (p.channelId === undefined)) {
      throw new ClientError('VALIDATION', 'give exactly one of toUserId and channelId')
    }
    if (p.content.length > config.MAX_CONTENT_CHARS) {
      throw new ClientError('VALIDATION', `content is longer than ${config.MAX_CONTENT_CHARS} characters`)
    }
    if (p.channelId !== undefined) memberOf(p.channelId)
    // Under a broker alarm, holding sends in memory would only grow the gateway; refuse now.
    if (broker.blocked()) throw new ClientError('UNAVAILABLE', 'the broker is refusing new messages; retry later with the same clientMsgId')
    const command: SendCommand = {
      v: ENVELOPE_VERSION,
      senderId: userId,
      clientMsgId: p.clientMsgId,
      content: p.content,
      ...(p.toUserId !== undefined ? { toUserId: p.toUserId } : { channelId: p.channelId }),
      sentAt: Date.now()
    }
    const started = performance.now()
    try {
      await broker.publisher.publish({
        exchange: broker.names.incoming,
        routingKey: ROUTE_SEND,
        durable: true,
        // Confirms alone would also confirm a message no queue took.
        mandatory: true,
        messageId: p.clientMsgId,
        contentType: 'application/json'
      }, command, config.SEND_TIMEOUT_MS)
    } catch (err) {
      if (err instanceof PublishError) {
        ctx.log.warn({ err, userId }, 'send not confirmed by the broker')
        throw new ClientError('UNAVAILABLE', 'the message was not accepted; retry with the same clientMsgId', { cause: err })
      }
      throw err
    }
    ctx.metrics.publishConfirm.observe((performance.now() - started) / 1000)
    ctx.metrics.messagesIn.inc()
    return { clientMsgId: p.clientMsgId }
  })

  handle(ctx, socket, allow, 'typing', TypingSchema, async (p) => {
    const channel = memberOf(p.channelId)
    const delivery: Delivery = {
      t: 'typing',
      channelId: channel.id,
      userId,
      kind: channel.kind,
      ...(channel.peerId !== undefined ? { peerId: channel.peerId } : {})
    }
    // Fire and forget: a lost typing notice is harmless, a slow one useless.
    broker.ephemeral.send(deliveryEnvelope(broker.names.outgoing, delivery), delivery)
      .catch((err: unknown) => ctx.log.debug({ err }, 'typing notice not published'))
    return {}
  })

  handle(ctx, socket, allow, 'history:fetch', HistoryFetchSchema, async (p) => {
    if ((p.withUserId === undefined) === (p.channelId === undefined)) {
      throw new ClientError('VALIDATION', 'give exactly one of channelId and withUserId')
    }
    if (p.channelId !== undefined) memberOf(p.channelId)
    const { messages } = await broker.rpc.call({
      op: 'history.fetch',
      userId,
      ...(p.channelId !== undefined ? { channelId: p.channelId } : {}),
      ...(p.withUserId !== undefined ? { withUserId: p.withUserId } : {}),
      ...(p.afterSeq !== undefined ? { afterSeq: p.afterSeq } : {}),
      ...(p.beforeSeq !== undefined ? { beforeSeq: p.beforeSeq } : {}),
      limit: p.limit ?? DEFAULT_HISTORY_LIMIT
    })
    return { messages }
  })

  handle(ctx, socket, allow, 'channels:list', ChannelsListSchema, async () => {
    const { channels } = await broker.rpc.call({ op: 'channels.list', userId })
    return { channels }
  })

  handle(ctx, socket, allow, 'channel:create', ChannelCreateSchema, async (p) => {
    if (p.memberIds.length > config.MAX_CHANNEL_MEMBERS) {
      throw new ClientError('VALIDATION', `a channel may name at most ${config.MAX_CHANNEL_MEMBERS} members`)
    }
    const { channel } = await broker.rpc.call({ op: 'channel.create', userId, name: p.name, memberIds: p.memberIds })
    // Bind here before answering, so the creator can send to it at once.
    await sessions.joined(userId, channel)
    return { channelId: channel.id }
  })

  handle(ctx, socket, allow, 'channel:leave', ChannelLeaveSchema, async (p) => {
    memberOf(p.channelId)
    await broker.rpc.call({ op: 'channel.leave', userId, channelId: p.channelId })
    await sessions.left(userId, p.channelId)
    return {}
  })
}
