/**
 * Messages: batched, idempotent persistence with gapless per-channel seq, and history.
 */
import { and, asc, desc, eq, gt, inArray, lt, sql } from 'drizzle-orm'
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

type Row = typeof messages.$inferSelect

export function toMessage (row: Row, kind: ChannelKind): Message {
  return {
    id: String(row.id),
    channelId: row.channelId,
    kind,
    seq: row.seq,
    senderId: row.senderId,
    ...(row.toUserId !== null ? { toUserId: row.toUserId } : {}),
    content: row.content,
    clientMsgId: row.clientMsgId,
    createdAt: row.createdAt.toISOString()
  }
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

        // 1. Already stored?
        const list = sql.join(unique.map((i) => sql`(${commands[i]!.senderId}::text, ${commands[i]!.clientMsgId}::uuid)`), sql`, `)
        const existing = await tx.select({ row: messages, kind: channels.kind })
          .from(messages)
          .innerJoin(channels, eq(channels.id, messages.channelId))
          .where(sql`(${messages.senderId}, ${messages.clientMsgId}) in (${list})`)
        const stored = new Map(existing.map((e) => [`${e.row.senderId}\n${e.row.clientMsgId}`, toMessage(e.row, e.kind)]))
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
          const ids = [...perChannel.keys()]
          await tx.select({ id: channels.id }).from(channels).where(inArray(channels.id, ids)).orderBy(asc(channels.id)).for('update')
          const bump = sql.join(ids.map((id) => sql`when ${id}::uuid then ${perChannel.get(id)!.length}::bigint`), sql` `)
          const bumped = await tx.update(channels)
            .set({ lastSeq: sql`${channels.lastSeq} + (case ${channels.id} ${bump} end)` })
            .where(inArray(channels.id, ids))
            .returning({ id: channels.id, lastSeq: channels.lastSeq })
          const values: Array<typeof messages.$inferInsert> = []
          const order: number[] = []
          for (const { id, lastSeq } of bumped) {
            const indexes = perChannel.get(id)!
            let seq = lastSeq - indexes.length
            for (const i of indexes) {
              const c = commands[i]!
              const t = target.get(i)!
              values.push({ channelId: id, seq: ++seq, senderId: c.senderId, toUserId: t.toUserId ?? null, clientMsgId: c.clientMsgId, content: c.content })
              order.push(i)
            }
          }
          const inserted = await tx.insert(messages).values(values)
            .onConflictDoNothing({ target: [messages.senderId, messages.clientMsgId] })
            .returning()
          // Fewer rows: another transaction stored one of these first. Its seq would leave a gap; start over.
          if (inserted.length !== values.length) throw new ConcurrentInsertError('a message of this batch was stored concurrently')
          const byKey = new Map(inserted.map((r) => [`${r.senderId}\n${r.clientMsgId}`, r]))
          for (const i of order) {
            const c = commands[i]!
            outcomes[i] = { status: 'stored', message: toMessage(byKey.get(`${c.senderId}\n${c.clientMsgId}`)!, target.get(i)!.kind) }
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
      return rows.map((r) => toMessage(r, channel.kind))
    }
  }
}
