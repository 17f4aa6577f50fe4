/**
 * The order in which a session.open answer and joined/left notices reach a gateway is
 * up to the network; these orders are hard to produce against the real services on
 * demand, so Sessions runs here with its worker call and binding manager held in hand.
 * What is checked is what a user would notice: the channels the gateway lets them use,
 * the keys it keeps bound and the rooms their sockets are in.
 */
import t from 'tap'
import type { BindingManager } from '../../src/broker/binding-manager.js'
import type { WorkerRpc } from '../../src/broker/rpc.js'
import type { ChannelSummary } from '../../src/contracts/protocol.js'
import { MAX_LIVE_DIRECT, Sessions } from '../../src/gateway/sessions.js'
import type { AppIo, AppSocket } from '../../src/gateway/types.js'
import { silentLogger, type Logger } from '../../src/log.js'

interface Deferred<T> { promise: Promise<T>, resolve: (v: T) => void, reject: (err: unknown) => void }
const deferred = <T>(): Deferred<T> => {
  let resolve!: (v: T) => void
  let reject!: (err: unknown) => void
  const promise = new Promise<T>((r, j) => { resolve = r; reject = j })
  return { promise, resolve, reject }
}
const turn = () => new Promise((resolve) => setImmediate(resolve))

function harness () {
  const refs = new Map<string, number>()
  const bindings = {
    acquire: async (key: string) => { refs.set(key, (refs.get(key) ?? 0) + 1) },
    release: (key: string) => {
      const n = refs.get(key) ?? 0
      if (n <= 1) refs.delete(key)
      else refs.set(key, n - 1)
    },
    whenBound: async () => {},
    now: () => 0,
    boundSince: () => 0,
    on: () => bindings
  }
  const answers: Array<Deferred<{ channels: ChannelSummary[] }>> = []
  const rereads: Array<Deferred<{ memberships: Array<{ userId: string, channels: ChannelSummary[] }> }>> = []
  const rpc = {
    call: async (req: { op: string }) => {
      if (req.op === 'memberships.list') {
        const answer = deferred<{ memberships: Array<{ userId: string, channels: ChannelSummary[] }> }>()
        rereads.push(answer)
        return answer.promise
      }
      if (req.op !== 'session.open') return { seqs: {} }
      const answer = deferred<{ channels: ChannelSummary[] }>()
      answers.push(answer)
      return answer.promise
    }
  }
  const emitted: Array<{ event: string, payload: unknown }> = []
  const emitter = { emit: (event: string, payload: unknown) => { emitted.push({ event, payload }) }, except: () => emitter }
  const io = { to: () => emitter }
  const log = { error: () => {}, warn: () => {}, info: () => {}, debug: () => {} }
  const sessions = new Sessions({
    io: io as unknown as AppIo,
    bindings: bindings as unknown as BindingManager,
    rpc: rpc as unknown as WorkerRpc,
    serverId: 'gw-test',
    log: log as unknown as Logger
  })
  let next = 0
  const socket = (userId: string) => {
    const rooms = new Set<string>()
    const s = {
      id: `s${next++}`,
      data: { userId },
      connected: true,
      rooms,
      join: (room: string) => { rooms.add(room) },
      leave: (room: string) => { rooms.delete(room) },
      emit: (event: string, payload: unknown) => { emitted.push({ event, payload }) },
      disconnect: () => { s.connected = false }
    }
    return s
  }
  type FakeSocket = ReturnType<typeof socket>
  const real = (s: FakeSocket) => s as unknown as AppSocket
  /** A new socket of `userId`, attached; its session.open is the latest entry of `answers`. */
  const attach = async (userId: string) => {
    const s = socket(userId)
    sessions.attach(real(s))
    await turn()
    return s
  }
  const ready = (s: FakeSocket) => sessions.whenReady(real(s))
  /** A socket whose session opened with `channels`. */
  const opened = async (userId: string, channels: ChannelSummary[]) => {
    const s = await attach(userId)
    answers.at(-1)!.resolve({ channels })
    await ready(s)
    return s
  }
  const detach = (s: FakeSocket) => {
    s.connected = false
    sessions.detach(real(s))
  }
  return { sessions, refs, answers, rereads, emitted, attach, ready, opened, detach }
}

const group = (id: string, lastSeq = 0): ChannelSummary => ({ id, kind: 'group', name: `g-${id.slice(0, 4)}`, lastSeq })
const C1 = '11111111-1111-4111-8111-111111111111'
const C2 = '22222222-2222-4222-8222-222222222222'

t.test('a channel joined while the first session.open is in flight is kept', async (t) => {
  const h = harness()
  const s = await h.attach('alice')
  await h.sessions.joined('alice', group(C1))
  h.answers[0]!.resolve({ channels: [] }) // read before the channel was created
  t.equal(await h.ready(s), true)
  t.ok(h.sessions.channelOf('alice', C1), 'still a member here')
  t.equal(h.refs.get(`channel:${C1}`), 1, 'its key stays bound')
  t.ok(s.rooms.has(`c:${C1}`), 'the socket stays in its room')
})

t.test('a channel left while a later session.open is in flight is not brought back', async (t) => {
  const h = harness()
  const first = await h.opened('alice', [group(C1, 3)])
  const second = await h.attach('alice')
  await h.sessions.left('alice', C1)
  h.answers[1]!.resolve({ channels: [group(C1, 3)] }) // read before the leave committed
  t.equal(await h.ready(second), true)
  t.notOk(h.sessions.channelOf('alice', C1), 'no longer a member here')
  t.notOk(h.refs.has(`channel:${C1}`), 'its key is released')
  t.notOk(second.rooms.has(`c:${C1}`), 'the new socket is not in its room')
  t.notOk(first.rooms.has(`c:${C1}`), 'nor the old one')
})

t.test('a later session.open fills in what a loaded user missed, and tells the other sockets', async (t) => {
  const h = harness()
  const first = await h.opened('alice', [group(C1)])
  const second = await h.attach('alice')
  // Both notices were lost: joined C2, left C1.
  h.answers[1]!.resolve({ channels: [group(C2)] })
  await h.ready(second)
  t.ok(h.sessions.channelOf('alice', C2), 'C2 known')
  t.notOk(h.sessions.channelOf('alice', C1), 'C1 forgotten')
  t.same([...first.rooms].filter((r) => r.startsWith('c:')), [`c:${C2}`], 'the first socket moved rooms too')
  t.same(h.refs.get(`channel:${C2}`), 1)
  t.notOk(h.refs.has(`channel:${C1}`))
  t.ok(h.emitted.some((e) => e.event === 'channel:joined'), 'channel:joined told')
  t.ok(h.emitted.some((e) => e.event === 'channel:left'), 'channel:left told')
})

t.test('a session.open answered after every socket of the user left does not touch the user\'s next record', async (t) => {
  const h = harness()
  const s0 = await h.opened('alice', [group(C1)])
  // Notices on the old record, so its clock is ahead of the next record's.
  await h.sessions.joined('alice', group(C2))
  await h.sessions.left('alice', C2)
  await h.sessions.joined('alice', group(C2))
  const s1 = await h.attach('alice')
  h.detach(s0)
  h.detach(s1)
  const s2 = await h.attach('alice')
  await h.sessions.joined('alice', group(C1))
  await h.sessions.left('alice', C1)
  h.answers[1]!.resolve({ channels: [group(C1)] }) // s1's, read before the leave
  t.equal(await h.ready(s1), false, 'the gone socket gets no session')
  t.notOk(h.sessions.channelOf('alice', C1), 'the channel left is not brought back')
  t.notOk(s2.rooms.has(`c:${C1}`))
  t.notOk(h.refs.has(`channel:${C1}`))
  h.answers[2]!.resolve({ channels: [] })
  t.equal(await h.ready(s2), true)
})

t.test('a session.open read before a re-read does not undo it', async (t) => {
  const h = harness()
  await h.opened('alice', [group(C1)])
  const second = await h.attach('alice')
  // A broker outage: C1 left and C2 joined meanwhile, the notices lost. The re-read is answered first.
  const reread = h.sessions.resync()
  await turn()
  h.rereads[0]!.resolve({ memberships: [{ userId: 'alice', channels: [group(C2)] }] })
  await reread
  t.ok(h.sessions.channelOf('alice', C2))
  t.notOk(h.sessions.channelOf('alice', C1))
  h.answers[1]!.resolve({ channels: [group(C1, 7)] }) // requested before the re-read
  t.equal(await h.ready(second), true)
  t.notOk(h.sessions.channelOf('alice', C1), 'the older list does not bring C1 back')
  t.ok(h.sessions.channelOf('alice', C2), 'nor drop C2')
  t.notOk(h.refs.has(`channel:${C1}`))
  t.equal(h.refs.get(`channel:${C2}`), 1)
})

t.test('a joined notice consumed after the user left the channel does not bring it back', async (t) => {
  const h = harness()
  const s = await h.opened('alice', [])
  // channel:create applies joined at once, and the worker's joined notice is still queued;
  // channel:leave applies left at once; then the queue catches up with the stale joined.
  await h.sessions.joined('alice', group(C1))
  await h.sessions.left('alice', C1)
  await h.sessions.joined('alice', group(C1))
  t.notOk(h.sessions.channelOf('alice', C1), 'not counted a member again')
  t.notOk(s.rooms.has(`c:${C1}`), 'her socket is not back in the room')
  t.notOk(h.refs.has(`channel:${C1}`), 'the key is not bound again')
  t.same(h.emitted.filter((e) => e.event.startsWith('channel:')).map((e) => e.event), ['channel:joined', 'channel:left'], 'no second channel:joined')
  // A joined notice published after the left notice (a late announcement) changes nothing either.
  await h.sessions.left('alice', C1)
  await h.sessions.joined('alice', group(C1))
  t.notOk(h.sessions.channelOf('alice', C1), 'a late joined after the left notice is ignored too')
})

// ---- what a user who stays connected can make the gateway hold --------------------------

const uuidOf = (i: number) => `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`
const direct = (i: number): ChannelSummary => ({ id: uuidOf(i), kind: 'direct', name: `peer-${i}`, lastSeq: 1, peerId: `peer-${i}` })

t.test('create-then-leave cycles while connected leave nothing behind in the per-channel clock', async (t) => {
  const h = harness()
  await h.opened('alice', [])
  for (let i = 0; i < 2000; i++) {
    await h.sessions.joined('alice', group(uuidOf(i)))
    await h.sessions.left('alice', uuidOf(i))
  }
  t.same(h.sessions.sizes('alice'), { channels: 0, touched: 0, liveDirect: 0 }, 'no list in flight: no clock entry kept')
})

t.test('clock entries are kept while a list is in flight, and still keep it from undoing newer notices', async (t) => {
  const h = harness()
  await h.opened('alice', [group(C1)])
  const reread = h.sessions.resync()
  await turn()
  // While the re-read is in flight: C1 left, C2 joined, and many cycles.
  await h.sessions.left('alice', C1)
  await h.sessions.joined('alice', group(C2))
  for (let i = 0; i < 100; i++) {
    await h.sessions.joined('alice', group(uuidOf(i)))
    await h.sessions.left('alice', uuidOf(i))
  }
  t.equal(h.sessions.sizes('alice')?.touched, 102, 'each matters to the list in flight')
  h.rereads[0]!.resolve({ memberships: [{ userId: 'alice', channels: [group(C1)] }] }) // read before all of it
  await reread
  t.notOk(h.sessions.channelOf('alice', C1), 'the older list does not bring C1 back')
  t.ok(h.sessions.channelOf('alice', C2), 'nor drop C2')
  t.equal(h.sessions.sizes('alice')?.touched, 0, 'pruned once the list is applied')
})

t.test('a re-read that fails leaves no clock entries behind either', async (t) => {
  const h = harness()
  await h.opened('alice', [])
  const reread = h.sessions.resync()
  await turn()
  await h.sessions.joined('alice', group(C1))
  t.equal(h.sessions.sizes('alice')?.touched, 1)
  h.rereads[0]!.reject(new Error('no answer'))
  await reread
  t.equal(h.sessions.sizes('alice')?.touched, 0)
})

t.test('direct channels learned live are bounded per user; the newest stay usable', async (t) => {
  const h = harness()
  await h.opened('alice', [direct(999_999)])
  for (let i = 0; i < MAX_LIVE_DIRECT + 50; i++) await h.sessions.joined('alice', direct(i))
  t.equal(h.sessions.sizes('alice')?.liveDirect, MAX_LIVE_DIRECT)
  t.equal(h.sessions.sizes('alice')?.channels, MAX_LIVE_DIRECT + 1, 'the cap, plus the one from the list')
  t.ok(h.sessions.channelOf('alice', uuidOf(MAX_LIVE_DIRECT + 49)), 'the newest is known')
  t.notOk(h.sessions.channelOf('alice', uuidOf(0)), 'the oldest learned live is forgotten')
  t.ok(h.sessions.channelOf('alice', uuidOf(999_999)), 'one from the session\'s list is kept')
  await h.sessions.joined('alice', direct(0))
  t.ok(h.sessions.channelOf('alice', uuidOf(0)), 'its next message teaches it again')
})

t.test('a group message for a channel no longer bound here keeps no entry', async (t) => {
  const bound = new Set(['channel:11111111-1111-4111-8111-111111111111'])
  const bindings = { acquire: async () => {}, release: () => {}, whenBound: async () => {}, now: () => 0, boundSince: (key: string) => bound.has(key) ? 0 : undefined, on: () => bindings }
  const emitter = { emit: () => {}, except: () => emitter }
  const sessions = new Sessions({ io: { to: () => emitter } as unknown as AppIo, bindings: bindings as unknown as BindingManager, rpc: { call: async () => ({ seqs: {} }) } as unknown as WorkerRpc, serverId: 'gw', log: silentLogger })
  sessions.emitted('11111111-1111-4111-8111-111111111111', 3)
  t.equal(sessions.emittedChannels, 1, 'a bound channel keeps its highest seq')
  // Messages still queued after their channels' keys were unbound (members left or went away).
  for (let i = 0; i < 100; i++) sessions.emitted(`22222222-2222-4222-8222-${String(i).padStart(12, '0')}`, 1)
  t.equal(sessions.emittedChannels, 1, 'channels not bound keep nothing')
})
