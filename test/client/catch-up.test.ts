/**
 * The SDK against one gateway and one worker in this process: catch-up from history,
 * de-duplication and seq order, sends, and reconnecting after the server ends a socket.
 */
import { createSigner } from 'fast-jwt'
import t from 'tap'
import { ChannelTracker } from '../../src/client/channel-tracker.js'
import { ChatClient, ChatError, type Message } from '../../src/client/index.js'
import { connectUser, type TestClient } from '../helpers/client.js'
import { createDatabase, createVhost } from '../helpers/services.js'
import { JWT_SECRET, startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'
import { assertExactlyOnceInOrder, sdkUser } from './sdk.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
await startTestWorker(t, env)
const gw = await startTestGateway(t, env)

/** Sends `n` messages one after another and waits until the sender sees the last one (stored). */
async function sendMany (from: TestClient, target: { channelId: string } | { toUserId: string }, prefix: string, n: number): Promise<void> {
  for (let i = 1; i <= n; i++) {
    const ack = await from.send(target, `${prefix} ${i}`)
    if (!ack.ok) throw new Error(`send failed: ${JSON.stringify(ack)}`)
  }
  await from.waitFor<Message>('message:new', (m) => m.content === `${prefix} ${n}`, 30_000)
}

const historyOf = async (member: TestClient, query: { channelId: string } | { withUserId: string }) =>
  (await member.request<{ ok: true, messages: Message[] }>('history:fetch', { ...query, afterSeq: 0, limit: 500 })).messages

t.test('the tracker turns duplicated, out-of-order and gapped input into one seq-ordered stream, paging real history', async (t) => {
  const ann = await connectUser(t, gw.url, 'tr-ann')
  const { channelId } = await ann.request<{ channelId: string }>('channel:create', { name: 'tracker', memberIds: ['tr-bob'] })
  await sendMany(ann, { channelId }, 'tr', 12)
  const bob = await connectUser(t, gw.url, 'tr-bob')
  const stored = await historyOf(bob, { channelId })
  t.equal(stored.length, 12)

  const delivered: Message[] = []
  const afters: number[] = []
  const tracker = new ChannelTracker({
    pageSize: 5,
    fetchPage: async (channel, afterSeq, limit) => {
      afters.push(afterSeq)
      return (await bob.request<{ ok: true, messages: Message[] }>('history:fetch', { channelId: channel.id, afterSeq, limit })).messages
    },
    deliver: (m) => delivered.push(m),
    onFetchError: (err) => t.fail(String(err))
  })
  tracker.upsert({ id: channelId, kind: 'group', name: 'tracker', lastSeq: 0 }, 0)
  tracker.accept(stored[2]!) // seq 3: 1 and 2 are missing
  t.same(delivered, [], 'nothing before the gap is filled')
  await waitUntil(() => delivered.length === 12, 15_000, 'gap filled')
  t.same(afters, [0, 5, 10], 'paged by limit from the last delivered seq')
  for (const dup of [stored[0]!, stored[2]!, stored[11]!, stored[6]!]) tracker.accept(dup)
  assertExactlyOnceInOrder(t, delivered, stored, 'tracker')
  t.match(tracker.stats, { delivered: 12, fromHistory: 11 })
  t.ok(tracker.stats.duplicates >= 4, 'duplicates counted and dropped')
  t.same(tracker.positions(), { [channelId]: 12 })

  // Live messages that overtake each other are held until the hole closes.
  const later: Message[] = []
  const live = new ChannelTracker({ fetchPage: async () => [], deliver: (m) => later.push(m), onFetchError: () => {} })
  live.upsert({ id: channelId, kind: 'group', name: 'x', lastSeq: 9 }, 9)
  live.accept(stored[11]!)
  live.accept(stored[10]!)
  t.same(later, [])
  live.accept(stored[9]!)
  t.same(later.map((m) => m.seq), [10, 11, 12])
})

t.test('a client resuming from saved positions gets exactly what it missed, then live messages', async (t) => {
  const ann = await connectUser(t, gw.url, 'rs-ann')
  const { channelId } = await ann.request<{ channelId: string }>('channel:create', { name: 'resume', memberIds: ['rs-bob'] })
  await sendMany(ann, { channelId }, 'before', 9)
  const bob = await sdkUser(t, gw.url, 'rs-bob', { resumeFrom: { [channelId]: 4 }, historyPageSize: 2 })
  await bob.waitForCount(channelId, 5)
  t.same(bob.of(channelId).map((m) => m.seq), [5, 6, 7, 8, 9])
  await sendMany(ann, { channelId }, 'after', 3)
  await bob.waitForCount(channelId, 8)
  const stored = (await historyOf(ann, { channelId })).filter((m) => m.seq > 4)
  assertExactlyOnceInOrder(t, bob.of(channelId), stored, 'resumed')
  t.match(bob.client.stats(), { fromHistory: 5 })
  t.same(bob.client.positions(), { [channelId]: 12 })
})

t.test('catching up many channels at once stays within the gateway\'s cap of a user\'s waiting requests', async (t) => {
  const capped = await startTestGateway(t, env, { USER_REQUESTS_WAITING: '4' })
  const ann = await connectUser(t, gw.url, 'cap-ann')
  const channels: string[] = []
  for (let i = 0; i < 12; i++) {
    const { channelId } = await ann.request<{ channelId: string }>('channel:create', { name: `cap ${i}`, memberIds: ['cap-bob'] })
    channels.push(channelId)
    await sendMany(ann, { channelId }, `cap ${i}`, 2)
  }
  // Resuming from 0 in each: twelve catch-ups at once, each a history page.
  const resumeFrom = Object.fromEntries(channels.map((id) => [id, 0]))
  const bob = await sdkUser(t, capped.url, 'cap-bob', { resumeFrom })
  for (const id of channels) await bob.waitForCount(id, 2)
  t.same(bob.errors.map((e) => (e as { code?: string }).code), [], 'no read refused RATE_LIMITED, none retried')
  t.match(bob.client.stats(), { fromHistory: 24 })
  // Two more tabs of the same user at once: together past the gateway's cap.
  const tabs = await Promise.all([sdkUser(t, capped.url, 'cap-bob', { resumeFrom }), sdkUser(t, capped.url, 'cap-bob', { resumeFrom })])
  for (const tab of tabs) for (const id of channels) await tab.waitForCount(id, 2)
  t.same(tabs.flatMap((tab) => tab.errors.map((e) => (e as { code?: string }).code)), [], 'a page refused because other tabs hold the cap waits for a place, with no error')
  t.ok(tabs.every((tab) => tab.of(channels[0]!).length === 2), 'and each tab gets every message once')
})

t.test('backlog: the first session delivers only the latest messages of known channels', async (t) => {
  const ann = await connectUser(t, gw.url, 'bl-ann')
  const { channelId } = await ann.request<{ channelId: string }>('channel:create', { name: 'backlog', memberIds: ['bl-bob'] })
  await sendMany(ann, { channelId }, 'old', 6)
  const bob = await sdkUser(t, gw.url, 'bl-bob', { backlog: 2 })
  await bob.waitForCount(channelId, 2)
  const quiet = await sdkUser(t, gw.url, 'bl-bob')
  await ann.send({ channelId }, 'new')
  await bob.waitForCount(channelId, 3)
  await quiet.waitForCount(channelId, 1)
  t.same(bob.of(channelId).map((m) => m.content), ['old 5', 'old 6', 'new'])
  t.same(quiet.of(channelId).map((m) => m.content), ['new'], 'backlog 0: only what comes after')
})

t.test('send: a generated clientMsgId, idempotent retries, refusals surfaced without retrying', async (t) => {
  const cy = await sdkUser(t, gw.url, 'sd-cy')
  const dee = await sdkUser(t, gw.url, 'sd-dee')
  const { clientMsgId } = await cy.client.send({ toUserId: 'sd-dee' }, 'hello dee')
  t.match(clientMsgId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  await cy.client.send({ toUserId: 'sd-dee' }, 'hello dee', { clientMsgId })
  await cy.client.send({ toUserId: 'sd-dee' }, 'second')
  const dm = () => dee.received.filter((m) => m.senderId === 'sd-cy')
  await waitUntil(() => dm().length === 2, 15_000)
  t.same(dm().map((m) => m.content), ['hello dee', 'second'], 'the retried send was stored once')
  t.equal(dee.joined.length, 1, 'a first direct message announces its channel')
  t.match(dee.joined[0], { kind: 'direct', peerId: 'sd-cy', name: 'sd-cy' })

  const empty = await cy.client.send({ toUserId: 'sd-dee' }, '').catch((err: unknown) => err)
  t.type(empty, ChatError)
  t.equal((empty as ChatError).code, 'VALIDATION')
  const owner = await connectUser(t, gw.url, 'sd-owner')
  const { channelId } = await owner.request<{ channelId: string }>('channel:create', { name: 'closed', memberIds: [] })
  await t.rejects(cy.client.send({ channelId }, 'let me in'), { name: 'ChatError', code: 'FORBIDDEN' })
  await t.rejects(cy.client.history({ channelId }), { code: 'FORBIDDEN' })

  // A send made before any session waits for one.
  const late = await sdkUser(t, gw.url, 'sd-late')
  late.client.close()
  await t.rejects(late.client.send({ toUserId: 'sd-dee' }, 'too late'), { code: 'CLIENT_CLOSED' })
})

t.test('a direct channel created by its first message is usable by id at once: typing, sends, history', async (t) => {
  const ora = await sdkUser(t, gw.url, 'dc-ora')
  const pat = await sdkUser(t, gw.url, 'dc-pat')
  const typing: Array<{ channelId: string, userId: string }> = []
  ora.client.on('typing', (e) => typing.push(e))
  await ora.client.send({ toUserId: 'dc-pat' }, 'first')
  await waitUntil(() => pat.received.length === 1 && ora.received.length === 1, 15_000)
  const channelId = pat.received[0]!.channelId
  t.match(pat.client.channels().find((c) => c.id === channelId), { kind: 'direct', peerId: 'dc-ora' })
  await pat.client.typing(channelId)
  await waitUntil(() => typing.length > 0, 15_000)
  t.same(typing[0], { channelId, userId: 'dc-pat' })
  await pat.client.send({ channelId }, 'reply by channel id')
  await ora.waitForCount(channelId, 2) // an ack means queued; arrival means stored
  t.same(ora.of(channelId).map((m) => m.seq), [1, 2])
  t.same((await pat.client.history({ channelId })).map((m) => m.content), ['first', 'reply by channel id'])
})

t.test('a channel joined while connected is announced and delivered from its first message; typing passes through', async (t) => {
  const gil = await connectUser(t, gw.url, 'jn-gil')
  const hal = await sdkUser(t, gw.url, 'jn-hal')
  const typing: Array<{ channelId: string, userId: string }> = []
  hal.client.on('typing', (e) => typing.push(e))
  const { channelId } = await gil.request<{ channelId: string }>('channel:create', { name: 'joined live', memberIds: ['jn-hal'] })
  await waitUntil(() => hal.joined.some((c) => c.id === channelId), 15_000)
  t.match(hal.client.channels().find((c) => c.id === channelId), { name: 'joined live', kind: 'group' })
  await gil.request('typing', { channelId })
  await waitUntil(() => typing.length > 0, 15_000)
  t.same(typing[0], { channelId, userId: 'jn-gil' })
  await sendMany(gil, { channelId }, 'g', 3)
  await hal.waitForCount(channelId, 3)
  assertExactlyOnceInOrder(t, hal.of(channelId), await historyOf(gil, { channelId }), 'joined channel')

  await hal.client.send({ channelId }, 'from hal')
  await hal.waitForCount(channelId, 4)
  await hal.client.leaveChannel(channelId)
  await waitUntil(() => hal.client.channels().every((c) => c.id !== channelId), 15_000)
})

t.test('after the server ends the socket (drain hint, then a kick), the client comes back and catches up', async (t) => {
  const kim = await connectUser(t, gw.url, 'sv-kim')
  const { channelId } = await kim.request<{ channelId: string }>('channel:create', { name: 'kicked', memberIds: ['sv-lee'] })
  await sendMany(kim, { channelId }, 'k', 2)
  const lee = await sdkUser(t, gw.url, 'sv-lee', { backlog: 100 })
  await lee.waitForCount(channelId, 2)
  const tokensBefore = lee.tokens

  // What a draining gateway does: session:end with a reconnect hint, then a server-side disconnect.
  const kickedAt = Date.now()
  gw.app.io.in('u:sv-lee').emit('session:end', { code: 'DRAINING', message: 'test drain', reconnectInMs: 1500 })
  gw.app.io.in('u:sv-lee').disconnectSockets(true)
  await sendMany(kim, { channelId }, 'while away', 4)
  await sendMany(kim, { toUserId: 'sv-lee' }, 'direct while away', 3)
  await lee.waitForSessions(2)
  const reconnecting = lee.states.find((s) => s.state === 'connecting' && s.at >= kickedAt)
  t.ok(reconnecting !== undefined && reconnecting.at - kickedAt >= 1400, 'waited for reconnectInMs before reconnecting')
  t.match(lee.states.find((s) => s.state === 'disconnected'), { reason: /DRAINING/ })
  t.ok(lee.tokens > tokensBefore, 'asked the token function again')

  await lee.waitForCount(channelId, 6)
  assertExactlyOnceInOrder(t, lee.of(channelId), await historyOf(kim, { channelId }), 'group after the kick')
  const direct = () => lee.received.filter((m) => m.kind === 'direct' && m.senderId === 'sv-kim')
  await waitUntil(() => direct().length === 3, 15_000)
  assertExactlyOnceInOrder(t, direct(), await historyOf(kim, { withUserId: 'sv-lee' }), 'direct channel created while away')
})

t.test('an expired token ends the session; a token function gets a fresh one and nothing is missed', async (t) => {
  const shortLived = createSigner({ key: JWT_SECRET, expiresIn: 2000 })
  const max = await connectUser(t, gw.url, 'ex-max')
  let tokens = 0
  const client = new ChatClient({ url: gw.url, token: () => { tokens++; return shortLived({ sub: 'ex-ned' }) } })
  t.teardown(() => client.close())
  const got: Message[] = []
  const reasons: string[] = []
  client.on('message', (m) => got.push(m))
  client.on('state', (state, d) => { if (state === 'disconnected') reasons.push(d.reason ?? '') })
  await waitUntil(() => client.stats().sessions >= 2, 30_000, 'a second session after expiry')
  t.ok(reasons.some((r) => r.startsWith('TOKEN_EXPIRED')), 'the server said why')
  t.ok(tokens >= 2)
  for (let i = 1; i <= 3; i++) await max.send({ toUserId: 'ex-ned' }, `after expiry ${i}`)
  await waitUntil(() => got.length === 3, 15_000)
  t.same(got.map((m) => m.seq), [1, 2, 3])
})

t.test('a static token the gateway refuses closes the client with UNAUTHORIZED', async (t) => {
  const client = new ChatClient({ url: gw.url, token: 'not-a-jwt' })
  t.teardown(() => client.close())
  const err = await new Promise<ChatError>((resolve) => client.on('error', resolve))
  t.equal(err.code, 'UNAUTHORIZED')
  await waitUntil(() => client.state === 'closed', 5000)
  t.throws(() => new ChatClient({ url: [], token: 'x' }), { name: 'TypeError', message: /url/ })
})

t.test('a gateway that connects but never opens the session is given up for the next URL', async (t) => {
  // Its own vhost with no worker: session.open is never answered.
  const { url: lonelyAmqp } = await createVhost(t)
  const stuck = await startTestGateway(t, { amqpUrl: lonelyAmqp, databaseUrl }, { RPC_TIMEOUT_MS: '500' })
  const user = await sdkUser(t, [stuck.url, gw.url], 'stuck-sam', { sessionTimeoutMs: 1500 })
  t.equal(user.client.url, gw.url, 'the session opened on the second gateway')
  t.ok(user.errors.some((e) => e instanceof ChatError && e.code === 'CLIENT_TIMEOUT' && e.message.includes(stuck.url)), 'the timeout was reported')
})

t.test('a url function that throws is reported and retried, not an unhandled rejection', async (t) => {
  const user = await sdkUser(t, (attempt) => {
    if (attempt === 0) throw new Error('no gateway known yet')
    return gw.url
  }, 'url-uma')
  t.equal(user.client.url, gw.url)
  t.ok(user.errors.some((e) => e instanceof ChatError && e.code === 'CLIENT_URL'), 'CLIENT_URL reported')
})
