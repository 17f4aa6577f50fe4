/**
 * The split re-read (src/gateway/bisect.ts) with the reader held in hand: which items
 * count as failed, how many requests it takes, and that parts that get no answer (the
 * worker down or overloaded) are neither split nor blamed, only left unresolved.
 * test/faults/unreadable-user.test.ts runs it against RabbitMQ and PostgreSQL.
 */
import t from 'tap'
import { readBisecting } from '../../src/gateway/bisect.js'
import { ClientError } from '../../src/errors.js'

const users = (n: number) => Array.from({ length: n }, (_, i) => i)
const inconclusive = (err: unknown) => err instanceof ClientError && err.code === 'UNAVAILABLE'

/** A reader that fails any part containing one of `bad`, with `code`; records what it read. */
function reader (bad: Set<number>, code: 'LIMIT_REACHED' | 'UNAVAILABLE' = 'LIMIT_REACHED') {
  const read = new Set<number>()
  let calls = 0
  return {
    read,
    calls: () => calls,
    fn: async (part: number[]) => {
      calls++
      if (part.some((u) => bad.has(u))) throw new ClientError(code, 'refused')
      for (const u of part) read.add(u)
    }
  }
}

t.test('every user is read but the failing ones, which are named', async (t) => {
  for (const badList of [[0], [499], [137], [3, 250], [0, 1, 2]]) {
    const r = reader(new Set(badList))
    const { failed, requests } = await readBisecting(users(500), r.fn, { maxRequests: 64, inconclusive })
    t.same(failed.map((f) => f.item).sort((a, b) => a - b), badList, `bad ${badList.join(',')}: exactly those failed`)
    t.equal(r.read.size, 500 - badList.length, 'everyone else was read')
    t.equal(requests, r.calls())
    t.ok(requests <= 1 + 2 * 9 * badList.length, `${requests} requests`)
  }
})

t.test('a part that gets no answer is not split and blames no one: its users are unresolved, the rest read', async (t) => {
  const r = reader(new Set([42]), 'UNAVAILABLE')
  const { failed, unresolved, requests } = await readBisecting(users(500), r.fn, { maxRequests: 64, inconclusive })
  t.same(failed, [], 'no user blamed for a timeout')
  t.same(unresolved, users(500), 'the whole chunk is left for the next pass')
  t.equal(requests, 1, 'not split: an overloaded worker gets no more requests')

  const mixed = reader(new Set([7]))
  const slow = new Set([300])
  const { failed: f2, unresolved: u2 } = await readBisecting(users(500), async (part) => {
    if (part.some((u) => slow.has(u)) && part.length < 500) throw new ClientError('UNAVAILABLE', 'no answer')
    await mixed.fn(part)
  }, { maxRequests: 64, inconclusive })
  t.same(f2.map((f) => f.item), [7], 'the refused user is singled out')
  t.same(u2, users(500).slice(250), 'the half that got no answer is unresolved, not blamed')
  t.equal(mixed.read.size, 249, 'the rest of the first half is read')
})

t.test('a worker that answers nothing: one request, nobody blamed, everyone unresolved', async (t) => {
  let calls = 0
  const down = async () => { calls++; throw new ClientError('UNAVAILABLE', 'no answer') }
  const r = await readBisecting(users(500), down, { maxRequests: 64, inconclusive })
  t.same({ failed: r.failed, unresolved: r.unresolved.length, calls }, { failed: [], unresolved: 500, calls: 1 })
})

t.test('the budget bounds the requests; users of parts still failing then count as failed', async (t) => {
  const everyone = reader(new Set(users(500)))
  const { failed, requests } = await readBisecting(users(500), everyone.fn, { maxRequests: 64, inconclusive })
  t.ok(requests <= 64, `${requests} requests for 500 failing users`)
  t.equal(failed.length, 500, 'every user failed')
  const some = reader(new Set([1, 100, 200, 300, 400, 499, 250, 150]))
  const r = await readBisecting(users(500), some.fn, { maxRequests: 64, inconclusive })
  t.ok(r.requests <= 64)
  t.equal(some.read.size + r.failed.length, 500, 'each user either read or failed')
  t.ok(some.read.size > 400, `most are still read (${some.read.size})`)
})
