/**
 * A user the worker never answers for (a read that always times out) is re-read
 * alone, with backoff, for as long as they stay connected. Requests made meanwhile (a
 * second outage, more drops) must still get their pass: every other user's joined/left
 * notices may be lost again, and they must be re-read and told session:resync.
 */
import t from 'tap'
import { createRecovery } from '../../src/gateway/recovery.js'
import type { AppIo } from '../../src/gateway/types.js'
import { silentLogger } from '../../src/log.js'
import { sleep } from '../helpers/system.js'

t.test('a user never answered for does not hold up the passes later losses ask for', async (t) => {
  const told: Array<{ rooms: string[], reason: string }> = []
  const io = { to: (rooms: string[]) => ({ emit: (_event: string, payload: { reason: string }) => { told.push({ rooms, reason: payload.reason }) } }) } as unknown as AppIo
  const asked: Array<string[] | undefined> = []
  const sessions = {
    resync: async (only?: ReadonlySet<string>) => {
      asked.push(only === undefined ? undefined : [...only])
      // 'slow' is never answered (every read of theirs times out); everyone else always is.
      return only === undefined
        ? { resolved: ['ann', 'bob'], unresolved: ['slow'], ended: 0 }
        : { resolved: [], unresolved: ['slow'], ended: 0 }
    }
  }
  const recovery = createRecovery({ io, sessions, log: silentLogger, stopped: () => false, quietMs: 10 })
  t.teardown(() => recovery.close())
  recovery.outage()
  await sleep(100)
  t.same(told, [{ rooms: ['u:ann', 'u:bob'], reason: 'BROKER_RECONNECTED' }])
  // The queue overflows later: ann's and bob's notices may be gone again.
  recovery.dropped()
  await sleep(3000)
  t.ok(asked.filter((a) => a === undefined).length >= 2, `the drops got a pass of every user (asked: ${JSON.stringify(asked.map((a) => a ?? 'all'))})`)
  // The pass owes 'slow' the outage's reason too, and an outage says more than drops (recovery's merge).
  t.equal(told.filter((e) => e.rooms.includes('u:ann')).length, 2, 'ann is told to catch up again after the drops')
})
