/**
 * Client protocol v1: the Socket.IO events between clients and gateways.
 * Payload schemas are values (TypeBox); their types come from them. docs/PROTOCOL.md
 * describes the same events for people.
 */
import { Type, type Static } from '@sinclair/typebox'
import type { ErrorAck } from '../errors.js'
import { ChannelIdSchema, UserIdSchema, UuidSchema } from './ids.js'

/** Content: any well-formed text except control characters other than tab and newlines. */
export const ContentSchema = Type.String({ minLength: 1, maxLength: 1_000_000, format: 'chat-text' })

export const MessageSendSchema = Type.Object({
  clientMsgId: UuidSchema,
  content: ContentSchema,
  toUserId: Type.Optional(UserIdSchema),
  channelId: Type.Optional(ChannelIdSchema)
}, { additionalProperties: false })

export const ChannelCreateSchema = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 100, format: 'chat-text' }),
  memberIds: Type.Array(UserIdSchema, { maxItems: 100_000 }),
  /** Idempotency key: a retry with the same id creates nothing new and answers the same channel. */
  requestId: Type.Optional(UuidSchema)
}, { additionalProperties: false })

export const ChannelLeaveSchema = Type.Object({
  channelId: ChannelIdSchema,
  /** Idempotency key: a retry of a leave that was done answers ok again. */
  requestId: Type.Optional(UuidSchema)
}, { additionalProperties: false })

export const HistoryFetchSchema = Type.Object({
  channelId: Type.Optional(ChannelIdSchema),
  withUserId: Type.Optional(UserIdSchema),
  /** Messages with seq > afterSeq, oldest first. */
  afterSeq: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  /** Messages with seq < beforeSeq (the newest of them), still returned oldest first. */
  beforeSeq: Type.Optional(Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 }))
}, { additionalProperties: false })

export const ChannelsListSchema = Type.Object({}, { additionalProperties: false })

export const TypingSchema = Type.Object({
  channelId: ChannelIdSchema
}, { additionalProperties: false })

export type MessageSendPayload = Static<typeof MessageSendSchema>
export type ChannelCreatePayload = Static<typeof ChannelCreateSchema>
export type ChannelLeavePayload = Static<typeof ChannelLeaveSchema>
export type HistoryFetchPayload = Static<typeof HistoryFetchSchema>
export type TypingPayload = Static<typeof TypingSchema>

export type ChannelKind = 'group' | 'direct'

/** A stored message, as every member's sockets receive it. */
export interface Message {
  /** Server id (a decimal string); unique across channels. */
  id: string
  channelId: string
  kind: ChannelKind
  /** Position in the channel: 1, 2, 3… without gaps. */
  seq: number
  senderId: string
  /** Direct messages only. */
  toUserId?: string
  content: string
  clientMsgId: string
  /** ISO 8601. */
  createdAt: string
}

export interface ChannelSummary {
  id: string
  kind: ChannelKind
  /** The group's name; for a direct channel, the other user's id. */
  name: string
  /** The highest seq stored in the channel (0 when empty). */
  lastSeq: number
  /** Direct channels only: the other user. */
  peerId?: string
}

export type Ack<T extends object = Record<never, never>> = ({ ok: true } & T) | ErrorAck

export interface SendResult { clientMsgId: string }
export interface CreateResult { channelId: string }
export interface HistoryResult { messages: Message[] }
export interface ListResult { channels: ChannelSummary[] }

type Handler<R extends object> = (payload: unknown, ack?: (res: Ack<R>) => void) => void

/** Client → server. Payloads are `unknown` on purpose: they are validated before use. */
export interface ClientToServerEvents {
  'message:send': Handler<SendResult>
  'channel:create': Handler<CreateResult>
  'channel:leave': Handler<Record<never, never>>
  'history:fetch': Handler<HistoryResult>
  'channels:list': Handler<ListResult>
  'typing': Handler<Record<never, never>>
}

export interface SessionReady {
  userId: string
  serverId: string
  channels: ChannelSummary[]
}

/** Server → client. */
export interface ServerToClientEvents {
  'session:ready': (ready: SessionReady) => void
  'message:new': (message: Message) => void
  'message:rejected': (rejection: { clientMsgId: string, error: ErrorAck['error'] }) => void
  'channel:joined': (joined: { channel: ChannelSummary }) => void
  'channel:left': (left: { channelId: string }) => void
  'typing': (typing: { channelId: string, userId: string }) => void
  /**
   * Live delivery to this socket may have missed messages although the socket stayed
   * connected (BROKER_RECONNECTED: the gateway lost its broker connection and has
   * re-bound every key; DELIVERIES_DROPPED: the gateway fell so far behind that the
   * broker dropped deliveries queued for it): catch up from history as after a
   * session:ready.
   */
  'session:resync': (resync: { reason: 'BROKER_RECONNECTED' | 'DELIVERIES_DROPPED' }) => void
  /**
   * The server ends this socket on purpose. TOKEN_EXPIRED: at once, reconnect with a
   * new token. DRAINING: the server is shutting down and disconnects the socket after
   * reconnectInMs; reconnect (elsewhere) then, or earlier.
   */
  'session:end': (end: { code: string, message: string, reconnectInMs?: number }) => void
}
