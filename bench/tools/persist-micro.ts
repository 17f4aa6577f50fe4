/**
 * Micro-benchmark of the worker's database step alone: persistBatch() of the real
 * repository on a fresh database, in this process, so its CPU (process.cpuUsage)
 * and wall time per message can be told apart from the broker's and the socket's.
 *
 *   node --import tsx bench/tools/persist-micro.ts [--batch 250] [--batches 40] [--target dm|group]
 */
import { randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import { cleanupAll, installSignalHandlers } from '../lib/cleanup.js'
import { createDatabase } from '../lib/services.js'
import { createGroups } from '../lib/system.js'
import { openDatabase } from '../../src/db/client.js'
import { createMessagesRepository } from '../../src/db/repositories/messages.js'
import type { SendCommand } from '../../src/contracts/envelopes.js'
import postgres from 'postgres'

const { values } = parseArgs({ options: { batch: { type: 'string', default: '250' }, batches: { type: 'string', default: '40' }, target: { type: 'string', default: 'dm' }, users: { type: 'string', default: '1000' } } })
installSignalHandlers()
const batch = Number(values.batch)
const batches = Number(values.batches)
const users = Number(values.users)
try {
  const url = await createDatabase(`bench_micro_${Date.now().toString(36)}`)
  const handle = openDatabase({ url, max: 10 })
  const repo = createMessagesRepository(handle.db)
  const ids = Array.from({ length: users }, (_, i) => `m${i}`)
  const channelOf: string[] = []
  if (values.target === 'group') {
    const sql = postgres(url, { max: 1, onnotice: () => {} })
    const groups = Array.from({ length: users / 10 }, (_, c) => ids.slice(c * 10, c * 10 + 10))
    const ch = await createGroups(sql, groups)
    groups.forEach((g, c) => g.forEach(() => channelOf.push(ch[c]!)))
    await sql.end()
  }
  let k = 0
  const next = (): SendCommand => {
    const u = k++ % users
    const base = { v: 1 as const, senderId: ids[u]!, clientMsgId: randomUUID(), content: 'x'.repeat(100) }
    return values.target === 'group' ? { ...base, channelId: channelOf[u]! } : { ...base, toUserId: ids[u ^ 1]! }
  }
  // Warm-up: creates the direct channels and JIT-compiles the path.
  for (let i = 0; i < Math.ceil(users / batch) + 5; i++) await repo.persistBatch(Array.from({ length: batch }, next))
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < batches; i++) await repo.persistBatch(Array.from({ length: batch }, next))
  const wall = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  const n = batch * batches
  process.stdout.write(`${values.target}: ${n} messages in batches of ${batch}: ${(n / (wall / 1000)).toFixed(0)} msg/s on one connection at a time, ` +
    `${(wall / batches).toFixed(1)} ms per batch, worker-side CPU ${((cpu.user + cpu.system) / n).toFixed(1)} µs/msg (${(100 * (cpu.user + cpu.system) / 1000 / wall).toFixed(0)} % of the wall time)\n`)
  await handle.close()
} finally {
  await cleanupAll()
}
