/**
 * Channels and their members. A direct conversation between two users is one
 * channel whose `direct_key` is the sorted pair, so it is found, never duplicated.
 */
import { createHash, randomUUID } from 'node:crypto'
import { and, asc, count, eq, lt, sql, type Column, type SQL } from 'drizzle-orm'
import { channels, members, writeRequests } from '../../../drizzle/schema.js'
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
type Transaction = Parameters<Parameters<Database['transaction']>[0]>[0]

/** A write's idempotency key: the user's own request id, and what the request asked. */
export interface WriteRequest { requestId: string, fingerprint: string }

/** How long a request id is remembered: a client retrying later makes a new write. */
const REQUEST_ID_KEPT = sql`interval '1 day'`

/** Digest of a request's operation and arguments, to tell a retry from another request reusing its id. */
export function requestFingerprint (op: string, args: unknown): string {
  return createHash('sha256').update(JSON.stringify([op, args])).digest('base64url')
}

/**
 * Records `request` as done for `channelId` in `tx`, unless it was done before: then
 * returns the channel it was done for and writes nothing. A run of the same request still
 * in progress elsewhere is waited for (the primary key's lock), so two runs never both
 * write. Also forgets the user's requests older than REQUEST_ID_KEPT.
 * @throws ClientError VALIDATION when the id was used for another request
 */
async function claim (tx: Transaction, userId: string, request: WriteRequest, channelId: string): Promise<string | undefined> {
  await tx.delete(writeRequests).where(and(eq(writeRequests.userId, userId), lt(writeRequests.createdAt, sql`now() - ${REQUEST_ID_KEPT}`)))
  const claimed = await tx.insert(writeRequests)
    .values({ userId, requestId: request.requestId, fingerprint: request.fingerprint, channelId })
    .onConflictDoNothing()
    .returning({ channelId: writeRequests.channelId })
  if (claimed.length > 0) return undefined
  const [done] = await tx.select({ fingerprint: writeRequests.fingerprint, channelId: writeRequests.channelId })
    .from(writeRequests)
    .where(and(eq(writeRequests.userId, userId), eq(writeRequests.requestId, request.requestId)))
  if (done === undefined) throw new Error('write_requests: a conflicting row is not visible')
  if (done.fingerprint !== request.fingerprint) throw new ClientError('VALIDATION', 'requestId was already used for another request; use a new one for each request')
  return done.channelId
}

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
    /**
     * Every channel of the user, oldest first.
     * @throws ClientError LIMIT_REACHED if they belong to more than `maxChannels`: a user
     *   can be in hundreds of thousands of direct channels, and such an answer would
     *   outlive its caller's timeout and pass what one broker message may carry. Read with
     *   a limit of one more, so the refusal costs no more than the bound.
     */
    async listForUser (userId: string, maxChannels = Number.MAX_SAFE_INTEGER): Promise<ChannelSummary[]> {
      const rows = await db.select(summaryColumns)
        .from(members)
        .innerJoin(channels, eq(channels.id, members.channelId))
        .where(eq(members.userId, userId))
        .orderBy(asc(channels.createdAt), asc(channels.id))
        .limit(maxChannels + 1)
      if (rows.length > maxChannels) {
        throw new ClientError('LIMIT_REACHED', `this user belongs to more than ${maxChannels} channels, more than one answer may list`)
      }
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
     * @param request the creator's idempotency key: a create already done under it is not
     *   done again; its channel and current members are returned, `replayed`
     * @param maxGroupsPerUser counted apart for the groups a user created (and still
     *   belongs to) and for those others put them in, so nobody can fill the first count
     *   of someone else
     * @throws ClientError LIMIT_REACHED, creating nothing, if the creator already belongs
     *   to `maxGroupsPerUser` groups of their own, or a named member to that many groups
     *   others created; VALIDATION if the key was used for another request
     */
    async createGroup (creatorId: string, name: string, memberIds: string[], maxGroupsPerUser: number, deadline?: WriteDeadline, request?: WriteRequest): Promise<{ channel: ChannelSummary, memberIds: string[], replayed: boolean }> {
      const everyone = [...new Set([creatorId, ...memberIds])]
      const buckets = [...new Set(everyone.map(lockBucket))].sort((a, b) => a - b)
      const id = randomUUID()
      return await db.transaction(async (tx) => {
        await deadline?.limit(tx)
        // Before the group locks: a second run of this create waits here for the first,
        // holding nothing another create needs.
        const doneFor = request === undefined ? undefined : await claim(tx, creatorId, request, id)
        if (doneFor !== undefined) {
          const [row] = await tx.select(summaryColumns).from(channels).where(eq(channels.id, doneFor))
          if (row === undefined) throw new Error(`write_requests names channel ${doneFor}, which does not exist`)
          const current = await tx.select({ userId: members.userId }).from(members).where(eq(members.channelId, doneFor))
          return { channel: toSummary(row, creatorId), memberIds: current.map((m) => m.userId), replayed: true }
        }
        // Creates that name a common user run one after the other from here to commit, or
        // concurrent ones (on any worker) would all pass the count below. Locks are taken
        // per bucket of user ids, in order: at most 64 per create, and no deadlock.
        await tx.execute(sql`select pg_advisory_xact_lock(${GROUP_LOCK_CLASS}::int, v.b) from (values ${sql.join(buckets.map((b) => sql`(${b}::int)`), sql`, `)}) as v(b)`)
        // Two counts per user: the groups they created and the groups others put them in.
        // With one count, anyone could create groups naming a user and leave them, until
        // that user could create nothing of their own (a lockout); now that only fills the
        // second count, and the user's own creates still pass.
        const ownGroups = sql<number>`count(*) filter (where ${channels.createdBy} = ${members.userId})`.mapWith(Number)
        const addedGroups = sql<number>`count(*) filter (where ${channels.createdBy} <> ${members.userId})`.mapWith(Number)
        const counts = await tx.select({ userId: members.userId, own: ownGroups, added: addedGroups })
          .from(members)
          .innerJoin(channels, eq(channels.id, members.channelId))
          .where(and(isAnyOf(members.userId, everyone, 'text'), eq(channels.kind, 'group')))
          .groupBy(members.userId)
        const full = counts.filter((c) => c.userId === creatorId ? c.own >= maxGroupsPerUser : c.added >= maxGroupsPerUser)
        if (full.length > 0) throw limitReached(creatorId, full.map((f) => f.userId), maxGroupsPerUser)
        const [row] = await tx.insert(channels)
          .values({ id, kind: 'group', name, createdBy: creatorId })
          .returning(summaryColumns)
        if (row === undefined) throw new Error('insert into channels returned no row')
        // One array parameter, as above: 70,000 members in 1 s, against 8 s in chunks of rows.
        await tx.execute(sql`insert into ${members} (${sql.identifier(members.channelId.name)}, ${sql.identifier(members.userId.name)}) select ${row.id}::uuid, u from unnest(${sql.param(everyone)}::text[]) as u`)
        deadline?.commitOrThrow()
        return { channel: toSummary(row, creatorId), memberIds: everyone, replayed: false }
        // The count must see the creates that committed while this one waited for its
        // locks: a fresh snapshot per statement. A database whose default isolation is
        // repeatable read would count from a snapshot taken before the wait, and racing
        // creates would all pass it.
      }, { isolationLevel: 'read committed' })
    },

    /**
     * Removes the user from a group.
     * @param deadline commit before it or not at all (src/db/deadline.ts)
     * @param request the user's idempotency key: a leave already done under it succeeds
     *   again, `replayed`, without checking membership
     * @throws ClientError FORBIDDEN if not a member, VALIDATION for a direct channel or a
     *   key used for another request
     */
    async leave (channelId: string, userId: string, deadline?: WriteDeadline, request?: WriteRequest): Promise<{ replayed: boolean }> {
      return await db.transaction(async (tx) => {
        await deadline?.limit(tx)
        if (request !== undefined && await claim(tx, userId, request, channelId) !== undefined) return { replayed: true }
        const channel = await this.findForMember(channelId, userId, tx)
        if (channel === undefined) throw new ClientError('FORBIDDEN', 'not a member of this channel')
        if (channel.kind === 'direct') throw new ClientError('VALIDATION', 'a direct conversation cannot be left')
        const gone = await tx.delete(members).where(and(eq(members.channelId, channelId), eq(members.userId, userId))).returning({ userId: members.userId })
        // A concurrent leave of the same membership won: only one of them is announced.
        if (gone.length === 0) throw new ClientError('FORBIDDEN', 'not a member of this channel')
        deadline?.commitOrThrow()
        return { replayed: false }
      }, { isolationLevel: 'read committed' })
    }
  }
}

function limitReached (creatorId: string, full: string[], max: number): ClientError {
  if (full.includes(creatorId)) {
    return new ClientError('LIMIT_REACHED', `you already belong to ${max} group channels you created, the most allowed; leave one first`)
  }
  const shown = full.slice(0, 5).map((id) => JSON.stringify(id)).join(', ')
  const more = full.length > 5 ? ` and ${full.length - 5} more` : ''
  return new ClientError('LIMIT_REACHED', `${full.length === 1 ? 'a member already belongs' : `${full.length} members already belong`} to ${max} group channels created by others, the most allowed: ${shown}${more}; nothing was created`)
}

/** Advisory lock class of group memberships ('chat'), and the number of buckets of user ids. */
const GROUP_LOCK_CLASS = 0x63686174
const GROUP_LOCK_BUCKETS = 64

const lockBucket = (userId: string): number => hash32(userId) % GROUP_LOCK_BUCKETS
