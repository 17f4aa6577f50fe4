/**
 * Messages: batched, idempotent persistence with gapless per-channel seq, and history.
 */
import { and, asc, desc, eq, gt, lt, sql, type SQL } from 'drizzle-orm'
import { channels, messages } from '../../../drizzle/schema.js'
import type { SendCommand } from '../../contracts/envelopes.js'
import type { ChannelKind, Message } from '../../contracts/protocol.js'
import { ClientError, type ErrorBody } from '../../errors.js'
import type { Database } from '../client.js'
import { createChannelsRepository, directKey, peerOf } from './channels.js'

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

/** Rows of a raw statement. Drivers differ in the result's shape (postgres.js: an array), hence the cast. */
async function rows<T> (db: Database, query: SQL): Promise<T[]> {
  const result = await db.execute(query) as unknown as T[] | { rows: T[] }
  return Array.isArray(result) ? result : result.rows
}

export function createMessagesRepository (db: Database) {
  const channelsRepo = createChannelsRepository(db)

  return {
    /**
     * Persists a batch in one transaction: membership checks, idempotency on
     * (sender, clientMsgId), and gapless seq per channel. Returns one outcome per
     * command, in order.
     * @throws ConcurrentInsertError (retry), or a database error
     */
    async persistBatch (commands: SendCommand[]): Promise<PersistOutcome[]> {
      return await db.transaction(async (tx) => {
        const outcomes: Array<PersistOutcome | undefined> = new Array(commands.length)
        // The same (sender, clientMsgId) twice in one batch: only the first counts.
        const firstIndex = new Map<string, number>()
        const sameAs = new Map<number, number>()
        commands.forEach((c, i) => {
          const k = `${c.senderId}\n${c.clientMsgId}`
          const first = firstIndex.get(k)
          if (first === undefined) firstIndex.set(k, i)
          else sameAs.set(i, first)
        })
        const unique = [...firstIndex.values()]

        // 1. Already stored? One array parameter per column (unnest), not a 500-parameter
        // row list: the statement is the same for every batch (prepared once), and the
        // planner joins against the unique index instead of OR-ing 250 index probes.
        const existing = await rows<RawMessage & { kind: ChannelKind }>(tx, sql`
          select m.*, c.kind from unnest(${sql.param(unique.map((i) => commands[i]!.senderId))}::text[], ${sql.param(unique.map((i) => commands[i]!.clientMsgId))}::uuid[]) as k(sender_id, client_msg_id)
          join messages m on m.sender_id = k.sender_id and m.client_msg_id = k.client_msg_id
          join channels c on c.id = m.channel_id`)
        const stored = new Map(existing.map((e) => [`${e.sender_id}\n${e.client_msg_id}`, rawToMessage(e, e.kind)]))
        const fresh: number[] = []
        for (const i of unique) {
          const c = commands[i]!
          const message = stored.get(`${c.senderId}\n${c.clientMsgId}`)
          if (message !== undefined) outcomes[i] = { status: 'duplicate', message }
          else fresh.push(i)
        }

        // 2. Resolve targets: direct pairs get their channel; channel sends need membership.
        const target = new Map<number, { channelId: string, kind: ChannelKind, toUserId?: string }>()
        const pairs: Array<[string, string]> = []
        const channelSends: number[] = []
        for (const i of fresh) {
          const c = commands[i]!
          if (c.toUserId !== undefined) pairs.push([c.senderId, c.toUserId])
          else channelSends.push(i)
        }
        const directIds = await channelsRepo.ensureDirect(pairs, tx)
        for (const i of fresh) {
          const c = commands[i]!
          if (c.toUserId === undefined) continue
          target.set(i, { channelId: directIds.get(directKey(c.senderId, c.toUserId))!, kind: 'direct', toUserId: c.toUserId })
        }
        const memberships = await channelsRepo.memberships(channelSends.map((i) => ({ channelId: commands[i]!.channelId!, userId: commands[i]!.senderId })), tx)
        const member = new Map(memberships.map((m) => [`${m.channelId}\n${m.userId}`, m]))
        for (const i of channelSends) {
          const c = commands[i]!
          const m = member.get(`${c.channelId!}\n${c.senderId}`)
          if (m === undefined) {
            outcomes[i] = { status: 'rejected', error: new ClientError('FORBIDDEN', 'not a member of this channel').toJSON() }
          } else if (m.kind === 'direct' && m.directKey !== null) {
            target.set(i, { channelId: m.channelId, kind: 'direct', toUserId: peerOf(m.directKey, c.senderId) })
          } else {
            target.set(i, { channelId: m.channelId, kind: 'group' })
          }
        }

        // 3. Reserve seqs: lock the channels in id order (no deadlocks between workers), then bump.
        const perChannel = new Map<string, number[]>()
        for (const [i, t] of target) {
          const list = perChannel.get(t.channelId)
          if (list === undefined) perChannel.set(t.channelId, [i])
          else list.push(i)
        }
        if (perChannel.size > 0) {
          const ids = [...perChannel.keys()].sort()
          await tx.execute(sql`select id from channels where id = any(${sql.param(ids)}::uuid[]) order by id for update`)
          const bumped = await rows<{ id: string, last_seq: string | number }>(tx, sql`
            update channels c set last_seq = c.last_seq + k.n
            from unnest(${sql.param(ids)}::uuid[], ${sql.param(ids.map((id) => perChannel.get(id)!.length))}::bigint[]) as k(id, n)
            where c.id = k.id
            returning c.id, c.last_seq`)
          const cols = { channelId: [] as string[], seq: [] as number[], senderId: [] as string[], toUserId: [] as Array<string | null>, clientMsgId: [] as string[], content: [] as string[] }
          const order: number[] = []
          for (const { id, last_seq: lastSeq } of bumped) {
            const indexes = perChannel.get(id)!
            let seq = Number(lastSeq) - indexes.length
            for (const i of indexes) {
              const c = commands[i]!
              cols.channelId.push(id)
              cols.seq.push(++seq)
              cols.senderId.push(c.senderId)
              cols.toUserId.push(target.get(i)!.toUserId ?? null)
              cols.clientMsgId.push(c.clientMsgId)
              cols.content.push(c.content)
              order.push(i)
            }
          }
          const inserted = await rows<RawMessage>(tx, sql`
            insert into messages (channel_id, seq, sender_id, to_user_id, client_msg_id, content)
            select * from unnest(${sql.param(cols.channelId)}::uuid[], ${sql.param(cols.seq)}::bigint[], ${sql.param(cols.senderId)}::text[],
              ${sql.param(cols.toUserId)}::text[], ${sql.param(cols.clientMsgId)}::uuid[], ${sql.param(cols.content)}::text[])
            on conflict (sender_id, client_msg_id) do nothing
            returning *`)
          // Fewer rows: another transaction stored one of these first. Its seq would leave a gap; start over.
          if (inserted.length !== order.length) throw new ConcurrentInsertError('a message of this batch was stored concurrently')
          const byKey = new Map(inserted.map((r) => [`${r.sender_id}\n${r.client_msg_id}`, r]))
          for (const i of order) {
            const c = commands[i]!
            outcomes[i] = { status: 'stored', message: rawToMessage(byKey.get(`${c.senderId}\n${c.clientMsgId}`)!, target.get(i)!.kind) }
          }
        }

        for (const [i, first] of sameAs) {
          const o = outcomes[first]!
          outcomes[i] = o.status === 'stored' ? { status: 'duplicate', message: o.message } : o
        }
        return outcomes as PersistOutcome[]
      })
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
