/**
 * The worker's request handlers on a real database: what a gateway is answered when
 * announcing a committed change is slow (a broker under pressure confirms late).
 */
import { createServer, type AddressInfo, type Socket } from 'node:net'
import t from 'tap'
import type postgres from 'postgres'
import { loadConfig } from '../../src/config.js'
import { openDatabase, type Database } from '../../src/db/client.js'
import { createChannelsRepository } from '../../src/db/repositories/channels.js'
import { createMessagesRepository } from '../../src/db/repositories/messages.js'
import { silentLogger } from '../../src/log.js'
import { createRpcHandler, type RpcHandlerDeps } from '../../src/worker/rpc-handlers.js'
import { openConnection } from '../../src/broker/connection.js'
import { RPC_SENT_AT_HEADER, RPC_TIMEOUT_HEADER, WorkerRpc } from '../../src/broker/rpc.js'
import { brokerNames, ROUTE_RPC } from '../../src/broker/topology.js'
import type { Delivery } from '../../src/contracts/envelopes.js'
import { hash32 } from '../../src/hash.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { sleep, startTestWorker } from '../helpers/system.js'

const url = await createDatabase(t)
const handle = openDatabase({ url, max: 4 })
t.teardown(() => handle.close())
const sql = sqlClient(t, url)

/**
 * Runs `take` in a transaction and keeps it open for `ms` after it returns. `held` settles
 * once the lock is taken: a fixed pause before the caller goes on is not enough on a busy
 * machine, where the lock can come after the request it is meant to block.
 */
const holdLock = (take: (tx: postgres.TransactionSql) => Promise<unknown>, ms: number) => {
  let onHeld!: () => void
  const held = new Promise<void>((resolve) => { onHeld = resolve })
  const done = sql.begin(async (tx) => {
    await take(tx)
    onHeld()
    await sleep(ms)
  })
  // A failure to take the lock must not leave the caller waiting on `held`.
  done.catch(() => onHeld())
  return { held, done }
}

/** A handler on `db` (the test database unless given) with the settings these tests share. */
function handlerWith ({ db = handle.db, ...deps }: Partial<RpcHandlerDeps> & { db?: Database } = {}) {
  return createRpcHandler({
    channels: createChannelsRepository(db),
    messages: createMessagesRepository(db),
    notify: async () => {},
    maxChannelMembers: 100,
    maxUserGroups: 1000,
    dbTimeoutMs: 10_000,
    log: silentLogger,
    onDatabaseState: () => {},
    maxListedChannels: 100_000,
    ...deps
  })
}

/** Holds, for `ms`, the lock a create naming `userId` takes (another create, a slow disk). */
const holdGroupLock = (userId: string, ms: number) =>
  holdLock((tx) => tx`select pg_advisory_xact_lock(${0x63686174}::int, ${hash32(userId) % 64}::int)`, ms)

t.test('a committed create or leave is answered ok however slowly it is announced, and the database stays up', async (t) => {
  const states: boolean[] = []
  const handler = handlerWith({ notify: () => sleep(600), dbTimeoutMs: 300, onDatabaseState: (up) => states.push(up) })
  const created = await handler({ op: 'channel.create', userId: 'ann', name: 'slow news', memberIds: ['bob'] })
  t.match(created.response, { ok: true, result: { channel: { name: 'slow news' } } })
  const channelId = (created.response as { result: { channel: { id: string } } }).result.channel.id
  const left = await handler({ op: 'channel.leave', userId: 'bob', channelId })
  t.same(left.response, { ok: true, result: {} })
  t.notOk(states.includes(false), 'never reported the database down')
  const listed = await handler({ op: 'channels.list', userId: 'ann' })
  t.match(listed.response, { ok: true, result: { channels: [{ id: channelId }] } }, 'one channel: nothing to retry')
})

t.test('an announcement the broker confirms late does not hold the answer past the gateway\'s RPC timeout', async (t) => {
  // The announcement is confirmed within the worker's own 10 s publish timeout, past the gateway's 5 s.
  const handler = handlerWith({ notify: () => sleep(6000), dbTimeoutMs: 5000 })
  const started = Date.now()
  const created = await handler({ op: 'channel.create', userId: 'cy', name: 'late news', memberIds: ['dee'] })
  t.match(created.response, { ok: true })
  t.ok(Date.now() - started < 4000, `answered in ${Date.now() - started} ms, under RPC_TIMEOUT_MS (5 s)`)
})

t.test('a create naming as many members as MAX_CHANNEL_MEMBERS allows (up to 100,000) succeeds', async (t) => {
  const config = loadConfig('worker', { MAX_CHANNEL_MEMBERS: '100000' })
  const handler = handlerWith({ maxChannelMembers: config.MAX_CHANNEL_MEMBERS })
  // Past the 65,535 bind parameters one statement may carry.
  const memberIds = Array.from({ length: 70_000 }, (_, i) => `big-${i}`)
  const created = await handler({ op: 'channel.create', userId: 'big-owner', name: 'everyone', memberIds })
  t.match(created.response, { ok: true, result: { channel: { name: 'everyone' } } })
  const listed = await handler({ op: 'memberships.list', userIds: ['big-0', 'big-69999'] })
  t.match(listed.response, { ok: true, result: { memberships: [{ userId: 'big-0', channels: [{ name: 'everyone' }] }, { userId: 'big-69999', channels: [{ name: 'everyone' }] }] } }, 'the last named member is in it too')
  // MEMBERSHIPS_MAX_CHANNELS: an answer listing more channels in all is refused, coded, not built.
  const capped = handlerWith({ maxChannelMembers: 1000, maxListedChannels: 1 })
  t.match((await capped({ op: 'memberships.list', userIds: ['big-0', 'big-1'] })).response, { ok: false, error: { code: 'LIMIT_REACHED' } }, 'two channels in all, one allowed')
  t.match((await capped({ op: 'memberships.list', userIds: ['big-0'] })).response, { ok: true, result: { memberships: [{ userId: 'big-0', channels: [{ name: 'everyone' }] }] } }, 'one is answered')
  // The same bound for one user's own list: a session open or channels:list of a user in
  // more channels is refused, coded, rather than an answer no broker message may carry.
  await handler({ op: 'channel.create', userId: 'big-owner', name: 'second', memberIds: ['big-1'] })
  for (const op of ['session.open', 'channels.list'] as const) {
    t.match((await capped({ op, userId: 'big-1' })).response, { ok: false, error: { code: 'LIMIT_REACHED', message: /more than 1 channels/ } }, `${op}: two channels, one allowed`)
    t.match((await capped({ op, userId: 'big-0' })).response, { ok: true, result: { channels: [{ name: 'everyone' }] } }, `${op}: one is answered`)
  }
})

t.test('a create or leave the worker answers UNAVAILABLE changed nothing: the client\'s retry does it once, announced', async (t) => {
  const notices: Delivery[] = []
  const handler = handlerWith({ notify: async (d) => { notices.push(d) }, dbTimeoutMs: 300 })
  const holding = holdGroupLock('tim-ann', 2000)
  await holding.held
  const first = await handler({ op: 'channel.create', userId: 'tim-ann', name: 'team', memberIds: ['tim-bob'] })
  t.match(first.response, { ok: false, error: { code: 'UNAVAILABLE' } }, 'the caller is told it failed')
  await holding.done
  await sleep(300)
  t.same(await sql`select id from channels where created_by = 'tim-ann'`, [], 'and nothing was created')
  const retry = await handler({ op: 'channel.create', userId: 'tim-ann', name: 'team', memberIds: ['tim-bob'] })
  t.match(retry.response, { ok: true })
  t.equal((await sql`select id from channels where created_by = 'tim-ann'`).length, 1, 'one channel after the retry')
  t.equal(notices.filter((n) => n.t === 'joined').length, 2, 'announced to both members')

  const channelId = (retry.response as { result: { channel: { id: string } } }).result.channel.id
  const locked = holdLock((tx) => tx`select 1 from members where channel_id = ${channelId} and user_id = 'tim-bob' for update`, 2000)
  await locked.held
  const left = await handler({ op: 'channel.leave', userId: 'tim-bob', channelId })
  t.match(left.response, { ok: false, error: { code: 'UNAVAILABLE' } })
  await locked.done
  await sleep(300)
  t.equal((await sql`select 1 from members where channel_id = ${channelId} and user_id = 'tim-bob'`).length, 1, 'still a member')
  const again = await handler({ op: 'channel.leave', userId: 'tim-bob', channelId })
  t.same(again.response, { ok: true, result: {} }, 'the retry leaves')
  t.equal(notices.filter((n) => n.t === 'left').length, 1, 'announced once')
})

t.test('the time a request waited before the worker took it is taken from its write\'s time', async (t) => {
  const states: boolean[] = []
  const handler = handlerWith({ onDatabaseState: (up) => states.push(up) })
  // 5 s from the caller, 3.5 s of them spent in the queue: 0.5 s are left once the answer's
  // margin is kept, less than the lock is held, so the create gives up rather than commit
  // after its caller did.
  const holding = holdGroupLock('wait-ann', 2000)
  await holding.held
  const started = Date.now()
  const late = await handler({ op: 'channel.create', userId: 'wait-ann', name: 'team', memberIds: ['wait-bob'] }, { timeoutMs: 5000, waitedMs: 3500 })
  const took = Date.now() - started
  t.match(late.response, { ok: false, error: { code: 'UNAVAILABLE' } })
  t.ok(took < 1500, `gave up in ${took} ms, before the caller's 1.5 s left`)
  await holding.done
  await sleep(300)
  t.same(await sql`select id from channels where created_by = 'wait-ann'`, [], 'nothing was created')

  const expired = await handler({ op: 'channel.create', userId: 'wait-ann', name: 'team', memberIds: ['wait-bob'] }, { timeoutMs: 5000, waitedMs: 4500 })
  t.match(expired.response, { ok: false, error: { code: 'UNAVAILABLE', message: /waited past/ } }, 'one whose caller has (almost) given up is not run at all')
  await sleep(300)
  t.same(await sql`select id from channels where created_by = 'wait-ann'`, [], 'nothing was created')
  t.notOk(states.includes(false), 'running out of the caller\'s time is not the database down')
  const read = await handler({ op: 'channels.list', userId: 'wait-ann' }, { timeoutMs: 5000, waitedMs: 5000 })
  t.match(read.response, { ok: true }, 'a read is answered however long it seems to have waited: a worker clock ahead must not refuse every read')

  const fresh = await handler({ op: 'channel.create', userId: 'wait-ann', name: 'team', memberIds: ['wait-bob'] }, { timeoutMs: 5000, waitedMs: 100 })
  t.match(fresh.response, { ok: true }, 'one with time left is done')
})

t.test('a write that gets no connection in time still reports the database down, whoever\'s deadline it ran out of', async (t) => {
  // A server that accepts and never answers: a database behind a dead proxy.
  const held = new Set<Socket>()
  const silent = createServer((socket) => { held.add(socket) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  const dead = openDatabase({ url: `postgres://postgres@127.0.0.1:${(silent.address() as AddressInfo).port}/none`, max: 1 })
  t.teardown(async () => {
    // The client first: it would connect again to replace a socket destroyed under it.
    await dead.close()
    for (const socket of held) socket.destroy()
    await new Promise<void>((resolve) => silent.close(() => resolve()))
  })
  const states: boolean[] = []
  const handler = handlerWith({ db: dead.db, onDatabaseState: (up) => states.push(up) })
  const answer = await handler({ op: 'channel.create', userId: 'dead-ann', name: 'team', memberIds: [] }, { timeoutMs: 2000, waitedMs: 0 })
  t.match(answer.response, { ok: false, error: { code: 'UNAVAILABLE' } })
  t.same(states, [false], 'reported down')
})

t.test('a worker reads when the request was sent: one that waited most of its caller\'s timeout changes nothing', async (t) => {
  const amqpUrl = (await createVhost(t)).url
  await startTestWorker(t, { amqpUrl, databaseUrl: url })
  const conn = openConnection({ url: amqpUrl, name: 'test-raw-gateway', heartbeatSeconds: 5, log: silentLogger })
  t.teardown(() => conn.close())
  const client = conn.createRPCClient({ confirm: true, timeout: 5000 })
  t.teardown(() => client.close())
  const send = (sentAgoMs: number) => client.send({
    exchange: brokerNames('chat').incoming,
    routingKey: ROUTE_RPC,
    headers: { [RPC_TIMEOUT_HEADER]: 5000, [RPC_SENT_AT_HEADER]: Date.now() - sentAgoMs }
  }, { op: 'channel.create', userId: 'raw-ann', name: 'team', memberIds: ['raw-bob'] })
  const stale = await send(4800)
  t.match(stale.body, { ok: false, error: { code: 'UNAVAILABLE' } }, 'sent 4.8 s ago with 5 s to answer: refused')
  t.same(await sql`select id from channels where created_by = 'raw-ann'`, [], 'and nothing was created')
  const recent = await send(50)
  t.match(recent.body, { ok: true, result: { channel: { name: 'team' } } }, 'sent just now: done')
})

t.test('a gateway that waits less than DB_TIMEOUT_MS is not told UNAVAILABLE for a create that then commits', async (t) => {
  const amqpUrl = (await createVhost(t)).url
  await startTestWorker(t, { amqpUrl, databaseUrl: url }) // DB_TIMEOUT_MS: 10 s by default
  const conn = openConnection({ url: amqpUrl, name: 'test-gateway', heartbeatSeconds: 5, log: silentLogger })
  t.teardown(() => conn.close())
  // RPC_TIMEOUT_MS's default: the worker keeps answerMarginMs (1 s of 5) for the answer's
  // way back. At 1.5 s that margin was 300 ms, of which an idle machine already used 200.
  const rpcTimeoutMs = 5000
  const rpc = new WorkerRpc(conn, brokerNames('chat'), rpcTimeoutMs)
  t.teardown(() => rpc.close())
  const holding = holdGroupLock('gw-ann', rpcTimeoutMs + 1000) // past the worker's deadline (4 s)
  await holding.held
  const started = Date.now()
  await t.rejects(rpc.call({ op: 'channel.create', userId: 'gw-ann', name: 'team', memberIds: ['gw-bob'] }), { code: 'UNAVAILABLE' })
  t.ok(Date.now() - started < rpcTimeoutMs, `answered by the worker in ${Date.now() - started} ms, before the gateway gave up (${rpcTimeoutMs} ms)`)
  await holding.done
  await sleep(500)
  t.same(await sql`select id from channels where created_by = 'gw-ann'`, [], 'nothing was created behind the UNAVAILABLE')
  const retried = await rpc.call({ op: 'channel.create', userId: 'gw-ann', name: 'team', memberIds: ['gw-bob'] })
  t.equal(retried.channel.name, 'team')
  t.equal((await sql`select id from channels where created_by = 'gw-ann'`).length, 1, 'one channel after the retry')
})
