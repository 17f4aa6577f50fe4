/**
 * ChannelSync decides what the application is told about channels. A group first seen
 * in a message (its channel:joined still on the way) must be announced with its name,
 * once, when the summary arrives; nothing here needs a server.
 */
import t from 'tap'
import { ChannelSync } from '../../src/client/channel-sync.js'
import type { ChannelSummary, Message } from '../../src/contracts/protocol.js'

const GROUP = '33333333-3333-4333-8333-333333333333'
const message = (seq: number): Message => ({
  id: String(seq), channelId: GROUP, kind: 'group', seq, senderId: 'ann', clientMsgId: '44444444-4444-4444-8444-44444444444' + String(seq % 10), content: `m${seq}`, createdAt: new Date(0).toISOString()
})

function sync () {
  const joined: ChannelSummary[] = []
  const left: string[] = []
  const delivered: Message[] = []
  const s = new ChannelSync({
    backlog: 0,
    resumeFrom: {},
    pageSize: 100,
    fetchPage: async () => [],
    message: (m) => delivered.push(m),
    joined: (c) => joined.push(c),
    left: (id) => left.push(id),
    error: (err) => { throw err },
    retryLater: () => {}
  })
  s.opened({ userId: 'bob', serverId: 'gw', channels: [] })
  return { s, joined, left, delivered }
}

t.test('a group seen in a message first is announced with its name when its summary arrives', async (t) => {
  const { s, joined, delivered } = sync()
  s.message(message(1))
  t.same(delivered.map((m) => m.seq), [1], 'the message is delivered at once')
  t.same(joined, [], 'no nameless announcement')
  s.learn({ id: GROUP, kind: 'group', name: 'plans', lastSeq: 1 })
  t.same(joined.map((c) => c.name), ['plans'], 'announced once, named')
  s.learn({ id: GROUP, kind: 'group', name: 'plans', lastSeq: 1 })
  t.equal(joined.length, 1, 'not twice')
})

t.test('such a group forgotten before its summary came is not announced as left', async (t) => {
  const { s, joined, left } = sync()
  s.message(message(1))
  s.forget(GROUP)
  t.same(joined, [])
  t.same(left, [], 'the application never heard of it')
})

t.test('where channels start: the backlog on a first start, their first message for channels joined since the saved positions', async (t) => {
  const OTHER = '55555555-5555-4555-8555-555555555555'
  const starts = (resumeFrom: Record<string, number>) => {
    const fetched: Array<{ channelId: string, afterSeq: number }> = []
    const s = new ChannelSync({
      backlog: 5,
      resumeFrom,
      pageSize: 100,
      fetchPage: async (target, afterSeq) => { fetched.push({ channelId: (target as { channelId: string }).channelId, afterSeq }); return [] },
      message: () => {},
      joined: () => {},
      left: () => {},
      error: (err) => { throw err },
      retryLater: () => {}
    })
    s.opened({ userId: 'bob', serverId: 'gw', channels: [{ id: GROUP, kind: 'group', name: 'a', lastSeq: 40 }, { id: OTHER, kind: 'group', name: 'b', lastSeq: 30 }] })
    return Object.fromEntries(fetched.map((f) => [f.channelId, f.afterSeq]))
  }
  t.same(starts({}), { [GROUP]: 35, [OTHER]: 25 }, 'first start: the latest `backlog` of each')
  t.same(starts({ [GROUP]: 38 }), { [GROUP]: 38, [OTHER]: 0 }, 'resuming: a saved position, and a channel not saved (joined since) from its first message')
})
