/**
 * The repository layer, run twice: on PostgreSQL through postgres.js and on embedded
 * PGlite, with the same migrations.
 */
import { randomUUID } from 'node:crypto'
import { sql, type SQL } from 'drizzle-orm'
import t, { type Test } from 'tap'
import type { SendCommand } from '../../src/contracts/envelopes.js'
import { openDatabase, openEmbeddedDatabase, type Database, type DatabaseHandle } from '../../src/db/client.js'
import { createChannelsRepository, requestFingerprint } from '../../src/db/repositories/channels.js'
import { createMessagesRepository } from '../../src/db/repositories/messages.js'
import { createDatabase } from '../helpers/services.js'

const dm = (senderId: string, toUserId: string, content = 'hi', clientMsgId: string = randomUUID()): SendCommand =>
  ({ v: 1, senderId, toUserId, content, clientMsgId })
const post = (senderId: string, channelId: string, content = 'hi', clientMsgId: string = randomUUID()): SendCommand =>
  ({ v: 1, senderId, channelId, content, clientMsgId })

/** Rows of a raw query on either driver (postgres.js returns an array, PGlite `{ rows }`). */
async function rows<R> (db: Database, query: SQL): Promise<R[]> {
  const result = await db.execute(query) as unknown as R[] | { rows: R[] }
  return Array.isArray(result) ? result : result.rows
}
const count = async (db: Database, query: SQL) => Number((await rows<{ n: number | string }>(db, query))[0]?.n)

for (const backend of ['postgres', 'pglite'] as const) {
  t.test(backend, async (t) => {
    let handle: DatabaseHandle
    if (backend === 'postgres') handle = openDatabase({ url: await createDatabase(t), max: 4 })
    else handle = await openEmbeddedDatabase()
    t.teardown(() => handle.close())
    t.equal(handle.kind, backend)
    await suite(t, handle.db, backend === 'postgres')
  })
}

// The batch is prepared once per connection (one round trip per batch), unless the pool
// says not to (DB_PREPARE=false, for a pooler in transaction mode): then it still works.
t.test('postgres: the batch statement is prepared once per connection, or not at all when prepare is off', async (t) => {
  const url = await createDatabase(t)
  for (const prepare of [true, false]) {
    const handle = openDatabase({ url, max: 1, prepare })
    t.teardown(() => handle.close())
    const repo = createMessagesRepository(handle.db)
    for (let i = 0; i < 3; i++) {
      const [o] = await repo.persistBatch([dm('ann', 'ben', `prepare ${String(prepare)} ${i}`)])
      t.equal(o?.status, 'stored', `stored with prepare ${String(prepare)}`)
    }
    const held = await count(handle.db, sql`select count(*) as n from pg_prepared_statements where statement like '%chat_persist_batch%'`)
    t.equal(held, prepare ? 1 : 0, prepare ? 'one prepared statement for three batches' : 'none prepared')
    await handle.close()
  }
})

t.test('postgres: the group limit holds on a database whose default isolation is repeatable read', async (t) => {
  const url = await createDatabase(t)
  const admin = openDatabase({ url, max: 1 })
  t.teardown(() => admin.close())
  await admin.db.execute(sql.raw(`alter database "${new URL(url).pathname.slice(1)}" set default_transaction_isolation = 'repeatable read'`))
  const handle = openDatabase({ url, max: 8 })
  t.teardown(() => handle.close())
  t.equal(await count(handle.db, sql`select (current_setting('default_transaction_isolation') = 'repeatable read')::int as n`), 1, 'the pool runs on repeatable read')
  const channels = createChannelsRepository(handle.db)
  const cap = 3
  const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => channels.createGroup(`racer${i}`, `race ${i}`, [`x${i}`, 'target'], cap)))
  t.equal(results.filter((r) => r.status === 'fulfilled').length, cap, `exactly ${cap} of 12 concurrent creates succeed`)
  t.equal(await count(handle.db, sql`select count(*) as n from members m join channels c on c.id = m.channel_id where m.user_id = 'target' and c.kind = 'group'`), cap, 'the target is in exactly the limit')
})

/** `concurrent`: the database serves several connections at once (PGlite serves one). */
async function suite (t: Test, db: Database, concurrent: boolean): Promise<void> {
  const channels = createChannelsRepository(db)
  const messages = createMessagesRepository(db)

  t.test('direct messages share one stable channel per pair, with gapless seq', async (t) => {
    const [a, b] = await messages.persistBatch([dm('ann', 'ben', 'one'), dm('ben', 'ann', 'two')])
    if (a?.status !== 'stored' || b?.status !== 'stored') return t.fail('not stored')
    t.equal(a.message.channelId, b.message.channelId, 'both directions use the same channel')
    t.same([a.message.seq, b.message.seq], [1, 2])
    t.equal(a.message.kind, 'direct')
    t.equal(a.message.toUserId, 'ben')
    const [c] = await messages.persistBatch([dm('ann', 'ben', 'three')])
    t.equal(c?.status === 'stored' && c.message.seq, 3)
    t.same(await channels.listForUser('ben'), [{ id: a.message.channelId, kind: 'direct', name: 'ann', lastSeq: 3, peerId: 'ann' }])
  })

  t.test('a clientMsgId is stored once per sender, across and within batches', async (t) => {
    const id: string = randomUUID()
    const [first] = await messages.persistBatch([dm('cat', 'dan', 'x', id)])
    const again = await messages.persistBatch([dm('cat', 'dan', 'x', id), dm('cat', 'dan', 'x', id)])
    t.equal(first?.status, 'stored')
    t.same(again.map((o) => o.status), ['duplicate', 'duplicate'])
    t.equal(again[0]?.status === 'duplicate' && again[0].message.id, first?.status === 'stored' && first.message.id)
    const other = randomUUID()
    const inOne = await messages.persistBatch([dm('cat', 'dan', 'y', other), dm('cat', 'dan', 'y', other)])
    t.same(inOne.map((o) => o.status), ['stored', 'duplicate'])
    t.equal(await count(db, sql`select count(*) as n from messages where sender_id = 'cat'`), 2)
    // A uuid in capitals (valid input) is the same key as in lower case, as PostgreSQL compares them.
    const upper = randomUUID()
    const mixed = await messages.persistBatch([dm('cat', 'dan', 'u', upper.toUpperCase()), dm('cat', 'dan', 'u', upper)])
    t.same(mixed.map((o) => o.status), ['stored', 'duplicate'], 'a capitalised clientMsgId is stored, once')
    const [retried] = await messages.persistBatch([dm('cat', 'dan', 'u', upper.toUpperCase())])
    t.equal(retried?.status, 'duplicate', 'and its retry is a duplicate')
    t.equal(await count(db, sql`select count(*) as n from messages where sender_id = 'cat'`), 3)
    const [fromDan] = await messages.persistBatch([dm('dan', 'cat', 'z', id)])
    t.equal(fromDan?.status, 'stored', 'the same id from another sender is another message')
  })

  t.test('only members may post to a group; refusals store nothing', async (t) => {
    const { channel, memberIds } = await channels.createGroup('eve', 'ops', ['fay', 'gus', 'fay'], 1000)
    t.same([...memberIds].sort(), ['eve', 'fay', 'gus'])
    const out = await messages.persistBatch([post('fay', channel.id, 'ok'), post('mallory', channel.id, 'let me in'), post('eve', randomUUID(), 'nowhere')])
    t.equal(out[0]?.status, 'stored')
    t.same(out[1], { status: 'rejected', error: { code: 'FORBIDDEN', message: 'not a member of this channel' } })
    t.equal(out[2]?.status, 'rejected')
    t.equal(await count(db, sql`select count(*) as n from messages where channel_id = ${channel.id}`), 1)
    t.equal(await count(db, sql`select last_seq as n from channels where id = ${channel.id}`), 1, 'a refusal consumes no seq')
  })

  t.test('a user belongs to at most maxGroupsPerUser groups they created and as many created by others: a create past either is refused and creates nothing', async (t) => {
    const cap = 3
    await messages.persistBatch([dm('quin', 'rex'), dm('quin', 'sol')]) // direct channels do not count
    const own = []
    for (let i = 0; i < cap; i++) own.push((await channels.createGroup('quin', `g${i}`, [], cap)).channel)
    await t.rejects(channels.createGroup('quin', 'one too many', ['rex'], cap), { code: 'LIMIT_REACHED', message: /you already belong to 3 group channels you created/ })
    const added = []
    for (let i = 0; i < cap; i++) added.push((await channels.createGroup(`adder${i}`, `a${i}`, ['quin'], cap)).channel)
    t.equal((await channels.listForUser('quin')).filter((c) => c.kind === 'group').length, 2 * cap, 'others\' groups count apart from quin\'s own')
    const before = await count(db, sql`select count(*) as n from channels`)
    await t.rejects(channels.createGroup('rex', 'with quin', ['sol', 'quin'], cap), { code: 'LIMIT_REACHED', message: /a member already belongs to 3 group channels created by others.*"quin"; nothing was created/ })
    t.equal(await count(db, sql`select count(*) as n from channels`), before, 'no channel row was created')
    t.equal(await count(db, sql`select count(*) as n from members where user_id in ('rex', 'sol') and channel_id in (select id from channels where kind = 'group')`), 0, 'no membership was added')
    await channels.leave(added[0]!.id, 'quin')
    const { memberIds } = await channels.createGroup('rex', 'with quin', ['quin'], cap)
    t.same([...memberIds].sort(), ['quin', 'rex'], 'after leaving one, quin can be added again')
    await t.rejects(channels.createGroup('quin', 'still too many', [], cap), { code: 'LIMIT_REACHED' }, 'which frees none of quin\'s own')
    await channels.leave(own[0]!.id, 'quin')
    t.equal((await channels.createGroup('quin', 'mine again', [], cap)).replayed, false, 'leaving one of its own does')
  })

  t.test('groups others create naming a user and then leave cannot stop that user creating groups (no lockout)', async (t) => {
    const cap = 2
    for (let i = 0; i < cap; i++) {
      const { channel } = await channels.createGroup('mal', `junk ${i}`, ['vic'], cap)
      await channels.leave(channel.id, 'mal')
    }
    await t.rejects(channels.createGroup('mal', 'one more', ['vic'], cap), { code: 'LIMIT_REACHED', message: /"vic"/ }, 'the victim cannot be put in more')
    const { memberIds } = await channels.createGroup('vic', 'mine', ['pal'], cap)
    t.same([...memberIds].sort(), ['pal', 'vic'], 'but creates groups of its own, with others in them')
  })

  t.test('creates racing to add the same user stop at the limit, with no overshoot', { skip: !concurrent && 'one connection only' }, async (t) => {
    const cap = 3
    // Several connections at once, each create naming the target among others.
    const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => channels.createGroup(`racer${i}`, `race ${i}`, [`x${i}`, 'target', `y${i}`], cap)))
    const ok = results.filter((r) => r.status === 'fulfilled').length
    t.equal(ok, cap, `exactly ${cap} of 12 concurrent creates succeed`)
    t.ok(results.every((r) => r.status === 'fulfilled' || (r.reason as { code?: string }).code === 'LIMIT_REACHED'), 'the rest are LIMIT_REACHED')
    t.equal(await count(db, sql`select count(*) as n from members m join channels c on c.id = m.channel_id where m.user_id = 'target' and c.kind = 'group'`), cap, 'the target is in exactly the limit')
  })

  t.test('concurrent batches on one channel keep seq gapless and unique', async (t) => {
    const { channel } = await channels.createGroup('hal', 'busy', ['ivy'], 1000)
    const batches = Array.from({ length: 8 }, (_, i) => Array.from({ length: 25 }, (_, j) => post(j % 2 === 0 ? 'hal' : 'ivy', channel.id, `${i}-${j}`)))
    await Promise.all(batches.map((b) => messages.persistBatch(b)))
    const seqs = await rows<{ seq: number | string }>(db, sql`select seq from messages where channel_id = ${channel.id} order by seq`)
    t.same(seqs.map((r) => Number(r.seq)), Array.from({ length: 200 }, (_, i) => i + 1))
  })

  t.test('the same message racing in two transactions is stored once without a seq gap', async (t) => {
    const { channel } = await channels.createGroup('jo', 'race', [], 1000)
    const id: string = randomUUID()
    const batchA = () => messages.persistBatch([post('jo', channel.id, 'a'), post('jo', channel.id, 'same', id)])
    const batchB = () => messages.persistBatch([post('jo', channel.id, 'same', id), post('jo', channel.id, 'b')])
    const attempts = await Promise.allSettled([batchA(), batchB()])
    // A loser either saw the winner's row (duplicate) or must retry (ConcurrentInsertError), as the worker does.
    for (const a of attempts) if (a.status === 'rejected') t.equal((a.reason as { code?: string }).code, 'APP_CONCURRENT_INSERT')
    if (attempts[0]?.status === 'rejected') await batchA()
    if (attempts[1]?.status === 'rejected') await batchB()
    const stored = await rows<{ seq: number | string, client_msg_id: string }>(db, sql`select seq, client_msg_id from messages where channel_id = ${channel.id} order by seq`)
    t.equal(stored.filter((r) => r.client_msg_id === id).length, 1, 'stored once')
    t.same(stored.map((r) => Number(r.seq)), stored.map((_, i) => i + 1), 'no gap')
  })

  t.test('a message stored first by a concurrent transaction: the whole batch is refused for a retry and writes nothing', { skip: !concurrent && 'one connection only' }, async (t) => {
    const { channel } = await channels.createGroup('pat', 'race-held', [], 1000)
    const id: string = randomUUID()
    let release!: () => void
    const held = new Promise<void>((resolve) => { release = resolve })
    let stored!: () => void
    const storedFirst = new Promise<void>((resolve) => { stored = resolve })
    // Stores `id` and keeps its transaction open: the row is invisible to the racing batch.
    const holder = db.transaction(async (tx) => {
      await createMessagesRepository(tx as unknown as Database).persistBatch([post('pat', channel.id, 'first', id)])
      stored()
      await held
    })
    await storedFirst
    const racing = messages.persistBatch([post('pat', channel.id, 'other'), post('pat', channel.id, 'first', id)])
    let racingSettled = false
    racing.then(() => { racingSettled = true }, () => { racingSettled = true })
    // The racing batch is past its duplicate check once it waits for the holder's channel lock.
    // Waited for, not for 200 polls: on a busy machine those could run out first, and the
    // holder then committed before the racing batch got there (it found a duplicate instead).
    const deadline = Date.now() + 15_000
    while (!racingSettled && await count(db, sql`select count(*) as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`) === 0) {
      if (Date.now() > deadline) throw new Error('the racing batch neither waited for the channel lock nor finished within 15 s')
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    release()
    await holder
    await t.rejects(racing, { code: 'APP_CONCURRENT_INSERT' }, 'refused for a retry')
    t.equal(await count(db, sql`select count(*) as n from messages where channel_id = ${channel.id}`), 1, 'nothing of the refused batch was written')
    t.equal(await count(db, sql`select last_seq as n from channels where id = ${channel.id}`), 1, 'no seq consumed')
    const retried = await messages.persistBatch([post('pat', channel.id, 'other'), post('pat', channel.id, 'first', id)])
    t.same(retried.map((o) => o.status), ['stored', 'duplicate'], 'the retry stores the rest and finds the first')
    const seqs = await rows<{ seq: number | string }>(db, sql`select seq from messages where channel_id = ${channel.id} order by seq`)
    t.same(seqs.map((r) => Number(r.seq)), [1, 2], 'no gap')
  })

  t.test('history: members only, oldest first, afterSeq / beforeSeq / latest', async (t) => {
    const { channel } = await channels.createGroup('kim', 'log', ['lou'], 1000)
    for (let i = 1; i <= 12; i++) await messages.persistBatch([post('kim', channel.id, `m${i}`)])
    const after = await messages.history('lou', { channelId: channel.id, afterSeq: 9, limit: 50 })
    t.same(after.map((m) => m.content), ['m10', 'm11', 'm12'])
    t.same((await messages.history('lou', { channelId: channel.id, afterSeq: 0, limit: 5 })).map((m) => m.seq), [1, 2, 3, 4, 5])
    t.same((await messages.history('lou', { channelId: channel.id, limit: 3 })).map((m) => m.seq), [10, 11, 12])
    t.same((await messages.history('lou', { channelId: channel.id, beforeSeq: 4, limit: 10 })).map((m) => m.seq), [1, 2, 3])
    await t.rejects(messages.history('mallory', { channelId: channel.id, limit: 10 }), { code: 'FORBIDDEN' })
    t.same(await messages.history('kim', { withUserId: 'nobody-yet', limit: 10 }), [], 'no conversation yet: empty')
  })

  t.test('leaving a group removes the membership; a direct channel cannot be left', async (t) => {
    const { channel } = await channels.createGroup('max', 'temp', ['ned'], 1000)
    await channels.leave(channel.id, 'ned')
    t.notOk((await channels.listForUser('ned')).some((c) => c.id === channel.id))
    await t.rejects(channels.leave(channel.id, 'ned'), { code: 'FORBIDDEN' })
    const [d] = await messages.persistBatch([dm('max', 'ned')])
    if (d?.status !== 'stored') return t.fail('dm not stored')
    await t.rejects(channels.leave(d.message.channelId, 'ned'), { code: 'VALIDATION' })
  })

  t.test('a create or leave run again under its request id does nothing new and answers what the first did', async (t) => {
    const key = (op: string, args: unknown) => ({ requestId: randomUUID(), fingerprint: requestFingerprint(op, args) })
    const create = key('channel.create', ['again', ['rid-b', 'rid-c']])
    const first = await channels.createGroup('rid-a', 'again', ['rid-b', 'rid-c'], 1000, undefined, create)
    const second = await channels.createGroup('rid-a', 'again', ['rid-b', 'rid-c'], 1000, undefined, create)
    t.equal(first.replayed, false)
    t.equal(second.replayed, true, 'the second run is a replay')
    t.equal(second.channel.id, first.channel.id, 'the same channel is answered')
    t.same([...second.memberIds].sort(), ['rid-a', 'rid-b', 'rid-c'], 'with its current members, to announce again')
    t.equal(await count(db, sql`select count(*) as n from channels where created_by = 'rid-a'`), 1, 'one channel')
    // Another user's request with the same id is theirs: ids are per user.
    const other = await channels.createGroup('rid-z', 'again', ['rid-b', 'rid-c'], 1000, undefined, create)
    t.equal(other.replayed, false, 'the same id from another user is a request of its own')
    t.not(other.channel.id, first.channel.id)
    // The same id for a different request is refused and changes nothing.
    await t.rejects(channels.createGroup('rid-a', 'other name', [], 1000, undefined, { requestId: create.requestId, fingerprint: requestFingerprint('channel.create', ['other name', []]) }), { code: 'VALIDATION', message: /requestId was already used/ })
    t.equal(await count(db, sql`select count(*) as n from channels where created_by = 'rid-a'`), 1)

    const leave = key('channel.leave', [first.channel.id])
    t.same(await channels.leave(first.channel.id, 'rid-b', undefined, leave), { replayed: false })
    t.same(await channels.leave(first.channel.id, 'rid-b', undefined, leave), { replayed: true }, 'a leave done answers ok again')
    await t.rejects(channels.leave(first.channel.id, 'rid-b', undefined, key('channel.leave', [first.channel.id])), { code: 'FORBIDDEN' }, 'a new leave of a channel left is refused')
    const replay = await channels.createGroup('rid-a', 'again', ['rid-b', 'rid-c'], 1000, undefined, create)
    t.same([...replay.memberIds].sort(), ['rid-a', 'rid-c'], 'a replay names the members as they are now')

    // A refused write keeps no key: once the cause is gone, the same request is done.
    const refused = key('channel.create', ['full', []])
    await channels.createGroup('rid-full', 'first', [], 1)
    await t.rejects(channels.createGroup('rid-full', 'full', [], 1, undefined, refused), { code: 'LIMIT_REACHED' })
    t.equal((await channels.createGroup('rid-full', 'full', [], 2, undefined, refused)).replayed, false, 'the key of a refused create is free')
  })

  t.test('the same create racing on two connections is done once', { skip: !concurrent && 'one connection only' }, async (t) => {
    const request = { requestId: randomUUID(), fingerprint: requestFingerprint('channel.create', ['race', ['rr-b']]) }
    const results = await Promise.all(Array.from({ length: 4 }, () => channels.createGroup('rr-a', 'race', ['rr-b'], 1000, undefined, request)))
    t.equal(new Set(results.map((r) => r.channel.id)).size, 1, 'every run answers the same channel')
    t.equal(results.filter((r) => !r.replayed).length, 1, 'one run created it')
    t.equal(await count(db, sql`select count(*) as n from channels where created_by = 'rr-a'`), 1)
  })
}
