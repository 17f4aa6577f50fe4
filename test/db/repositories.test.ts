import { randomUUID } from 'node:crypto'
import t from 'tap'
import type { SendCommand } from '../../src/contracts/envelopes.js'
import { openDatabase } from '../../src/db/client.js'
import { createChannelsRepository } from '../../src/db/repositories/channels.js'
import { createMessagesRepository } from '../../src/db/repositories/messages.js'
import { createDatabase, sqlClient } from '../helpers/services.js'

const url = await createDatabase(t)
const handle = openDatabase({ url, max: 4 })
t.teardown(() => handle.close())
const sql = sqlClient(t, url)
const channels = createChannelsRepository(handle.db)
const messages = createMessagesRepository(handle.db)

const dm = (senderId: string, toUserId: string, content = 'hi', clientMsgId: string = randomUUID()): SendCommand =>
  ({ v: 1, senderId, toUserId, content, clientMsgId })
const post = (senderId: string, channelId: string, content = 'hi', clientMsgId: string = randomUUID()): SendCommand =>
  ({ v: 1, senderId, channelId, content, clientMsgId })

t.test('direct messages share one stable channel per pair, with gapless seq', async (t) => {
  const [a, b] = await messages.persistBatch([dm('ann', 'ben', 'one'), dm('ben', 'ann', 'two')])
  t.equal(a?.status, 'stored')
  t.equal(b?.status, 'stored')
  if (a?.status !== 'stored' || b?.status !== 'stored') return
  t.equal(a.message.channelId, b.message.channelId, 'both directions use the same channel')
  t.same([a.message.seq, b.message.seq], [1, 2])
  t.equal(a.message.kind, 'direct')
  t.equal(a.message.toUserId, 'ben')
  const [c] = await messages.persistBatch([dm('ann', 'ben', 'three')])
  t.equal(c?.status === 'stored' && c.message.seq, 3)
  const listed = await channels.listForUser('ben')
  t.same(listed, [{ id: a.message.channelId, kind: 'direct', name: 'ann', lastSeq: 3, peerId: 'ann' }])
})

t.test('a clientMsgId is stored once per sender, across and within batches', async (t) => {
  const id: string = randomUUID()
  const [first] = await messages.persistBatch([dm('cat', 'dan', 'x', id)])
  const again = await messages.persistBatch([dm('cat', 'dan', 'x', id), dm('cat', 'dan', 'x', id)])
  t.equal(first?.status, 'stored')
  t.same(again.map((o) => o.status), ['duplicate', 'duplicate'])
  t.equal(again[0]?.status === 'duplicate' && again[0].message.id, first?.status === 'stored' && first.message.id)
  const inOne = await messages.persistBatch([dm('cat', 'dan', 'y', id.replace(/.$/, '0')), dm('cat', 'dan', 'y', id.replace(/.$/, '0'))])
  t.same(inOne.map((o) => o.status), ['stored', 'duplicate'])
  const [{ count }] = await sql<[{ count: number }]>`select count(*)::int as count from messages where sender_id = 'cat'`
  t.equal(count, 2)
  // the same id from another sender is another message
  const [other] = await messages.persistBatch([dm('dan', 'cat', 'z', id)])
  t.equal(other?.status, 'stored')
})

t.test('only members may post to a group; refusals store nothing', async (t) => {
  const { channel, memberIds } = await channels.createGroup('eve', 'ops', ['fay', 'gus', 'fay'])
  t.same(memberIds.sort(), ['eve', 'fay', 'gus'])
  const out = await messages.persistBatch([post('fay', channel.id, 'ok'), post('mallory', channel.id, 'let me in'), post('eve', randomUUID(), 'nowhere')])
  t.equal(out[0]?.status, 'stored')
  t.same(out[1], { status: 'rejected', error: { code: 'FORBIDDEN', message: 'not a member of this channel' } })
  t.equal(out[2]?.status, 'rejected')
  const [{ count }] = await sql<[{ count: number }]>`select count(*)::int as count from messages where channel_id = ${channel.id}`
  t.equal(count, 1)
  const [{ last_seq: lastSeq }] = await sql<[{ last_seq: string }]>`select last_seq from channels where id = ${channel.id}`
  t.equal(Number(lastSeq), 1, 'a refusal consumes no seq')
})

t.test('concurrent batches on one channel keep seq gapless and unique', async (t) => {
  const { channel } = await channels.createGroup('hal', 'busy', ['ivy'])
  const batches = Array.from({ length: 8 }, (_, i) => Array.from({ length: 25 }, (_, j) => post(j % 2 === 0 ? 'hal' : 'ivy', channel.id, `${i}-${j}`)))
  await Promise.all(batches.map((b) => messages.persistBatch(b)))
  const rows = await sql`select seq from messages where channel_id = ${channel.id} order by seq`
  t.same(rows.map((r) => Number(r.seq)), Array.from({ length: 200 }, (_, i) => i + 1))
})

t.test('the same message racing in two transactions is stored once without a seq gap', async (t) => {
  const { channel } = await channels.createGroup('jo', 'race', [])
  const id = randomUUID()
  const attempts = await Promise.allSettled([
    messages.persistBatch([post('jo', channel.id, 'a'), post('jo', channel.id, 'same', id)]),
    messages.persistBatch([post('jo', channel.id, 'same', id), post('jo', channel.id, 'b')])
  ])
  // A loser either saw the winner's row (duplicate) or must retry (ConcurrentInsertError).
  for (const a of attempts) if (a.status === 'rejected') t.equal((a.reason as { code?: string }).code, 'APP_CONCURRENT_INSERT')
  const retried = attempts.map((a, i) => a.status === 'fulfilled' ? a.value : undefined)
  if (retried[0] === undefined) await messages.persistBatch([post('jo', channel.id, 'a'), post('jo', channel.id, 'same', id)])
  if (retried[1] === undefined) await messages.persistBatch([post('jo', channel.id, 'same', id), post('jo', channel.id, 'b')])
  const rows = await sql`select seq, client_msg_id from messages where channel_id = ${channel.id} order by seq`
  t.equal(rows.filter((r) => r.client_msg_id === id).length, 1, 'stored once')
  t.same(rows.map((r) => Number(r.seq)), Array.from({ length: rows.length }, (_, i) => i + 1), 'no gap')
})

t.test('history: members only, oldest first, afterSeq / beforeSeq / latest', async (t) => {
  const { channel } = await channels.createGroup('kim', 'log', ['lou'])
  for (let i = 1; i <= 12; i++) await messages.persistBatch([post('kim', channel.id, `m${i}`)])
  const after = await messages.history('lou', { channelId: channel.id, afterSeq: 9, limit: 50 })
  t.same(after.map((m) => m.content), ['m10', 'm11', 'm12'])
  const page = await messages.history('lou', { channelId: channel.id, afterSeq: 0, limit: 5 })
  t.same(page.map((m) => m.seq), [1, 2, 3, 4, 5])
  const latest = await messages.history('lou', { channelId: channel.id, limit: 3 })
  t.same(latest.map((m) => m.seq), [10, 11, 12])
  const before = await messages.history('lou', { channelId: channel.id, beforeSeq: 4, limit: 10 })
  t.same(before.map((m) => m.seq), [1, 2, 3])
  await t.rejects(messages.history('mallory', { channelId: channel.id, limit: 10 }), { code: 'FORBIDDEN' })
  t.same(await messages.history('kim', { withUserId: 'nobody-yet', limit: 10 }), [], 'no conversation yet: empty')
})

t.test('leaving a group removes the membership; a direct channel cannot be left', async (t) => {
  const { channel } = await channels.createGroup('max', 'temp', ['ned'])
  await channels.leave(channel.id, 'ned')
  t.same((await channels.listForUser('ned')).map((c) => c.id).includes(channel.id), false)
  await t.rejects(channels.leave(channel.id, 'ned'), { code: 'FORBIDDEN' })
  const [d] = await messages.persistBatch([dm('max', 'ned')])
  if (d?.status !== 'stored') return t.fail('dm not stored')
  await t.rejects(channels.leave(d.message.channelId, 'ned'), { code: 'VALIDATION' })
})
