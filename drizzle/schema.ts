/**
 * The chat's data model. drizzle-kit generates ../migrations from this file;
 * the worker (never the gateway) reads and writes it through src/db.
 */
import { sql } from 'drizzle-orm'
import { bigint, check, index, pgTable, primaryKey, text, timestamp, unique, uuid } from 'drizzle-orm/pg-core'

export const channels = pgTable('channels', {
  id: uuid('id').primaryKey().defaultRandom(),
  kind: text('kind', { enum: ['group', 'direct'] }).notNull(),
  /** Group name; empty for direct channels (clients show the peer instead). */
  name: text('name').notNull().default(''),
  /**
   * The two user ids of a direct channel, sorted and JSON-encoded, so one pair of
   * users always has exactly one direct channel. NULL for groups.
   */
  directKey: text('direct_key').unique('channels_direct_key_key'),
  createdBy: text('created_by').notNull(),
  /** Highest seq handed out in this channel; bumped in the same transaction as the insert. */
  lastSeq: bigint('last_seq', { mode: 'number' }).notNull().default(0),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow()
}, (t) => [
  check('channels_kind_check', sql`${t.kind} in ('group', 'direct')`),
  check('channels_direct_key_check', sql`(${t.kind} = 'direct') = (${t.directKey} is not null)`)
])

export const members = pgTable('members', {
  channelId: uuid('channel_id').notNull().references(() => channels.id, { onDelete: 'cascade' }),
  userId: text('user_id').notNull(),
  joinedAt: timestamp('joined_at', { withTimezone: true }).notNull().defaultNow()
}, (t) => [
  primaryKey({ name: 'members_pkey', columns: [t.channelId, t.userId] }),
  index('members_user_id_idx').on(t.userId)
])

export const messages = pgTable('messages', {
  id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  channelId: uuid('channel_id').notNull().references(() => channels.id, { onDelete: 'cascade' }),
  /** Position in the channel, 1, 2, 3… without gaps: clients resume from the last seq they saw. */
  seq: bigint('seq', { mode: 'number' }).notNull(),
  /** Always the JWT `sub` of the sending socket, never a client-supplied field. */
  senderId: text('sender_id').notNull(),
  /** Set for direct messages only. */
  toUserId: text('to_user_id'),
  /** The sender's idempotency key: a retried send stores nothing new. */
  clientMsgId: uuid('client_msg_id').notNull(),
  content: text('content').notNull(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow()
}, (t) => [
  unique('messages_sender_client_msg_id_key').on(t.senderId, t.clientMsgId),
  unique('messages_channel_seq_key').on(t.channelId, t.seq)
])

/**
 * Channel creates and leaves already done, by their request id: a request run again (the
 * broker handed it back after the worker lost its connection mid-write, or the client
 * retried after UNAVAILABLE with the same requestId) answers what the first run did
 * instead of doing it twice. Written in the same transaction as the write, so a write that
 * rolled back leaves no row. A user's rows older than a day are deleted at their next write.
 */
export const writeRequests = pgTable('write_requests', {
  userId: text('user_id').notNull(),
  requestId: uuid('request_id').notNull(),
  /** Digest of the request's operation and arguments: the same id sent with another request is refused. */
  fingerprint: text('fingerprint').notNull(),
  /** The channel created or left. */
  channelId: uuid('channel_id').notNull(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow()
}, (t) => [
  primaryKey({ name: 'write_requests_pkey', columns: [t.userId, t.requestId] })
])

export type ChannelRow = typeof channels.$inferSelect
export type MessageRow = typeof messages.$inferSelect
