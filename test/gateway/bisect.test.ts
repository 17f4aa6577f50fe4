/**
 * The split re-read (src/gateway/bisect.ts) with the reader held in hand: which items
 * count as failed and which are left unresolved, how many requests it takes, and that a
 * reader failing everything (the worker down, or deployed ahead of its migration) blames
 * no one. test/faults/unreadable-user.test.ts runs it against RabbitMQ and PostgreSQL.
 */
import t from 'tap'
import { readBisecting, type BisectOptions } from '../../src/gateway/bisect.js'
import { ClientError } from '../../src/errors.js'

const users = (n: number) => Array.from({ length: n }, (_, i) => i)
const options: BisectOptions = {
  maxRequests: 64,
  inconclusive: (err) => err instanceof ClientError && err.code === 'UNAVAILABLE',
  definite: (err) => err instanceof ClientError && err.code === 'LIMIT_REACHED'
}

/** A reader that fails any part containing one of `bad`, with `code`; records what it read. */
function reader (bad: Set<number>, code: 'LIMIT_REACHED' | 'UNAVAILABLE' | 'INTERNAL' = 'LIMIT_REACHED') {
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

t.test('every user is read but the refused ones, which are named', async (t) => {
  for (const code of ['LIMIT_REACHED', 'INTERNAL'] as const) {
    for (const badList of [[0], [499], [137], [3, 250], [0, 1, 2]]) {
      const r = reader(new Set(badList), code)
      const result = await readBisecting(users(500), r.fn, options)
      t.same(result.failed.map((f) => f.item).sort((a, b) => a - b), badList, `${code}, bad ${badList.join(',')}: exactly those failed`)
      t.equal(r.read.size, 500 - badList.length, 'everyone else was read')
      t.equal(result.read, r.read.size)
      t.same(result.unresolved, [])
      t.equal(result.requests, r.calls())
      t.ok(result.requests <= 1 + 2 * 9 * badList.length, `${result.requests} requests`)
    }
  }
})

t.test('a slow user is split out like a refused one, but left unresolved, never blamed', async (t) => {
  const r = reader(new Set([42]), 'UNAVAILABLE')
  const result = await readBisecting(users(500), r.fn, options)
  t.same(result.failed, [], 'no user blamed for a timeout')
  t.same(result.unresolved, [42], 'the slow user is left for a later, lone read')
  t.equal(r.read.size, 499, 'everyone else is read')
})

t.test('a reader that fails everything blames no one: after the list, its halves and quarters, all unresolved', async (t) => {
  for (const code of ['UNAVAILABLE', 'INTERNAL'] as const) {
    let calls = 0
    const result = await readBisecting(users(500), async () => { calls++; throw new ClientError(code, 'no') }, options)
    t.same({ failed: result.failed.length, unresolved: result.unresolved.length, calls }, { failed: 0, unresolved: 500, calls: 7 }, code)
    calls = 0
    const alone = await readBisecting([7], async () => { calls++; throw new ClientError(code, 'no') }, options)
    t.same({ failed: alone.failed.length, unresolved: alone.unresolved, calls }, { failed: 0, unresolved: [7], calls: 1 }, `${code}, one user alone: not blamed either`)
  }
})

t.test('a refusal that names the items is blamed even when nothing else was answered', async (t) => {
  const alone = await readBisecting([7], reader(new Set([7])).fn, options)
  t.same(alone.failed.map((f) => f.item), [7], 'one user over the limit, alone on the gateway')
  const all = await readBisecting(users(4), reader(new Set(users(4))).fn, options)
  t.equal(all.failed.length, 4, 'every user over the limit')
})

t.test('the budget bounds the requests and is spent on splits, not double-counted', async (t) => {
  const everyone = reader(new Set(users(500)))
  const all = await readBisecting(users(500), everyone.fn, options)
  t.ok(all.requests <= 64, `${all.requests} requests for 500 refused users`)
  t.equal(all.failed.length, 500, 'every user failed')
  const four = reader(new Set([1, 130, 260, 390]))
  const r4 = await readBisecting(users(500), four.fn, options)
  t.ok(r4.requests <= 64)
  t.same(r4.failed.map((f) => f.item).sort((a, b) => a - b), [1, 130, 260, 390], 'four refused users among 500 are singled out exactly')
  const eight = reader(new Set([1, 60, 130, 190, 260, 320, 390, 450]))
  const r8 = await readBisecting(users(500), eight.fn, options)
  t.ok(r8.requests <= 64)
  t.equal(eight.read.size + r8.failed.length, 500, 'each user either read or failed')
  t.ok(r8.failed.length < 60, `a budget spent on splits ends few innocent users (${r8.failed.length} ended for 8 refused)`)
})

t.test('a user re-read alone and refused: blamed only when the reader is known to answer', async (t) => {
  const alone = await readBisecting([7], reader(new Set([7]), 'INTERNAL').fn, options)
  t.same({ failed: alone.failed.length, unresolved: alone.unresolved }, { failed: 0, unresolved: [7] }, 'on its own, a refusal of one could be the reader failing everything')
  const known = await readBisecting([7], reader(new Set([7]), 'INTERNAL').fn, { ...options, readerAnswers: true })
  t.same({ failed: known.failed.map((f) => f.item), unresolved: known.unresolved }, { failed: [7], unresolved: [] }, 'the reader answered for others earlier: the user is refused for their own sake')
  const slow = await readBisecting([7], reader(new Set([7]), 'UNAVAILABLE').fn, { ...options, readerAnswers: true })
  t.same({ failed: slow.failed.length, unresolved: slow.unresolved }, { failed: 0, unresolved: [7] }, 'a timeout is still never blamed')
})
