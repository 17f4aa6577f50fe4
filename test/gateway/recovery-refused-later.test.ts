/**
 * A user whose channels the worker can never read (a row it cannot parse) is told to
 * reconnect after an outage, so their client opens a fresh session (docs/RELIABILITY.md).
 * Under load the first read of that user's part could time out instead: the user was then
 * re-read alone, and a lone refusal looked like a worker failing everything, so the user
 * was re-read every few seconds for as long as they stayed connected, never ended and
 * never told to catch up (seen once in CI, in test/faults/unreadable-user.test.ts). The
 * worker had answered everyone else, so the refusal is that user's own.
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

t.test('a user whose first re-read timed out and whose every read is refused is ended; the others are told', async (t) => {
  let brokenReads = 0
  const rpc = {
    call: async (req: { op: string, userIds?: string[] }) => {
      if (req.op === 'session.open') return { channels: [] }
      if (req.op === 'memberships.list') {
        if (req.userIds!.includes('broken')) {
          // Refused with others; its first read alone times out (a loaded worker), and
          // every later one is refused.
          if (req.userIds!.length === 1 && brokenReads++ === 0) throw new ClientError('UNAVAILABLE', 'the chat service did not answer in time; retry shortly')
          throw new ClientError('INTERNAL', 'could not read this user\'s channels')
        }
        return { memberships: req.userIds!.map((userId) => ({ userId, channels: [] })) }
      }
      return { seqs: {} }
    }
  }
  const bindings = { acquire: async () => {}, release: () => {}, whenBound: async () => {}, now: () => 0, boundSince: () => 0, on: () => bindings }
  const told = new Set<string>()
  const to = (rooms: string | string[]) => ({ emit: (event: string) => { if (event === 'session:resync') for (const r of [rooms].flat()) told.add(r) }, except: () => to(rooms) })
  const io = { to } as unknown as AppIo
  const sessions = new Sessions({ io, bindings: bindings as unknown as BindingManager, rpc: rpc as unknown as WorkerRpc, serverId: 'gw', log: silentLogger })
  const ended = new Set<string>()
  for (const userId of ['ann', 'bob', 'broken']) {
    const s = { id: `s-${userId}`, data: { userId }, connected: true, join: () => {}, leave: () => {}, emit: () => {}, disconnect: () => { s.connected = false; ended.add(userId) } }
    sessions.attach(s as unknown as AppSocket)
    t.equal(await sessions.whenReady(s as unknown as AppSocket), true)
  }
  const recovery = createRecovery({ io, sessions, log: silentLogger, stopped: () => false })
  t.teardown(() => recovery.close())
  recovery.outage()
  const started = Date.now()
  while (!ended.has('broken') && Date.now() - started < 5000) await sleep(20)
  t.ok(ended.has('broken'), `the unreadable user is told to reconnect (after ${brokenReads} reads of it alone)`)
  t.equal(brokenReads, 2, 'ended at its first refusal alone, not re-read on and on')
  t.same([...told].sort(), ['u:ann', 'u:bob'], 'the others are told to catch up; the ended user is not')
  t.same([...ended], ['broken'], 'nobody else is ended')
})
