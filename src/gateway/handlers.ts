/**
 * Client events of protocol v1 (docs/PROTOCOL.md). senderId and userId always come
 * from the verified token, never from a payload.
 */
import { randomUUID } from 'node:crypto'
import { sendShard } from '../broker/shards.js'
import { sendRoute } from '../broker/topology.js'
import { PublishError } from '../broker/publisher.js'
import { deliveryEnvelope } from '../broker/deliveries.js'
import { isOpen } from '../broker/socket.js'
import { ENVELOPE_VERSION, type Delivery, type SendCommand } from '../contracts/envelopes.js'
import {
  ChannelCreateSchema, ChannelLeaveSchema, ChannelsListSchema, HistoryFetchSchema, MessageSendSchema, TypingSchema
} from '../contracts/protocol.js'
import { ClientError } from '../errors.js'
import type { GatewayContext } from './context.js'
import { route, type EventName } from './handle.js'
import type { AppSocket } from './types.js'

const DEFAULT_HISTORY_LIMIT = 50

/**
 * The user's channel on this gateway, or FORBIDDEN. Channel ids are uuids and compared as
 * such: one sent in capitals names the same channel. Use the returned `id` from here on.
 */
function memberOf (ctx: GatewayContext, socket: AppSocket, channelId: string) {
  const channel = ctx.sessions.channelOf(socket.data.userId, channelId.toLowerCase())
  if (channel === undefined) throw new ClientError('FORBIDDEN', 'not a member of this channel')
  return channel
}

/** A send answered UNAVAILABLE, counted by why. */
function refuse (ctx: GatewayContext, reason: 'blocked' | 'disconnected' | 'backlog' | 'unconfirmed', message: string, cause?: unknown): ClientError {
  ctx.metrics.sendsRefused.inc({ reason })
  return new ClientError('UNAVAILABLE', message, cause === undefined ? undefined : { cause })
}

export const routes = {
  'message:send': route(MessageSendSchema, async (ctx, socket, p) => {
    const { config, broker } = ctx
    if ((p.toUserId === undefined) === (p.channelId === undefined)) {
      throw new ClientError('VALIDATION', 'give exactly one of toUserId and channelId')
    }
    if (p.content.length > config.MAX_CONTENT_CHARS) {
      throw new ClientError('VALIDATION', `content is longer than ${config.MAX_CONTENT_CHARS} characters`)
    }
    const channel = p.channelId !== undefined ? memberOf(ctx, socket, p.channelId) : undefined
    const channelId = channel?.id
    // Under a broker alarm, holding sends in memory would only grow the gateway; refuse now.
    if (broker.blocked()) throw refuse(ctx, 'blocked', 'the broker is refusing new messages; retry later with the same clientMsgId')
    // Disconnected, rabbitmq-client would hold the publish and send it after reconnecting,
    // possibly long after the client was told UNAVAILABLE: refuse instead of queueing.
    if (!isOpen(broker.publishConnection)) throw refuse(ctx, 'disconnected', 'not connected to the broker; retry later with the same clientMsgId')
    // A direct channel named by its id goes where sends by toUserId go, or its sends would
    // be split over two shards and stored out of order.
    const shard = sendShard(channel?.kind === 'direct' && channel.peerId !== undefined
      ? { senderId: socket.data.userId, toUserId: channel.peerId }
      : { senderId: socket.data.userId, toUserId: p.toUserId, channelId }, config.WORKER_SHARDS)
    if (broker.backlog.over(shard)) throw refuse(ctx, 'backlog', `${broker.backlog.depth(shard) ?? 'too many'} messages are waiting to be stored; retry later with the same clientMsgId`)
    const command: SendCommand = {
      v: ENVELOPE_VERSION,
      senderId: socket.data.userId,
      clientMsgId: p.clientMsgId,
      content: p.content,
      ...(p.toUserId !== undefined ? { toUserId: p.toUserId } : { channelId }),
      sentAt: Date.now()
    }
    const started = performance.now()
    try {
      await broker.publisher.publish({
        exchange: broker.names.incoming,
        routingKey: sendRoute(shard),
        durable: true,
        // Confirms alone would also confirm a message no queue took.
        mandatory: true,
        messageId: p.clientMsgId,
        contentType: 'application/json'
      }, command, config.SEND_TIMEOUT_MS)
    } catch (err) {
      if (err instanceof PublishError) {
        ctx.log.warn({ err, userId: socket.data.userId }, 'send not confirmed by the broker')
        throw refuse(ctx, 'unconfirmed', 'the message was not accepted; retry with the same clientMsgId', err)
      }
      throw err
    }
    ctx.metrics.publishConfirm.observe((performance.now() - started) / 1000)
    ctx.metrics.messagesIn.inc()
    return { clientMsgId: p.clientMsgId }
  }),

  typing: route(TypingSchema, async (ctx, socket, p) => {
    const channel = memberOf(ctx, socket, p.channelId)
    // A note to self has no one else to tell.
    if (channel.kind === 'direct' && channel.peerId === socket.data.userId) return {}
    const delivery: Delivery = {
      t: 'typing',
      channelId: channel.id,
      userId: socket.data.userId,
      kind: channel.kind,
      ...(channel.peerId !== undefined ? { peerId: channel.peerId } : {}),
      sentAt: Date.now()
    }
    // Fire and forget: a lost typing notice is harmless, a slow one useless. Blocked or
    // disconnected, rabbitmq-client would hold it in memory: drop it instead.
    if (ctx.broker.blocked() || !isOpen(ctx.broker.publishConnection)) return {}
    ctx.broker.ephemeral.send(deliveryEnvelope(ctx.broker.names.outgoing, delivery), delivery)
      .catch((err: unknown) => ctx.log.debug({ err }, 'typing notice not published'))
    return {}
  }),

  'history:fetch': route(HistoryFetchSchema, async (ctx, socket, p) => {
    if ((p.withUserId === undefined) === (p.channelId === undefined)) {
      throw new ClientError('VALIDATION', 'give exactly one of channelId and withUserId')
    }
    const channelId = p.channelId !== undefined ? memberOf(ctx, socket, p.channelId).id : undefined
    const { messages } = await ctx.requests.run(socket.data.userId, () => ctx.broker.rpc.call({
      op: 'history.fetch',
      userId: socket.data.userId,
      ...(channelId !== undefined ? { channelId } : {}),
      ...(p.withUserId !== undefined ? { withUserId: p.withUserId } : {}),
      ...(p.afterSeq !== undefined ? { afterSeq: p.afterSeq } : {}),
      ...(p.beforeSeq !== undefined ? { beforeSeq: p.beforeSeq } : {}),
      limit: p.limit ?? DEFAULT_HISTORY_LIMIT
    }))
    return { messages }
  }),

  'channels:list': route(ChannelsListSchema, async (ctx, socket) => {
    const userId = socket.data.userId
    const { channels } = await ctx.requests.run(userId, () => ctx.broker.rpc.call({ op: 'channels.list', userId }))
    return { channels }
  }),

  'channel:create': route(ChannelCreateSchema, async (ctx, socket, p) => {
    if (p.memberIds.length > ctx.config.MAX_CHANNEL_MEMBERS) {
      throw new ClientError('VALIDATION', `a channel may name at most ${ctx.config.MAX_CHANNEL_MEMBERS} members`)
    }
    const userId = socket.data.userId
    // Always a key: the broker may hand the request to a worker again after the first lost
    // its connection mid-write, and the second run must answer what the first did.
    const requestId = (p.requestId ?? randomUUID()).toLowerCase()
    const { channel, left } = await ctx.requests.run(userId, () => ctx.broker.rpc.call({ op: 'channel.create', userId, name: p.name, memberIds: p.memberIds, requestId }))
    // Bind here before answering, so the creator can send to it at once; unless this was a
    // retry of a create whose creator has left the channel since.
    if (left !== true) await ctx.sessions.joined(userId, channel)
    return { channelId: channel.id }
  }),

  'channel:leave': route(ChannelLeaveSchema, async (ctx, socket, p) => {
    const userId = socket.data.userId
    // A retry (a requestId) of a leave that was done finds the user no longer a member
    // here: the worker, which knows the request, answers it.
    const channelId = p.requestId === undefined ? memberOf(ctx, socket, p.channelId).id : p.channelId.toLowerCase()
    const requestId = (p.requestId ?? randomUUID()).toLowerCase()
    await ctx.requests.run(userId, () => ctx.broker.rpc.call({ op: 'channel.leave', userId, channelId, requestId }))
    await ctx.sessions.left(userId, channelId)
    return {}
  })
} satisfies Record<EventName, ReturnType<typeof route>>
