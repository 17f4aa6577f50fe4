/**
 * Hostile clients on a real gateway and worker: a few hundred random payloads to
 * every event and to unknown events, raw frames that break the Socket.IO protocol,
 * and frames over the size limit. Every ack is a coded error (or ok for the rare valid
 * payload), bad frames cost the sender its connection, nothing invalid is stored, and
 * the gateway stays healthy and keeps delivering.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import fc from 'fast-check'
import { ChannelCreateSchema, ChannelLeaveSchema, ChannelsListSchema, HistoryFetchSchema, MessageSendSchema, TypingSchema, type Message } from '../../src/contracts/protocol.js'
import { compile } from '../../src/contracts/validate.js'
import { CLIENT_ERROR_CODES } from '../../src/errors.js'
import { disconnected, emitAny, emitRaw, rawConnection } from '../helpers/attack.js'
import { connectUser, settle, tokenFor } from '../helpers/client.js'
import { parsePrometheus } from '../helpers/prometheus.js'
import {
  badInt, badText, badUserId, badUuid, extraKey, hostileValue, spec, validText, validUserId, validUuid, withKey
} from '../helpers/hostile.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, env)
// A generous rate limit, so that the fuzz reaches validation (limits.test.ts covers the limit).
const gw = await startTestGateway(t, env, { SOCKET_RATE_PER_SEC: '100000', SOCKET_RATE_BURST: '100000' })

type Ack = { ok: boolean, error?: { code: string, message: string }, clientMsgId?: string, channelId?: string }
const EVENTS = {
  'message:send': MessageSendSchema,
  'channel:create': ChannelCreateSchema,
  'channel:leave': ChannelLeaveSchema,
  'history:fetch': HistoryFetchSchema,
  'channels:list': ChannelsListSchema,
  typing: TypingSchema
} as const
type EventName = keyof typeof EVENTS
const validators = new Map<string, (x: unknown) => { ok: boolean }>(Object.entries(EVENTS).map(([e, s]) => [e, compile(s)]))
/** Names socket.io-client itself refuses to emit; raw frames below send them anyway. */
const CLIENT_RESERVED = new Set(['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener'])
const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x)

/** Checks an ack's shape; returns its code ('ok' for success). */
function codeOf (ack: unknown): string {
  if (!isObj(ack) || typeof ack.ok !== 'boolean') return `malformed ack ${JSON.stringify(ack)}`
  if (ack.ok) return 'ok'
  const error = ack.error
  if (!isObj(error) || typeof error.code !== 'string' || typeof error.message !== 'string') return `malformed error ${JSON.stringify(ack)}`
  return (CLIENT_ERROR_CODES as readonly string[]).includes(error.code) ? error.code : `unknown code ${error.code}`
}

t.test('a few hundred random payloads to every event and to unknown events: coded answers, nothing invalid stored, gateway healthy', async (t) => {
  const alice = await connectUser(t, gw.url, 'alice')
  const group = await alice.request<Ack>('channel:create', { name: 'real', memberIds: ['fuzz-1'] })
  const hello = await alice.send({ toUserId: 'fuzz-1' }, 'hello')
  const direct = (await alice.waitFor<Message>('message:new', (m) => m.clientMsgId === hello.clientMsgId)).channelId
  const realIds = [group.channelId!, direct]
  const [{ n: rowsBefore }] = await sql<[{ n: number }]>`select count(*)::int as n from messages`

  // Real ids and names are mixed in, so that some payloads pass validation and reach membership checks and the worker.
  const channelId = fc.oneof({ arbitrary: fc.constantFrom(...realIds), weight: 3 }, { arbitrary: validUuid, weight: 2 }, badUuid, hostileValue)
  const userId = fc.oneof({ arbitrary: fc.constantFrom('alice', 'fuzz-0', 'fuzz-1', 'bob'), weight: 3 }, { arbitrary: validUserId, weight: 2 }, badUserId, hostileValue)
  const mostly = <T>(a: fc.Arbitrary<T>) => fc.oneof({ arbitrary: a, weight: 5 }, hostileValue)
  const payloads: Record<EventName, fc.Arbitrary<unknown>> = {
    'message:send': fc.oneof(
      fc.record({
        clientMsgId: mostly(validUuid),
        content: fc.oneof({ arbitrary: validText(1, 60), weight: 4 }, fc.constantFrom('x'.repeat(4000), 'x'.repeat(4001), 'a\u0000b', 'a\ud800b', ''), badText(60), hostileValue),
        toUserId: userId,
        channelId
      }, { requiredKeys: [] }),
      // Well-formed direct messages, so that the storing path is fuzzed too.
      fc.record({ clientMsgId: validUuid, content: validText(1, 60), toUserId: fc.oneof(fc.constantFrom('alice', 'bob'), validUserId) })
    ),
    'channel:create': fc.record({ name: fc.oneof({ arbitrary: validText(1, 100), weight: 3 }, badText(100), hostileValue), memberIds: mostly(fc.array(userId, { maxLength: 4 })) }, { requiredKeys: [] }),
    'channel:leave': fc.record({ channelId }, { requiredKeys: [] }),
    'history:fetch': fc.record({
      channelId,
      withUserId: userId,
      afterSeq: fc.oneof(fc.nat(5), badInt(0, Number.MAX_SAFE_INTEGER)),
      beforeSeq: fc.oneof(fc.integer({ min: 1, max: 5 }), badInt(1, Number.MAX_SAFE_INTEGER)),
      limit: fc.oneof(fc.integer({ min: 1, max: 500 }), badInt(1, 500))
    }, { requiredKeys: [] }),
    'channels:list': fc.oneof(fc.constant({}), hostileValue),
    typing: fc.record({ channelId }, { requiredKeys: [] })
  }
  const payloadFor = (event: EventName) => fc.oneof(
    { arbitrary: payloads[event], weight: 4 },
    fc.tuple(payloads[event], extraKey, fc.jsonValue({ maxDepth: 2 })).map(([p, k, v]) => isObj(p) ? withKey(p, k, v) : p),
    fc.jsonValue({ maxDepth: 3 }),
    hostileValue
  )
  const unknownEvent = fc.oneof(
    fc.constantFrom('error', 'message', 'message:new', 'session:ready', 'session:end', 'constructor', '__proto__', 'toString', 'hasOwnProperty', 'MESSAGE:SEND', 'message:send ', ''),
    fc.string({ maxLength: 20 })
  ).filter((e) => !CLIENT_RESERVED.has(e) && !Object.hasOwn(EVENTS, e))

  interface Case { event: string, args: unknown[], ack: boolean, known: boolean }
  const known = fc.constantFrom(...Object.keys(EVENTS) as EventName[]).chain((event) => fc.oneof(
    // One payload, with an ack: the normal shape.
    { weight: 8, arbitrary: payloadFor(event).map((p): Case => ({ event, args: [p], ack: true, known: true })) },
    // One payload and no ack: only payloads the validator refuses, so that whatever is stored was acknowledged.
    { weight: 2, arbitrary: payloadFor(event).filter((p) => !validators.get(event)!(p).ok).map((p): Case => ({ event, args: [p], ack: false, known: true })) },
    // No payload, or more than one.
    fc.boolean().map((ack): Case => ({ event, args: [], ack, known: true })),
    fc.tuple(payloads[event], fc.array(fc.jsonValue({ maxDepth: 2 }), { minLength: 1, maxLength: 3 }), fc.boolean())
      .map(([p, more, ack]): Case => ({ event, args: [p, ...more], ack, known: true }))
  ))
  const unknown = fc.tuple(unknownEvent, fc.array(fc.oneof(fc.jsonValue({ maxDepth: 2 }), hostileValue), { maxLength: 3 }), fc.boolean())
    .map(([event, args, ack]): Case => ({ event, args, ack, known: false }))
  // Frames stay under MAX_PAYLOAD_BYTES here; the size limit has a test of its own.
  const caseArb = fc.oneof({ arbitrary: known, weight: 4 }, unknown).filter((c) => Buffer.byteLength(JSON.stringify(c.args)) < 12_000)

  const seed = Date.now() % 2 ** 31
  t.comment(`fast-check seed ${seed}`)
  const cases = fc.sample(caseArb, { seed, numRuns: 600 })
  const fuzzers = await Promise.all(['fuzz-0', 'fuzz-1', 'fuzz-2'].map((id) => connectUser(t, gw.url, id)))
  const okSends = new Set<string>()
  const okChannels = new Set<string>()
  const codes = new Map<string, number>()
  const wrong: string[] = []

  await Promise.all(fuzzers.map(async (client, f) => {
    const mine = cases.filter((_, i) => i % fuzzers.length === f)
    for (let i = 0; i < mine.length; i += 20) {
      await Promise.all(mine.slice(i, i + 20).map(async (c) => {
        if (!c.ack) {
          emitRaw(client.socket, c.event, ...c.args)
          return
        }
        const ack = await emitAny(client.socket, 20_000, c.event, ...c.args).catch((err: unknown) => ({ timeout: String(err) }))
        const code = codeOf(ack)
        codes.set(code, (codes.get(code) ?? 0) + 1)
        const what = `${c.event} ${JSON.stringify(c.args).slice(0, 200)} → ${JSON.stringify(ack).slice(0, 200)}`
        if (!['ok', ...CLIENT_ERROR_CODES].includes(code)) wrong.push(`not a catalogue answer: ${what}`)
        if (code === 'INTERNAL') wrong.push(`INTERNAL: ${what}`)
        if (!c.known && code !== 'VALIDATION') wrong.push(`unknown event not refused: ${what}`)
        if (c.known && c.args.length !== 1 && code !== 'VALIDATION') wrong.push(`not one payload, not refused: ${what}`)
        // A clientMsgId is a uuid: stored in lower case whatever case it was sent in.
        if (code === 'ok' && c.event === 'message:send') okSends.add(`${client.userId}\n${(ack as Ack).clientMsgId!.toLowerCase()}`)
        if (code === 'ok' && c.event === 'channel:create') okChannels.add((ack as Ack).channelId!)
      }))
    }
  }))
  t.comment(`answers: ${JSON.stringify(Object.fromEntries(codes))}`)
  t.same(wrong, [], 'every ack is { ok: true } or a coded error from the catalogue, as the protocol says')
  t.ok((codes.get('VALIDATION') ?? 0) > 50, 'many payloads were refused as VALIDATION')
  t.ok((codes.get('ok') ?? 0) > 0 && (codes.get('FORBIDDEN') ?? 0) > 0, 'some payloads were valid, some reached the membership check')
  t.ok(fuzzers.every((f) => f.socket.connected), 'no fuzzing socket was disconnected')

  // Metric labels come from the protocol, never from what clients send: fuzzing cannot grow them.
  const { samples } = parsePrometheus(await (await fetch(`${gw.url}/metrics`)).text())
  const labelled = samples.filter((s) => s.name.startsWith('chat_gateway_event'))
  t.ok(labelled.length > 0, 'event metrics are exposed')
  t.same([...new Set(labelled.map((s) => s.labels.event))].filter((e) => e !== 'unknown' && !Object.hasOwn(EVENTS, e ?? '')), [], 'event labels are protocol events or "unknown"')
  t.same([...new Set(labelled.map((s) => s.labels.code).filter((c) => c !== undefined))].filter((c) => !(CLIENT_ERROR_CODES as readonly string[]).includes(c!)), [], 'code labels are catalogue codes')

  // Still healthy, and a normal message still goes through.
  t.equal((await fetch(`${gw.url}/health`)).status, 200, '/health')
  await waitUntil(async () => (await fetch(`${gw.url}/ready`)).status === 200, 15_000, '/ready 200')
  const bob = await connectUser(t, gw.url, 'bob')
  // Each fuzzer's last message is stored after everything it sent before (one queue, in order).
  const markers = await Promise.all(fuzzers.map((f) => f.send({ toUserId: 'bob' }, `marker from ${f.userId}`)))
  t.ok(markers.every((m) => m.ok), 'the fuzzers can still send')
  for (const m of markers) okSends.add(`${fuzzers[markers.indexOf(m)]!.userId}\n${m.clientMsgId!.toLowerCase()}`)
  t.match(await alice.send({ toUserId: 'bob' }, 'after the storm'), { ok: true })
  await bob.waitFor<Message>('message:new', (m) => m.content === 'after the storm', 15_000)
  for (const f of fuzzers) await bob.waitFor<Message>('message:new', (m) => m.content === `marker from ${f.userId}`, 15_000)
  await settle(500)

  const rows = await sql<Array<{ sender_id: string, client_msg_id: string, content: string }>>`
    select sender_id, client_msg_id, content from messages where sender_id like 'fuzz-%'`
  const unacked = rows.filter((r) => !okSends.has(`${r.sender_id}\n${r.client_msg_id}`))
  t.same(unacked, [], 'every stored message was acknowledged ok to its sender')
  // And the other way round: an ok is a promise. The worker may still refuse a send (the
  // sender left the channel meanwhile), but then says so with message:rejected.
  const storedKeys = new Set(rows.map((r) => `${r.sender_id}\n${r.client_msg_id}`))
  const rejected = new Set(fuzzers.flatMap((f) => f.events
    .filter((e) => e.event === 'message:rejected')
    .map((e) => `${f.userId}\n${String((e.args[0] as { clientMsgId?: unknown } | undefined)?.clientMsgId).toLowerCase()}`)))
  t.same([...okSends].filter((k) => !storedKeys.has(k) && !rejected.has(k)), [], 'every send acknowledged ok was stored, or refused with message:rejected')
  t.ok(rows.every((r) => spec.chatText(r.content, 1, 4000)), 'every stored content is valid text within MAX_CONTENT_CHARS')
  t.ok(rows.length > fuzzers.length, `valid messages among the fuzz were stored (${rows.length - fuzzers.length}, plus the markers)`)
  const [{ n: rowsAfter }] = await sql<[{ n: number }]>`select count(*)::int as n from messages`
  t.equal(rowsAfter, rowsBefore + rows.length + 1, 'nothing else was stored')
  const groups = await sql<Array<{ id: string }>>`select id from channels where kind = 'group' and created_by like 'fuzz-%'`
  t.same(groups.filter((g) => !okChannels.has(g.id)), [], 'every group a fuzzer created was acknowledged')
  const members = await sql<Array<{ user_id: string }>>`select user_id from members where channel_id = ${group.channelId!}`
  t.ok(members.every((m) => ['alice', 'fuzz-1'].includes(m.user_id)), 'nobody joined the real group by fuzzing')
})

t.test('raw frames that break the Socket.IO protocol cost the sender its connection; the gateway carries on', async (t) => {
  const deepArray = '['.repeat(5000) + ']'.repeat(5000)
  const placeholder = '{"_placeholder":true,"num":0}'
  // Each case: frames to write after a valid CONNECT, and what must follow.
  const cases: Array<{ what: string, frames: Array<string | Buffer>, expect: 'closed' | 'validation' | 'alive' | 'closed or validation' }> = [
    { what: 'event "error" (CVE-2024-38355), with an ack id', frames: ['21["error","boom"]'], expect: 'validation' },
    { what: 'event "error" without an ack', frames: ['2["error",{"message":"boom"}]'], expect: 'alive' },
    { what: 'reserved event "disconnect"', frames: ['2["disconnect"]'], expect: 'closed' },
    { what: 'reserved event "newListener"', frames: ['2["newListener","message:send"]'], expect: 'closed' },
    { what: 'reserved event "removeListener"', frames: ['2["removeListener","message:send"]'], expect: 'closed' },
    { what: 'a numeric event name, with an ack id', frames: ['21[42,{}]'], expect: 'validation' },
    { what: 'event names like Object.prototype members', frames: ['21["__proto__",{}]', '22["constructor",{}]', '23["hasOwnProperty",{}]'], expect: 'validation' },
    { what: 'deeply nested payload (5000 levels)', frames: [`21["message:send",${deepArray}]`], expect: 'validation' },
    { what: 'own __proto__ key in a payload', frames: ['21["history:fetch",{"__proto__":{"limit":1},"withUserId":"bob"}]'], expect: 'validation' },
    { what: 'truncated JSON', frames: ['21["message:send",{"clientMsgId":'], expect: 'closed' },
    { what: 'payload not an array', frames: ['21{"event":"message:send"}'], expect: 'closed' },
    { what: 'empty event array', frames: ['21[]'], expect: 'closed' },
    { what: 'unknown packet type', frames: ['9'], expect: 'closed' },
    { what: 'not a packet at all', frames: ['hello'], expect: 'closed' },
    { what: 'binary frame with no packet announcing it', frames: [Buffer.from('surprise')], expect: 'closed' },
    { what: 'more attachments than allowed', frames: [`511-1["message:send",${placeholder}]`], expect: 'closed' },
    { what: 'attachment placeholder out of range', frames: ['51-1["message:send",{"_placeholder":true,"num":7}]', Buffer.from('x')], expect: 'closed' },
    { what: 'text frame while attachments are awaited', frames: [`51-1["message:send",${placeholder}]`, '21["channels:list",{}]'], expect: 'closed' },
    { what: 'a binary payload where an object belongs', frames: [`51-1["message:send",${placeholder}]`, Buffer.from('{"content":"x"}')], expect: 'validation' },
    // socket.io-parser puts attachments back recursively: whether 5000 levels fit in the
    // stack depends on the Node version (Node 20: validation; Node 22: a parse error, which
    // closes the connection). Either is fine; what matters is the gateway carrying on.
    { what: 'a placeholder nested 5000 deep', frames: [`51-1["message:send",${'['.repeat(5000)}${placeholder}${']'.repeat(5000)}]`, Buffer.from('x')], expect: 'closed or validation' },
    { what: 'an ack for an id never sent', frames: ['3999[{"ok":true}]'], expect: 'alive' },
    { what: 'CONNECT to a namespace that does not exist', frames: [`0/admin,${JSON.stringify({ token: tokenFor('raw') })}`], expect: 'alive' },
    { what: 'CONNECT again to the same namespace, as another user', frames: [`0${JSON.stringify({ token: tokenFor('someone-else') })}`], expect: 'closed' }
  ]
  for (const c of cases) {
    const conn = await rawConnection(t, gw.url)
    conn.write(`0${JSON.stringify({ token: tokenFor('raw') })}`)
    await waitUntil(() => conn.packets.some((p) => p.type === 2 && Array.isArray(p.data) && p.data[0] === 'session:ready'), 15_000, 'session ready')
    for (const frame of c.frames) conn.write(frame)
    if (c.expect === 'closed or validation') {
      conn.write('2100["channels:list",{}]')
      await waitUntil(() => conn.closed() || conn.packets.some((p) => p.type === 3 && p.id === 100), 15_000, `${c.what}: closed, or an answer to the follow-up request`)
      if (!conn.closed()) {
        const acks = conn.packets.filter((p) => p.type === 3 && p.id !== 100)
        t.ok(acks.length > 0 && acks.every((p) => Array.isArray(p.data) && codeOf(p.data[0]) === 'VALIDATION'), `${c.what}: kept, and answered VALIDATION`)
        conn.close()
      } else t.pass(`${c.what}: connection closed`)
    } else if (c.expect === 'closed') {
      await conn.whenClosed()
      t.pass(`${c.what}: connection closed`)
    } else {
      // A request sent after the bad frames: its answer proves the socket was still served.
      conn.write('2100["channels:list",{}]')
      await waitUntil(() => conn.closed() || conn.packets.some((p) => p.type === 3 && p.id === 100), 15_000, `${c.what}: an answer to the follow-up request`)
      t.notOk(conn.closed(), `${c.what}: connection kept`)
      if (c.expect === 'validation') {
        const acks = conn.packets.filter((p) => p.type === 3 && p.id !== 100)
        t.ok(acks.length > 0 && acks.every((p) => Array.isArray(p.data) && codeOf(p.data[0]) === 'VALIDATION'), `${c.what}: answered VALIDATION`)
      }
      t.ok(conn.packets.some((p) => p.type === 3 && p.id === 100 && Array.isArray(p.data) && codeOf(p.data[0]) === 'ok'), `${c.what}: still served`)
      conn.close()
    }
    t.equal((await fetch(`${gw.url}/health`)).status, 200, `${c.what}: gateway healthy`)
  }
  await waitUntil(() => gw.app.sessions.socketsOf('raw') === 0, 10_000, 'every raw session detached')
  t.equal(gw.app.sessions.socketsOf('someone-else'), 0, 'no session left behind by the second CONNECT')
  const client = await connectUser(t, gw.url, 'after-raw')
  t.match(await client.request('channels:list', {}), { ok: true }, 'a new client is served')
})

t.test('frame and content size limits at the defaults', async (t) => {
  t.equal(gw.config.MAX_PAYLOAD_BYTES, 65_536)
  t.equal(gw.config.MAX_CONTENT_CHARS, 4000)
  const sender = await connectUser(t, gw.url, 'sizer')
  const peer = await connectUser(t, gw.url, 'size-peer')
  const send = (content: string) => sender.request<Ack>('message:send', { clientMsgId: randomUUID(), toUserId: 'size-peer', content })
  t.match(await send('x'.repeat(4000)), { ok: true }, 'MAX_CONTENT_CHARS characters: accepted')
  t.match(await send('€'.repeat(4000)), { ok: true }, 'MAX_CONTENT_CHARS 3-byte characters (12 KB) fit in a frame')
  t.match(await send('x'.repeat(4001)), { ok: false, error: { code: 'VALIDATION' } }, 'one character more: VALIDATION')
  t.match(await send('x'.repeat(12_000)), { ok: false, error: { code: 'VALIDATION' } }, 'under the frame limit, over the content limit: VALIDATION')
  t.ok(sender.socket.connected)

  const bigText = connectUser(t, gw.url, 'big-text')
  const closedText = disconnected((await bigText).socket)
  emitRaw((await bigText).socket, 'message:send', { clientMsgId: randomUUID(), toUserId: 'size-peer', content: 'z'.repeat(70_000) })
  t.match(await closedText, /transport (close|error)/, 'a 70 KB text frame closes the connection')
  const bigBinary = await connectUser(t, gw.url, 'big-binary')
  const closedBinary = disconnected(bigBinary.socket)
  emitRaw(bigBinary.socket, 'message:send', Buffer.alloc(70_000, 1))
  t.match(await closedBinary, /transport (close|error)/, 'a 70 KB binary attachment closes the connection')
  const flood = await connectUser(t, gw.url, 'many-small')
  t.match(await emitAny(flood.socket, 10_000, 'message:send', ...Array.from({ length: 8 }, () => 'a'.repeat(1500))), { ok: false, error: { code: 'VALIDATION' } },
    'many arguments under the frame limit: VALIDATION')

  t.equal((await fetch(`${gw.url}/health`)).status, 200, 'the gateway is alive')
  await peer.waitFor<Message>('message:new', (m) => m.content === '€'.repeat(4000))
  await settle(500)
  const rows = await sql<Array<{ len: number }>>`select length(content)::int as len from messages where sender_id in ('sizer', 'big-text', 'big-binary', 'many-small') order by id`
  t.same(rows.map((r) => r.len), [4000, 4000], 'only the two messages within the limits were stored')
})
