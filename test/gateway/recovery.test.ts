/**
 * Re-reads after lost deliveries run one at a time and always end in session:resync,
 * also when drops keep coming faster than a re-read takes. The re-read is held in hand
 * here (how long it takes cannot be chosen against a loaded worker);
 * test/faults/queue-overflow.test.ts and test/faults/broker-loss.test.ts run it against
 * RabbitMQ and PostgreSQL.
 */
import t from 'tap'
import { createRecovery } from '../../src/gateway/recovery.js'
import type { AppIo } from '../../src/gateway/types.js'
import { silentLogger } from '../../src/log.js'
import { sleep } from '../helpers/system.js'

function harness (opts: { rereadMs: number, quietMs?: number, maxWaitMs?: number, stopped?: () => boolean }) {
  const emits: string[] = []
  let running = 0
  let maxRunning = 0
  let passes = 0
  const io = { to: () => ({ emit: (_event: string, payload: { reason: string }) => { emits.push(payload.reason) } }) } as unknown as AppIo
  const sessions = {
    resync: async () => {
      running++
      maxRunning = Math.max(maxRunning, running)
      passes++
      await sleep(opts.rereadMs)
      running--
      return { resolved: ['u1'], unresolved: [], ended: 0 }
    }
  }
  const recovery = createRecovery({ io, sessions, log: silentLogger, stopped: opts.stopped ?? (() => false), quietMs: opts.quietMs ?? 100, maxWaitMs: opts.maxWaitMs ?? 1000 })
  t.teardown(() => recovery.close())
  return { recovery, emits, stats: () => ({ passes, maxRunning }) }
}

t.test('drop bursts closer together than a re-read: one pass at a time, each one ends in session:resync', async (t) => {
  const { recovery, emits, stats } = harness({ rereadMs: 300, quietMs: 50 })
  for (let i = 0; i < 12; i++) {
    recovery.dropped()
    await sleep(120)
  }
  await sleep(1000)
  t.equal(stats().maxRunning, 1, 'never two re-reads at once')
  t.ok(stats().passes >= 2 && stats().passes < 12, `fewer passes than bursts: requests during a pass share the next one (${stats().passes})`)
  t.equal(emits.length, stats().passes, 'every finished pass told the sockets')
  t.ok(emits.every((r) => r === 'DELIVERIES_DROPPED'))
})

t.test('drops that never pause: the first pass starts after maxWaitMs anyway', async (t) => {
  const { recovery, emits } = harness({ rereadMs: 10, quietMs: 200, maxWaitMs: 500 })
  const started = performance.now()
  let firstAt: number | undefined
  while (performance.now() - started < 1500) {
    recovery.dropped()
    if (firstAt === undefined && emits.length > 0) firstAt = performance.now() - started
    await sleep(50)
  }
  t.ok(firstAt !== undefined && firstAt < 900, `first session:resync after ${firstAt?.toFixed(0)} ms of non-stop drops`)
})

t.test('an outage during a drop pass: another pass after it, as BROKER_RECONNECTED', async (t) => {
  const { recovery, emits, stats } = harness({ rereadMs: 300, quietMs: 10 })
  recovery.dropped()
  await sleep(100)
  recovery.outage()
  await sleep(1000)
  t.same(emits, ['DELIVERIES_DROPPED', 'BROKER_RECONNECTED'])
  t.equal(stats().maxRunning, 1)
})

t.test('an outage and drops during the same pass: the next pass says BROKER_RECONNECTED', async (t) => {
  const { recovery, emits } = harness({ rereadMs: 300, quietMs: 10 })
  recovery.dropped()
  await sleep(100)
  recovery.outage()
  recovery.dropped()
  await sleep(150)
  await sleep(1000)
  t.same(emits, ['DELIVERIES_DROPPED', 'BROKER_RECONNECTED'], 'one more pass, with the stronger reason')
})

t.test('while the gateway drains, and after close, nothing is re-read', async (t) => {
  let draining = true
  const { recovery, emits, stats } = harness({ rereadMs: 10, quietMs: 10, stopped: () => draining })
  recovery.outage()
  recovery.dropped()
  await sleep(200)
  t.equal(stats().passes, 0, 'no pass while stopped')
  draining = false
  recovery.dropped()
  recovery.close()
  await sleep(200)
  recovery.outage()
  await sleep(100)
  t.same(emits, [], 'a drop timer set before close does not fire, requests after close are ignored')
  t.equal(stats().passes, 0)
})

t.test('users the worker did not answer for do not hold up the others: they are told at once, the rest re-read alone until answered', async (t) => {
  const told: Array<{ rooms: string[], reason: string }> = []
  const io = { to: (rooms: string[]) => ({ emit: (_event: string, payload: { reason: string }) => { told.push({ rooms, reason: payload.reason }) } }) } as unknown as AppIo
  const asked: Array<string[] | undefined> = []
  let slowAnswers = 2
  const sessions = {
    resync: async (only?: ReadonlySet<string>) => {
      asked.push(only === undefined ? undefined : [...only])
      if (only === undefined) return { resolved: ['ann', 'bob'], unresolved: ['slow'], ended: 0 }
      // The slow user's read times out twice more, then is answered.
      return slowAnswers-- > 0 ? { resolved: [], unresolved: ['slow'], ended: 0 } : { resolved: ['slow'], unresolved: [], ended: 0 }
    }
  }
  const recovery = createRecovery({ io, sessions, log: silentLogger, stopped: () => false, quietMs: 10 })
  t.teardown(() => recovery.close())
  recovery.outage()
  await sleep(100)
  t.same(told, [{ rooms: ['u:ann', 'u:bob'], reason: 'BROKER_RECONNECTED' }], 'the users re-read are told at once')
  await sleep(2500)
  t.same(asked, [undefined, ['slow'], ['slow'], ['slow']], 'then only the unanswered user is read again, until answered')
  t.same(told[1], { rooms: ['u:slow'], reason: 'BROKER_RECONNECTED' }, 'and is told once answered')
  t.equal(told.length, 2)
})
