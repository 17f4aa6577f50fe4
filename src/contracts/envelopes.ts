/**
 * Bodies that travel through RabbitMQ between gateways and workers. Incoming
 * bodies are validated by the worker (a gateway is trusted, but a broker is shared
 * and a bad publisher must not crash or wedge the worker); outgoing bodies are
 * written by workers and gateways only.
 */
import { Type, type Static } from '@sinclair/typebox'
import type { ErrorBody } from '../errors.js'
import { ChannelIdSchema, UserIdSchema, UuidSchema } from './ids.js'
import { ContentSchema, type ChannelSummary, type Message } from './protocol.js'

/** Version of the envelopes below; a worker dead-letters versions it does not know. */
export const ENVELOPE_VERSION = 1

// ---- incoming exchange, routing key `message.send` -------------------------------

export const SendCommandSchema = Type.Object({
  v: Type.Literal(ENVELOPE_VERSION),
  senderId: UserIdSchema,
  clientMsgId: UuidSchema,
  content: ContentSchema,
  toUserId: Type.Optional(UserIdSchema),
  channelId: Type.Optional(ChannelIdSchema),
  /** ms since epoch at the gateway; used for latency metrics only. */
  sentAt: Type.Optional(Type.Number())
}, { additionalProperties: false })
export type SendCommand = Static<typeof SendCommandSchema>

// ---- incoming exchange, routing key `rpc` (request/response, direct reply-to) -------

const Limit = Type.Integer({ minimum: 1, maximum: 500 })
const Seq = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })


/** Most channel ids one channels.seq request may name; a gateway asks in chunks of this size. */
export const CHANNELS_SEQ_MAX_IDS = 10_000
export const RpcRequestSchema = Type.Union([
  Type.Object({ op: Type.Literal('session.open'), userId: UserIdSchema }, { additionalProperties: false }),
  Type.Object({ op: Type.Literal('channels.list'), userId: UserIdSchema }, { additionalProperties: false }),
  // A gateway re-reading what its users belong to after a broker outage lost joined/left notices.
  Type.Object({ op: Type.Literal('memberships.list'), userIds: Type.Array(UserIdSchema, { minItems: 1, maxItems: 1000 }) }, { additionalProperties: false }),
  Type.Object({
    op: Type.Literal('channels.seq'),
    userId: UserIdSchema,
    channelIds: Type.Array(ChannelIdSchema, { maxItems: CHANNELS_SEQ_MAX_IDS })
  }, { additionalProperties: false }),
  Type.Object({
    op: Type.Literal('history.fetch'),
    userId: UserIdSchema,
    channelId: Type.Optional(ChannelIdSchema),
    withUserId: Type.Optional(UserIdSchema),
    afterSeq: Type.Optional(Seq),
    beforeSeq: Type.Optional(Seq),
    limit: Limit
  }, { additionalProperties: false }),
  Type.Object({
    op: Type.Literal('channel.create'),
    userId: UserIdSchema,
    name: Type.String({ minLength: 1, maxLength: 100, format: 'chat-text' }),
    memberIds: Type.Array(UserIdSchema, { maxItems: 100_000 }),
    // The write's idempotency key (the client's, or one the gateway made for this call).
    // Optional so a worker can serve gateways of the version before it.
    requestId: Type.Optional(UuidSchema)
  }, { additionalProperties: false }),
  Type.Object({ op: Type.Literal('channel.leave'), userId: UserIdSchema, channelId: ChannelIdSchema, requestId: Type.Optional(UuidSchema) }, { additionalProperties: false })
])
export type RpcRequest = Static<typeof RpcRequestSchema>
export type RpcOp = RpcRequest['op']

/** What each RPC returns when it succeeds. */
export interface RpcResults {
  'session.open': { channels: ChannelSummary[] }
  'channels.list': { channels: ChannelSummary[] }
  /** One entry per requested user, in request order; pairs, not an object keyed by user id (`__proto__` is a valid id). */
  'memberships.list': { memberships: Array<{ userId: string, channels: ChannelSummary[] }> }
  'channels.seq': { seqs: Record<string, number> }
  'history.fetch': { messages: Message[] }
  /** `left`: a create run again whose creator has left the channel since (do not join them to it). */
  'channel.create': { channel: ChannelSummary, left?: true }
  'channel.leave': Record<never, never>
}

export type RpcResponse<O extends RpcOp = RpcOp> =
  | { ok: true, result: RpcResults[O] }
  | { ok: false, error: ErrorBody }

// ---- outgoing exchange: what a gateway receives on its queue ---------------------

export type Delivery =
  /**
   * A stored message. Group: published once, routed `channel:{id}`. Direct: published
   * once per member, routed `user:{forUser}`, for that user's sockets only.
   */
  | { t: 'message', message: Message, forUser?: string }
  /**
   * Ephemeral, never stored. `sentAt` (ms since the epoch, the publishing gateway's clock)
   * lets receiving gateways drop notices too old to mean anything; absent from gateways
   * older than it, whose notices carried a broker expiration instead.
   */
  | { t: 'typing', channelId: string, userId: string, kind: 'group' | 'direct', peerId?: string, sentAt?: number }
  /** `user:{userId}` gained a channel: the gateway binds `channel:{id}` before telling the sockets. */
  | { t: 'joined', userId: string, channel: ChannelSummary }
  /** `user:{userId}` left a channel: the gateway unbinds (refcounted) and tells the sockets. */
  | { t: 'left', userId: string, channelId: string }
  /** The worker refused a message the gateway had accepted (e.g. not a member). */
  | { t: 'rejected', userId: string, clientMsgId: string, error: ErrorBody }
