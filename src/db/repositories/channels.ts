/**
 * Channels and their members. A direct conversation between two users is one
 * channel whose `direct_key` is the sorted pair, so it is found, never duplicated.
 */
import { and, asc, count, eq, gte, sql, type Column, type SQL } from 'drizzle-orm'
import { channels, members } from '../../../drizzle/schema.js'
import type { ChannelSummary } from '../../contracts/protocol.js'
import { ClientError } from '../../errors.js'
import { hash32 } from '../../hash.js'
import type { Database } from '../client.js'
import type { WriteDeadline } from '../deadline.js'

export type ChannelsRepository = ReturnType<typeof createChannelsRepository>

/** The stable key of the direct channel between two users (order does not matter). */
export function directKey (a: string, b: string): string {
  return JSON.stringify(a < b ? [a, b] : [b, a])
}

/** The other user of a direct channel (the user themself for a note-to-self channel). */
export function peerOf (key: string, userId: string): string {
  const [a, b] = JSON.parse(key) as [string, string]
  return a === userId ? b : a
}

type ChannelRowLite = { id: string, kind: 'group' | 'direct', name: string, lastSeq: number, directKey: string | null }

export function toSummary (row: ChannelRowLite, userId: string): ChannelSummary {
  if (row.kind === 'direct' && row.directKey !== null) {
    const peerId = peerOf(row.directKey, userId)
    return { id: row.id, kind: 'direct', name: peerId, lastSeq: row.lastSeq, peerId }
  }
  return { id: row.id, kind: row.kind, name: row.name, lastSeq: row.lastSeq }
}

const summaryColumns = {
  id: channels.id,
  kind: channels.kind,
  name: channels.name,
  lastSeq: channels.lastSeq,
  directKey: channels.directKey
}

/**
 * `column = any($1::type[])`: the list is one bind parameter. inArray binds one per value,
 * and a statement takes at most 65,535: a create naming more users (MAX_CHANNEL_MEMBERS
 * allows 100,000) failed as INTERNAL.
 */
function isAnyOf (column: Column, values: string[], type: 'text' | 'uuid'): SQL {
  return sql`${column} = any(${sql.param(values)}::${sql.raw(type)}[])`
}

export function createChannelsRepository (db: Database) {
  return {
    /** Every channel the user belongs to, oldest first. */
    async listForUser (userId: string): Promise<ChannelSummary[]> {
      const rows = await db.select(summaryColumns)
        .from(members)
        .innerJoin(channels, eq(channels.id, members.channelId))
        .where(eq(members.userId, userId))
        .orderBy(asc(channels.createdAt), asc(channels.id))
      return rows.map((row) => toSummary(row, userId))
    },

    /**
     * Every channel of each user, oldest first; one entry per distinct user, in the given order.
     * @throws ClientError LIMIT_REACHED if they belong to more than `maxChannels` in all: one
     *   user can be in hundreds of thousands of direct channels, and an answer that big
     *   outlives its caller's timeout and may pass the broker's message size. Counted first
     *   (an index-only scan), so the refusal is cheap and comes in time.
     */
    async listForUsers (userIds: string[], maxChannels = Number.MAX_SAFE_INTEGER): Promise<Array<{ userId: string, channels: ChannelSummary[] }>> {
      const byUser = new Map(userIds.map((id) => [id, [] as ChannelSummary[]]))
      if (byUser.size === 0) return []
      const [total] = await db.select({ n: count() }).from(members).where(isAnyOf(members.userId, [...byUser.keys()], 'text'))
      if ((total?.n ?? 0) > maxChannels) {
        throw new ClientError('LIMIT_REACHED', `${byUser.size === 1 ? 'this user belongs' : `these ${byUser.size} users belong`} to ${total?.n} channels, more than one answer may list (${maxChannels}); ask for fewer users`)
      }
      const rows = await db.select({ ...summaryColumns, userId: members.userId })
        .from(members)
        .innerJoin(channels, eq(channels.id, members.channelId))
        .where(isAnyOf(members.userId, [...byUser.keys()], 'text'))
        .orderBy(asc(channels.createdAt), asc(channels.id))
      for (const row of rows) byUser.get(row.userId)?.push(toSummary(row, row.userId))
      return [...byUser].map(([userId, list]) => ({ userId, channels: list }))
    },

    /** lastSeq of the given channels, for those the user belongs to. */
    async seqsForUser (userId: string, channelIds: string[]): Promise<Record<string, number>> {
      if (channelIds.length === 0) return {}
      const rows = await db.select({ id: channels.id, lastSeq: channels.lastSeq })
        .from(members)
        .innerJoin(channels, eq(channels.id, members.channelId))
        .where(and(eq(members.userId, userId), isAnyOf(members.channelId, channelIds, 'uuid')))
      return Object.fromEntries(rows.map((r) => [r.id, r.lastSeq]))
    },

    /** The channel, if `userId` is a member of it. */
    async findForMember (channelId: string, userId: string, executor: Pick<Database, 'select'> = db): Promise<ChannelRowLite | undefined> {
      const [row] = await executor.select(summaryColumns)
        .from(members)
        .innerJoin(channels, eq(channels.id, members.channelId))
        .where(and(eq(members.channelId, channelId), eq(members.userId, userId)))
      return row
    },

    /** The direct channel between two users, if they have one. */
    async findDirect (a: string, b: string): Promise<ChannelRowLite | undefined> {
      const [row] = await db.select(summaryColumns).from(channels).where(eq(channels.directKey, directKey(a, b)))
      return row
    },

    /**
     * Creates a group whose members are the creator and `memberIds` (deduplicated).
     * @param deadline commit before it or not at all (src/db/deadline.ts)
     * @throws ClientError LIMIT_REACHED, creating nothing, if one of them already belongs
     *   to `maxGroupsPerUser` groups.
     */
    async createGroup (creatorId: string, name: string, memberIds: string[], maxGroupsPerUser: number, deadline?: WriteDeadline): Promise<{ channel: ChannelSummary, memberIds: string[] }> {
      const everyone = [...new Set([creatorId, ...memberIds])]
      const buckets = [...new Set(everyone.map(lockBucket))].sort((a, b) => a - b)
      return await db.transaction(async (tx) => {
        await deadline?.limit(tx)
        // Creates that name a common user run one after the other from here to commit, or
        // concurrent ones (on any worker) would all pass the count below. Locks are taken
        // per bucket of user ids, in order: at most 64 per create, and no deadlock.
        await tx.execute(sql`select pg_advisory_xact_lock(${GROUP_LOCK_CLASS}::int, v.b) from (values ${sql.join(buckets.map((b) => sql`(${b}::int)`), sql`, `)}) as v(b)`)
        const full = await tx.select({ userId: members.userId, groups: count() })
          .from(members)
          .innerJoin(channels, eq(channels.id, members.channelId))
          .where(and(isAnyOf(members.userId, everyone, 'text'), eq(channels.kind, 'group')))
          .groupBy(members.userId)
          .having(({ groups }) => gte(groups, maxGroupsPerUser))
        if (full.length > 0) throw limitReached(creatorId, full.map((f) => f.userId), maxGroupsPerUser)
        const [row] = await tx.insert(channels)
          .values({ kind: 'group', name, createdBy: creatorId })
          .returning(summaryColumns)
        if (row === undefined) throw new Error('insert into channels returned no row')
        // One array parameter, as above: 70,000 members in 1 s, against 8 s in chunks of rows.
        await tx.execute(sql`insert into ${members} (${sql.identifier(members.channelId.name)}, ${sql.identifier(members.userId.name)}) select ${row.id}::uuid, u from unnest(${sql.param(everyone)}::text[]) as u`)
        deadline?.commitOrThrow()
        return { channel: toSummary(row, creatorId), memberIds: everyone }
        // The count must see the creates that committed while this one waited for its
        // locks: a fresh snapshot per statement. A database whose default isolation is
        // repeatable read would count from a snapshot taken before the wait, and racing
        // creates would all pass it.
      }, { isolationLevel: 'read committed' })
    },

    /**
     * Removes the user from a group.
     * @param deadline commit before it or not at all (src/db/deadline.ts)
     * @throws ClientError FORBIDDEN if not a member, VALIDATION for a direct channel
     */
    async leave (channelId: string, userId: string, deadline?: WriteDeadline): Promise<void> {
      await db.transaction(async (tx) => {
        await deadline?.limit(tx)
        const channel = await this.findForMember(channelId, userId, tx)
        if (channel === undefined) throw new ClientError('FORBIDDEN', 'not a member of this channel')
        if (channel.kind === 'direct') throw new ClientError('VALIDATION', 'a direct conversation cannot be left')
        const gone = await tx.delete(members).where(and(eq(members.channelId, channelId), eq(members.userId, userId))).returning({ userId: members.userId })
        // A concurrent leave of the same membership won: only one of them is announced.
        if (gone.length === 0) throw new ClientError('FORBIDDEN', 'not a member of this channel')
        deadline?.commitOrThrow()
      }, { isolationLevel: 'read committed' })
    }
  }
}

function limitReached (creatorId: string, full: string[], max: number): ClientError {
  if (full.includes(creatorId)) {
    return new ClientError('LIMIT_REACHED', `you already belong to ${max} group channels, the most allowed; leave one first`)
  }
  const shown = full.slice(0, 5).map((id) => JSON.stringify(id)).join(', ')
  const more = full.length > 5 ? ` and ${full.length - 5} more` : ''
  return new ClientError('LIMIT_REACHED', `${full.length === 1 ? 'a member already belongs' : `${full.length} members already belong`} to ${max} group channels, the most allowed: ${shown}${more}; nothing was created`)
}

/** Advisory lock class of group memberships ('chat'), and the number of buckets of user ids. */
const GROUP_LOCK_CLASS = 0x63686174
const GROUP_LOCK_BUCKETS = 64

const lockBucket = (userId: string): number => hash32(userId) % GROUP_LOCK_BUCKETS
