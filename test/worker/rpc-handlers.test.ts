/**
 * The worker's request handlers on a real database: what a gateway is answered when
 * announcing a committed change is slow (a broker under pressure confirms late).
 */
import t from 'tap'
import { loadConfig } from '../../src/config.js'
import { openDatabase } from '../../src/db/client.js'
import { createChannelsRepository } from '../../src/db/repositories/channels.js'
import { createMessagesRepository } from '../../src/db/repositories/messages.js'
import { silentLogger } from '../../src/log.js'
import { createRpcHandler } from '../../src/worker/rpc-handlers.js'
import { createDatabase } from '../helpers/services.js'
import { sleep } from '../helpers/system.js'

const handle = openDatabase({ url: await createDatabase(t), max: 2 })
t.teardown(() => handle.close())

t.test('a committed create or leave is answered ok however slowly it is announced, and the database stays up', async (t) => {
  const states: boolean[] = []
  const handler = createRpcHandler({
    channels: createChannelsRepository(handle.db),
    messages: createMessagesRepository(handle.db),
    notify: () => sleep(600),
    maxChannelMembers: 100,
    maxUserGroups: 1000,
    dbTimeoutMs: 300,
    log: silentLogger,
    onDatabaseState: (up) => states.push(up)
  })
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
  const handler = createRpcHandler({
    channels: createChannelsRepository(handle.db),
    messages: createMessagesRepository(handle.db),
    notify: () => sleep(6000), // within the worker's own 10 s publish timeout, past the gateway's 5 s
    maxChannelMembers: 100,
    maxUserGroups: 1000,
    dbTimeoutMs: 5000,
    log: silentLogger,
    onDatabaseState: () => {}
  })
  const started = Date.now()
  const created = await handler({ op: 'channel.create', userId: 'cy', name: 'late news', memberIds: ['dee'] })
  t.match(created.response, { ok: true })
  t.ok(Date.now() - started < 4000, `answered in ${Date.now() - started} ms, under RPC_TIMEOUT_MS (5 s)`)
})

t.test('a create naming as many members as MAX_CHANNEL_MEMBERS allows (up to 100,000) succeeds', async (t) => {
  const config = loadConfig('worker', { MAX_CHANNEL_MEMBERS: '100000' })
  const handler = createRpcHandler({
    channels: createChannelsRepository(handle.db),
    messages: createMessagesRepository(handle.db),
    notify: async () => {},
    maxChannelMembers: config.MAX_CHANNEL_MEMBERS,
    maxUserGroups: 1000,
    dbTimeoutMs: 10_000,
    log: silentLogger,
    onDatabaseState: () => {}
  })
  // Past the 65,535 bind parameters one statement may carry.
  const memberIds = Array.from({ length: 70_000 }, (_, i) => `big-${i}`)
  const created = await handler({ op: 'channel.create', userId: 'big-owner', name: 'everyone', memberIds })
  t.match(created.response, { ok: true, result: { channel: { name: 'everyone' } } })
  const listed = await handler({ op: 'memberships.list', userIds: ['big-0', 'big-69999'] })
  t.match(listed.response, { ok: true, result: { memberships: [{ userId: 'big-0', channels: [{ name: 'everyone' }] }, { userId: 'big-69999', channels: [{ name: 'everyone' }] }] } }, 'the last named member is in it too')
})
