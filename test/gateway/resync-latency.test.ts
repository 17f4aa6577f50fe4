/**
 * docs/RELIABILITY.md and ARCHITECTURE.md say each user's sockets get
 * session:resync "as soon as that user's channels are re-read, not after the whole pass",
 * "so one slow read holds up no one else". Here one user's memberships.list always times
 * out (the worker answers everyone else at once): the other users must be told about as
 * soon as their own part is read, not after the split has walked down to the slow user
 * (about log2(500) + 1 timeouts; 50 s at RPC_TIMEOUT_MS's default 5 s).
 */
import t from 'tap'
import type { BindingManager } from '../../src/broker/binding-manager.js'
import type { WorkerRpc } from '../../src/broker/rpc.js'
import { ClientError } from '../../src/errors.js'
import { createRecovery } from '../../src/gateway/recovery.js'
import { Sessions } from '../../src/gateway/sessions.js'
import type { AppIo, AppSocket } from '../../src/gateway/types.js'
import { silentLogger } from '../../src/log.js'
import { sleep } from '../helpers/system.js'

const TIMEOUT_MS = 300

/** Sessions of `users` users (u0…), each with one socket, opened against `rpc`; `ended` counts sockets disconnected. */
async function connected (rpc: unknown, users: number) {
  const bindings = { acquire: async () => {}, release: () => {}, whenBound: async () => {}, now: () => 0, boundSince: () => 0, on: () => bindings }
  const emitter = { emit: () => {}, except: () => emitter }
  const io = { to: () => emitter } as unknown as AppIo
  const sessions = new Sessions({ io, bindings: bindings as unknown as BindingManager, rpc: rpc as unknown as WorkerRpc, serverId: 'gw', log: silentLogger })
  let ended = 0
  for (let i = 0; i < users; i++) {
    const s = { id: `s${i}`, data: { userId: `u${i}` }, connected: true, join: () => {}, leave: () => {}, emit: () => {}, disconnect: () => { ended++ } }
    sessions.attach(s as unknown as AppSocket)
    await sessions.whenReady(s as unknown as AppSocket)
  }
  return { sessions, ended: () => ended }
}

t.test('one user whose re-read times out does not hold up the session:resync of the others', async (t) => {
  const bindings = {
    acquire: async () => {},
    release: () => {},
    whenBound: async () => {},
    now: () => 0,
    boundSince: () => 0,
    on: () => bindings
  }
  const rpc = {
    call: async (req: { op: string, userIds?: string[] }) => {
      if (req.op === 'session.open') return { channels: [] }
      if (req.op === 'memberships.list') {
        if (req.userIds!.includes('slow')) {
          await sleep(TIMEOUT_MS)
          throw new ClientError('UNAVAILABLE', 'the chat service did not answer in time; retry shortly')
        }
        return { memberships: req.userIds!.map((userId) => ({ userId, channels: [] })) }
      }
      return { seqs: {} }
    }
  }
  const started = { at: 0 }
  const toldAt = new Map<string, number>()
  const emitter = (rooms: string | string[]) => ({
    emit: (event: string) => {
      if (event !== 'session:resync') return
      for (const room of [rooms].flat()) if (!toldAt.has(room)) toldAt.set(room, performance.now() - started.at)
    },
    except: () => emitter(rooms)
  })
  const io = { to: emitter } as unknown as AppIo
  const sessions = new Sessions({ io, bindings: bindings as unknown as BindingManager, rpc: rpc as unknown as WorkerRpc, serverId: 'gw', log: silentLogger })
  // 'slow' first, then 600 others: the first chunk of 500 is slow + u0..u498, the second u499..u599.
  const ids = ['slow', ...Array.from({ length: 600 }, (_, i) => `u${i}`)]
  for (const userId of ids) {
    const s = { id: `s-${userId}`, data: { userId }, connected: true, join: () => {}, leave: () => {}, emit: () => {}, disconnect: () => { s.connected = false } }
    sessions.attach(s as unknown as AppSocket)
    t.equal(await sessions.whenReady(s as unknown as AppSocket), true)
  }
  const recovery = createRecovery({ io, sessions, log: silentLogger, stopped: () => false })
  t.teardown(() => recovery.close())
  started.at = performance.now()
  recovery.outage()
  while (!(toldAt.has('u:u498') && toldAt.has('u:u599')) && performance.now() - started.at < 10_000) await sleep(20)
  const inChunk = toldAt.get('u:u498')
  const nextChunk = toldAt.get('u:u599')
  t.comment(`told: u498 (slow user's chunk, other half) after ${inChunk?.toFixed(0)} ms, u599 (next chunk) after ${nextChunk?.toFixed(0)} ms; one timeout is ${TIMEOUT_MS} ms`)
  t.ok(inChunk !== undefined && inChunk < 4 * TIMEOUT_MS, 'a user of the slow chunk is told once their half is read')
  t.ok(nextChunk !== undefined && nextChunk < 4 * TIMEOUT_MS, 'a user of the next chunk is not held up by the slow one')
})

t.test('a worker that answers nobody: the pass ends after a few timeouts, everyone unresolved, nobody ended', async (t) => {
  let down = false
  let requests = 0
  const rpc = {
    call: async (req: { op: string }) => {
      if (req.op === 'session.open') return { channels: [] }
      requests++
      if (down) {
        await sleep(TIMEOUT_MS)
        throw new ClientError('UNAVAILABLE', 'no answer')
      }
      return { seqs: {} }
    }
  }
  const { sessions, ended } = await connected(rpc, 1100)
  down = true
  requests = 0
  const started = performance.now()
  const pass = await sessions.resync()
  const ms = performance.now() - started
  t.comment(`${requests} requests, ${ms.toFixed(0)} ms`)
  t.equal(pass.unresolved.length, 1100)
  t.equal(pass.resolved.length, 0)
  t.equal(ended(), 0)
  t.ok(ms < 6 * TIMEOUT_MS, 'a few timeouts, not one per chunk and level')
})

t.test('a worker that goes away in the middle of a pass: the pass ends after a few timeouts, not a split per chunk', async (t) => {
  let answersLeft = Infinity
  let requests = 0
  const rpc = {
    call: async (req: { op: string, userIds?: string[] }) => {
      if (req.op === 'session.open') return { channels: [] }
      if (req.op !== 'memberships.list') return { seqs: {} }
      requests++
      if (answersLeft-- <= 0) {
        await sleep(TIMEOUT_MS)
        throw new ClientError('UNAVAILABLE', 'no answer')
      }
      return { memberships: req.userIds!.map((userId) => ({ userId, channels: [] })) }
    }
  }
  const { sessions, ended } = await connected(rpc, 3000)
  // The first chunk of 500 is answered; then the worker answers nobody.
  answersLeft = 1
  requests = 0
  const started = performance.now()
  const pass = await sessions.resync()
  const ms = performance.now() - started
  t.comment(`${requests} requests, ${ms.toFixed(0)} ms`)
  t.equal(pass.resolved.length, 500, 'the chunk read before the worker went away')
  t.equal(pass.unresolved.length, 2500, 'everyone else is left for a later pass')
  t.equal(ended(), 0, 'nobody is ended for the worker\'s silence')
  t.ok(ms < 9 * TIMEOUT_MS, 'a few timeouts, not a split of every chunk (5 chunks × 4 timeouts)')
})
