/**
 * Messages: batched, idempotent persistence with gapless per-channel seq, and history.
 */
import { and, asc, desc, eq, gt, lt } from 'drizzle-orm'
import { messages } from '../../../drizzle/schema.js'
import type { SendCommand } from '../../contracts/envelopes.js'
import type { ChannelKind, Message } from '../../contracts/protocol.js'
import { ClientError, type ErrorBody } from '../../errors.js'
import { statementRunner, type Database } from '../client.js'
import { sqlState } from '../errors.js'
import { createChannelsRepository, directKey } from './channels.js'

export type MessagesRepository = ReturnType<typeof createMessagesRepository>

export type PersistOutcome =
  /** Stored now. */
  | { status: 'stored', message: Message }
  /** Stored earlier under the same (sender, clientMsgId): nothing new was written. */
  | { status: 'duplicate', message: Message }
  /** Refused for good (e.g. not a member); nothing was written. */
  | { status: 'rejected', error: ErrorBody }

/** Thrown when a concurrent transaction stored one of the batch's messages first; retry the batch. */
export class ConcurrentInsertError extends Error {
  readonly code = 'APP_CONCURRENT_INSERT'
}

/** A messages row as PostgreSQL returns it to a raw query (bigints may come back as strings); the query builder's rows are mapped to it. */
interface RawMessage {
  id: string | number
  channel_id: string
  seq: string | number
  sender_id: string
  to_user_id: string | null
  client_msg_id: string
  content: string
  created_at: Date | string
}

export function rawToMessage (row: RawMessage, kind: ChannelKind): Message {
  return {
    id: String(row.id),
    channelId: row.channel_id,
    kind,
    seq: Number(row.seq),
    senderId: row.sender_id,
    ...(row.to_user_id !== null ? { toUserId: row.to_user_id } : {}),
    content: row.content,
    clientMsgId: row.client_msg_id,
    createdAt: (row.created_at instanceof Date ? row.created_at : new Date(row.created_at)).toISOString()
  }
}

/** Raised by chat_persist_batch when a concurrent transaction stored one of the batch's messages first. */
const CONCURRENT_INSERT_SQLSTATE = 'CH001'

/** The worker's batch: parallel arrays, one element per message (see the migration). */
const PERSIST_BATCH = 'select * from chat_persist_batch($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[])'

export function createMessagesRepository (db: Database) {
  const channelsRepo = createChannelsRepository(db)
  const run = statementRunner(db)

  return {
    /**
     * Persists a batch in one transaction: membership checks, idempotency on
     * (sender, clientMsgId), and gapless seq per channel. Returns one outcome per
     * command, in order.
     * @throws ConcurrentInsertError (retry), or a database error
     */
    async persistBatch (commands: SendCommand[]): Promise<PersistOutcome[]> {
      // The same (sender, clientMsgId) twice in one batch: only the first counts.
      const firstIndex = new Map<string, number>()
      const sameAs = new Map<number, number>()
      // Keys as PostgreSQL returns them: a uuid comes back in lower case, whatever was sent.
      const keyOf = (senderId: string, clientMsgId: string) => `${senderId}\n${clientMsgId.toLowerCase()}`
      commands.forEach((c, i) => {
        const k = keyOf(c.senderId, c.clientMsgId)
        const first = firstIndex.get(k)
        if (first === undefined) firstIndex.set(k, i)
        else sameAs.set(i, first)
      })
      const unique = [...firstIndex.values()].map((i) => commands[i]!)
      // One statement, one round trip: migrations/0001_persist_batch.sql. Arrays, one per
      // column, so the statement is the same for every batch (prepared once per connection).
      let result: Array<RawMessage & { i: number | null, status: 'duplicate' | 'stored' | 'forbidden', kind: ChannelKind | null }>
      try {
        result = await run(PERSIST_BATCH, [
          unique.map((c) => c.senderId),
          unique.map((c) => c.clientMsgId),
          unique.map((c) => c.toUserId ?? null),
          unique.map((c) => c.toUserId === undefined ? c.channelId! : null),
          unique.map((c) => c.toUserId !== undefined ? directKey(c.senderId, c.toUserId) : null),
          unique.map((c) => c.content)
        ])
      } catch (err) {
        if (sqlState(err) === CONCURRENT_INSERT_SQLSTATE) throw new ConcurrentInsertError('a message of this batch was stored concurrently', { cause: err })
        throw err
      }
      const outcomes: PersistOutcome[] = new Array(commands.length)
      const positions = [...firstIndex.values()]
      const position = new Map(unique.map((c, p) => [keyOf(c.senderId, c.clientMsgId), p]))
      for (const r of result) {
        // New rows come back without a position: they are found by their idempotency key.
        const p = r.i !== null ? Number(r.i) - 1 : position.get(keyOf(r.sender_id, r.client_msg_id))
        if (p === undefined) throw new Error('chat_persist_batch returned a row that is not in the batch')
        outcomes[positions[p]!] = r.status === 'forbidden'
          ? { status: 'rejected', error: new ClientError('FORBIDDEN', 'not a member of this channel').toJSON() }
          : { status: r.status, message: rawToMessage(r, r.kind!) }
      }
      // A message stored by another transaction between the function's duplicate check and
      // its insert gets no row. The rest of the batch is committed; a retry finds them all
      // as duplicates and, being a retry, publishes their deliveries.
      if (positions.some((i) => outcomes[i] === undefined)) throw new ConcurrentInsertError('a message of this batch was stored concurrently')
      for (const [i, first] of sameAs) {
        const o = outcomes[first]!
        outcomes[i] = o.status === 'stored' ? { status: 'duplicate', message: o.message } : o
      }
      return outcomes
    },

    /**
     * A member's view of a channel (or of the direct conversation with `withUserId`),
     * oldest first.
     * @throws ClientError FORBIDDEN when not a member
     */
    async history (userId: string, q: { channelId?: string, withUserId?: string, afterSeq?: number, beforeSeq?: number, limit: number }): Promise<Message[]> {
      let channel
      if (q.channelId !== undefined) {
        channel = await channelsRepo.findForMember(q.channelId, userId)
        if (channel === undefined) throw new ClientError('FORBIDDEN', 'not a member of this channel')
      } else if (q.withUserId !== undefined) {
        channel = await channelsRepo.findDirect(userId, q.withUserId)
        if (channel === undefined) return []
      } else {
        throw new ClientError('VALIDATION', 'give channelId or withUserId')
      }
      const newestFirst = q.afterSeq === undefined
      const rows = await db.select().from(messages)
        .where(and(
          eq(messages.channelId, channel.id),
          q.afterSeq !== undefined ? gt(messages.seq, q.afterSeq) : undefined,
          q.beforeSeq !== undefined ? lt(messages.seq, q.beforeSeq) : undefined
        ))
        .orderBy(newestFirst ? desc(messages.seq) : asc(messages.seq))
        .limit(q.limit)
      if (newestFirst) rows.reverse()
      return rows.map((r) => rawToMessage({
        id: r.id, channel_id: r.channelId, seq: r.seq, sender_id: r.senderId, to_user_id: r.toUserId,
        client_msg_id: r.clientMsgId, content: r.content, created_at: r.createdAt
      }, channel.kind))
    }
  }
}
