/**
 * The SDK against a scripted Socket.IO server speaking our protocol, for the timing
 * and failure edges a real gateway produces only now and then: a failed catch-up list
 * after session:resync, a drain hint, close() racing a send, a token function that
 * never settles, a bad resume position. No broker or database is involved: what is
 * under test is the client's own behaviour.
 */
import { createServer } from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { Server, type Socket } from 'socket.io'
import t, { type Test } from 'tap'
import { ChatClient, type ChatClientOptions } from '../../src/client/index.js'
import type { ChannelSummary, Message } from '../../src/contracts/protocol.js'

const CHANNEL = '11111111-1111-4111-8111-111111111111'
const summary = (lastSeq: number): ChannelSummary => ({ id: CHANNEL, kind: 'group', name: 'g', lastSeq })
const message = (seq: number): Message => ({
  id: `m${seq}`, channelId: CHANNEL, kind: 'group', seq, senderId: 'other', content: `m${seq}`,
  clientMsgId: `00000000-0000-4000-8000-${String(seq).padStart(12, '0')}`, createdAt: new Date(0).toISOString()
})
type Ack = (answer: object) => void

/** A Socket.IO server that opens a session for every socket and answers requests through `answer`. */
async function scriptedGateway (t: Test, script: {
  connected?: (socket: Socket, n: number) => void
  answer?: (event: string, payload: Record<string, unknown>, ack: Ack) => void
}) {
  const http = createServer()
  const io = new Server(http, { transports: ['websocket'] })
  let n = 0
  io.on('connection', (socket) => {
    const k = n++
    for (const event of ['message:send', 'history:fetch', 'channels:list']) {
      socket.on(event, (payload: Record<string, unknown>, ack: Ack) => {
        if (script.answer !== undefined) script.answer(event, payload, ack)
        else ack({ ok: true })
      })
    }
    socket.emit('session:ready', { userId: 'u', serverId: 'scripted', channels: [summary(0)] })
    script.connected?.(socket, k)
  })
  http.listen(0, '127.0.0.1')
  await once(http, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { void io.close(() => resolve()) }))
  return { url: `http://127.0.0.1:${(http.address() as AddressInfo).port}`, sockets: () => n }
}

function client (t: Test, options: ChatClientOptions): ChatClient {
  const c = new ChatClient(options)
  c.on('error', () => {}) // asserted where it matters
  t.teardown(() => c.close())
  return c
}

const ready = async (c: ChatClient) => await new Promise<void>((resolve) => { const off = c.on('ready', () => { off(); resolve() }) })

const until = async (what: () => boolean, ms = 5000) => {
  for (const end = Date.now() + ms; !what(); await new Promise((resolve) => setTimeout(resolve, 20))) {
    if (Date.now() > end) throw new Error('timed out')
  }
}

t.test('a channels:list refused after session:resync is asked again, and the missed messages arrive', async (t) => {
  let lists = 0
  const gw = await scriptedGateway(t, {
    connected: (socket) => setTimeout(() => socket.emit('session:resync', { reason: 'BROKER_RECONNECTED' }), 100),
    answer: (event, payload, ack) => {
      if (event === 'channels:list') {
        lists++
        if (lists === 1) ack({ ok: false, error: { code: 'UNAVAILABLE', message: 'worker busy' } })
        else ack({ ok: true, channels: [summary(3)] })
      } else if (event === 'history:fetch') {
        ack({ ok: true, messages: [1, 2, 3].filter((s) => s > Number(payload.afterSeq)).map(message) })
      }
    }
  })
  const c = client(t, { url: gw.url, token: 'x', resyncJitterMs: 0, reconnectMinMs: 50, reconnectMaxMs: 200 })
  const got: number[] = []
  c.on('message', (m) => got.push(m.seq))
  await until(() => got.length === 3)
  t.same(got, [1, 2, 3], 'caught up after the second list')
  t.equal(lists, 2, 'listed twice: the refusal, then the retry')
})

t.test('after session:end { reconnectInMs }, the client reconnects that long after the hint, not after the disconnect', async (t) => {
  const hintMs = 1500
  let hintAt = 0
  let cutAt = 0
  const gw = await scriptedGateway(t, {
    connected: (socket, n) => {
      if (n > 0) return
      setTimeout(() => {
        hintAt = Date.now()
        socket.emit('session:end', { code: 'DRAINING', message: 'draining', reconnectInMs: hintMs })
        // What a draining gateway does: wait the hint out, then disconnect.
        setTimeout(() => { cutAt = Date.now(); socket.disconnect(true) }, hintMs)
      }, 100)
    }
  })
  const c = client(t, { url: gw.url, token: 'x' })
  let sessions = 0
  let secondAt = 0
  c.on('ready', () => { if (++sessions === 2) secondAt = Date.now() })
  await until(() => secondAt > 0)
  t.ok(cutAt > 0, 'the server disconnected the socket')
  t.ok(secondAt - cutAt < 500, `a new session ${secondAt - cutAt} ms after the disconnect (the hint was ${hintMs} ms)`)
  t.ok(secondAt - hintAt >= hintMs, 'not before the hint said')
})

t.test('close() right after send(): the send rejects CLIENT_CLOSED at once', async (t) => {
  const gw = await scriptedGateway(t, { answer: () => {} }) // never answers
  const c = client(t, { url: gw.url, token: 'x', ackTimeoutMs: 10_000 })
  await ready(c)
  const started = Date.now()
  const sent = c.send({ channelId: CHANNEL }, 'hello')
  await new Promise((resolve) => setImmediate(resolve))
  c.close()
  await t.rejects(sent, { code: 'CLIENT_CLOSED' })
  t.ok(Date.now() - started < 2000, `settled in ${Date.now() - started} ms, not after ackTimeoutMs`)
})

t.test('a token function that never settles counts as a failed attempt, and the next one can succeed', async (t) => {
  const gw = await scriptedGateway(t, {})
  let calls = 0
  const c = client(t, {
    url: gw.url,
    token: async () => (++calls === 1 ? await new Promise<string>(() => {}) : 'x'),
    connectTimeoutMs: 300,
    reconnectMinMs: 50,
    reconnectMaxMs: 100
  })
  const errors: string[] = []
  c.on('error', (e) => errors.push(e.code))
  await ready(c)
  t.equal(calls, 2, 'asked again after the first call hung')
  t.ok(errors.includes('CLIENT_TOKEN'), 'the hang was reported')
})

t.test('resumeFrom must hold seqs: anything else is refused when the client is built', async (t) => {
  for (const bad of [Number.NaN, -1, 1.5, Number.POSITIVE_INFINITY]) {
    t.throws(() => new ChatClient({ url: 'http://127.0.0.1:1', token: 'x', autoConnect: false, resumeFrom: { [CHANNEL]: bad } }), /resumeFrom/, String(bad))
  }
  const ok = new ChatClient({ url: 'http://127.0.0.1:1', token: 'x', autoConnect: false, resumeFrom: { [CHANNEL]: 7 } })
  t.same(ok.positions(), { [CHANNEL]: 7 })
  ok.close()
  const slow = new ChatClient({ url: 'http://127.0.0.1:1', token: 'x', autoConnect: false, reconnectMinMs: 8000 })
  t.ok(slow, 'a larger reconnectMinMs alone is accepted (the maximum follows it)')
  slow.close()
})

t.test('a clientMsgId given in capitals comes back as the server will echo it, in lower case', async (t) => {
  const seen: string[] = []
  const gw = await scriptedGateway(t, { answer: (event, payload, ack) => { if (event === 'message:send') seen.push(String(payload.clientMsgId)); ack({ ok: true }) } })
  const c = client(t, { url: gw.url, token: 'x' })
  const id = 'ABCDEF01-2345-4678-89AB-CDEF01234567'
  const { clientMsgId } = await c.send({ channelId: CHANNEL }, 'hi', { clientMsgId: id })
  t.equal(clientMsgId, id.toLowerCase())
  t.same(seen, [id.toLowerCase()], 'sent in lower case too')
})

t.test('close() while the token function is pending: no error afterwards, no timer left behind', async (t) => {
  const c = new ChatClient({ url: 'http://127.0.0.1:1', token: async () => await new Promise<string>(() => {}), connectTimeoutMs: 200 })
  const after: string[] = []
  c.on('error', (e) => { if (c.state === 'closed') after.push(e.code) })
  await new Promise((resolve) => setTimeout(resolve, 50))
  c.close()
  await new Promise((resolve) => setTimeout(resolve, 400))
  t.same(after, [], 'nothing emitted after close()')
})

t.test('a session:resync that arrives before session:ready still catches up once the session opens', async (t) => {
  // The gateway lost deliveries while this socket's session was opening: m1 was stored
  // after session.open read lastSeq (0), and its delivery was dropped.
  const http = createServer()
  const io = new Server(http, { transports: ['websocket'] })
  io.on('connection', (socket) => {
    socket.on('channels:list', (_p: unknown, ack: Ack) => ack({ ok: true, channels: [summary(1)] }))
    socket.on('history:fetch', (p: { afterSeq: number }, ack: Ack) => ack({ ok: true, messages: p.afterSeq < 1 ? [message(1)] : [] }))
    socket.emit('session:resync', { reason: 'DELIVERIES_DROPPED' })
    setTimeout(() => socket.emit('session:ready', { userId: 'u', serverId: 'scripted', channels: [summary(0)] }), 200)
  })
  http.listen(0, '127.0.0.1')
  await once(http, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { void io.close(() => resolve()) }))
  const c = new ChatClient({ url: `http://127.0.0.1:${(http.address() as AddressInfo).port}`, token: 't', resyncJitterMs: 100, resumeFrom: { [CHANNEL]: 0 } })
  t.teardown(() => c.close())
  const got: Message[] = []
  c.on('message', (m) => got.push(m))
  // Connecting, the held session:ready and the catch-up take a fixed 1.5 s only on an idle
  // machine: wait for the message, then long enough for a second copy to show.
  await until(() => got.length >= 1, 15_000)
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.same(got.map((m) => m.seq), [1], 'the message whose delivery was lost is caught up')
})
