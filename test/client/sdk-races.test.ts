/**
 * The SDK's own races, against a scripted Socket.IO server that produces exact orders:
 * a catch-up list that crosses channel:left / channel:joined, and an app that calls
 * close() from its own listeners (state, message, error). A closed client must stay
 * closed: no reconnect, no ready, no timer left behind.
 */
import { createServer } from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { Server, type Socket } from 'socket.io'
import t, { type Test } from 'tap'
import { ChatClient } from '../../src/client/index.js'
import type { ChannelSummary, Message } from '../../src/contracts/protocol.js'

const X = '11111111-1111-4111-8111-111111111111'
const Y = '22222222-2222-4222-8222-222222222222'
const group = (id: string, lastSeq: number, name = 'g'): ChannelSummary => ({ id, kind: 'group', name, lastSeq })
const message = (channelId: string, seq: number): Message => ({
  id: `${channelId}-m${seq}`, channelId, kind: 'group', seq, senderId: 'other', content: `m${seq}`,
  clientMsgId: `00000000-0000-4000-8000-${String(seq).padStart(12, '0')}`, createdAt: new Date(0).toISOString()
})
type Ack = (answer: object) => void
const sleep = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))
/** Polls `what`; a fixed pause says nothing about a loaded machine, where connecting alone can take longer. */
const until = async (what: () => boolean, label: string, ms = 15_000) => {
  for (const end = Date.now() + ms; !what(); await sleep(20)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${label}`)
  }
}
/**
 * A sync point: the server emits this after its script, and Socket.IO keeps a socket's
 * packets in order, so once the application got it (and the microtasks queued with it
 * ran) the client has handled everything the server sent before it.
 */
const MARKER = { channelId: '99999999-9999-4999-8999-999999999999', userId: 'marker' }
const marked = async (c: ChatClient) => {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the server\'s marker never reached the application')), 15_000)
    const off = c.on('typing', (e) => { if (e.userId === MARKER.userId) { clearTimeout(timer); off(); resolve() } })
  })
  await new Promise((resolve) => setImmediate(resolve))
}

async function server (t: Test, onConnection: (socket: Socket) => void) {
  const http = createServer()
  const io = new Server(http, { transports: ['websocket'] })
  io.on('connection', onConnection)
  http.listen(0, '127.0.0.1')
  await once(http, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { void io.close(() => resolve()) }))
  return `http://127.0.0.1:${(http.address() as AddressInfo).port}`
}

t.test('a catch-up list answered after channel:left does not bring the left channel back', async (t) => {
  const url = await server(t, (socket) => {
    socket.on('history:fetch', (_p: unknown, ack: Ack) => ack({ ok: true, messages: [] }))
    socket.on('channels:list', (_p: unknown, ack: Ack) => {
      // The worker read the list before the leave (from another device) committed;
      // the left notice reaches the socket before the RPC answer does.
      socket.emit('channel:left', { channelId: X })
      setTimeout(() => {
        ack({ ok: true, channels: [group(X, 0)] })
        socket.emit('typing', MARKER)
      }, 50)
    })
    socket.emit('session:ready', { userId: 'u', serverId: 's', channels: [group(X, 0)] })
    setTimeout(() => socket.emit('session:resync', { reason: 'BROKER_RECONNECTED' }), 50)
  })
  const c = new ChatClient({ url, token: 't', resyncJitterMs: 0 })
  t.teardown(() => c.close())
  const events: string[] = []
  c.on('channel:joined', (ch) => events.push(`joined ${ch.id.slice(0, 2)}`))
  c.on('channel:left', (id) => events.push(`left ${id.slice(0, 2)}`))
  await marked(c) // the list answer was handled
  t.same(events, ['left 11'], 'only the leave is announced')
  t.same(c.channels().map((ch) => ch.id), [], 'the left channel is not tracked again')
})

t.test('a catch-up list naming a channel the gateway has not announced yet: joined once, when the gateway says so', async (t) => {
  const url = await server(t, (socket) => {
    let known = false
    socket.on('history:fetch', (p: { channelId?: string }, ack: Ack) => {
      // As memberOf() does: the gateway refuses channels it has not learnt of yet.
      if (p.channelId === Y && !known) return ack({ ok: false, error: { code: 'FORBIDDEN', message: 'not a member of this channel' } })
      ack({ ok: true, messages: p.channelId === Y ? [message(Y, 1)] : [] })
      if (p.channelId === Y) socket.emit('typing', MARKER)
    })
    socket.on('channels:list', (_p: unknown, ack: Ack) => {
      // The worker committed the create; the joined notice is still on its way to this gateway.
      ack({ ok: true, channels: [group(X, 0), group(Y, 1, 'new')] })
      setTimeout(() => { known = true; socket.emit('channel:joined', { channel: group(Y, 1, 'new') }) }, 100)
    })
    socket.emit('session:ready', { userId: 'u', serverId: 's', channels: [group(X, 0)] })
    setTimeout(() => socket.emit('session:resync', { reason: 'DELIVERIES_DROPPED' }), 50)
  })
  const c = new ChatClient({ url, token: 't', resyncJitterMs: 0 })
  c.on('error', () => {})
  t.teardown(() => c.close())
  const events: string[] = []
  c.on('channel:joined', (ch) => events.push(`joined ${ch.id.slice(0, 2)}`))
  c.on('channel:left', (id) => events.push(`left ${id.slice(0, 2)}`))
  c.on('message', (m) => events.push(`message ${m.channelId.slice(0, 2)}/${m.seq}`))
  await marked(c) // Y's history, fetched once the gateway knew it, was handled
  await sleep(300) // and room for a second announcement or a leave
  t.same(events, ['joined 22', 'message 22/1'], 'announced once, never left')
})

t.test('close() from a message listener while early events replay: the client stays closed', async (t) => {
  const url = await server(t, (socket) => {
    socket.on('history:fetch', (_p: unknown, ack: Ack) => ack({ ok: true, messages: [] }))
    socket.emit('message:new', message(X, 1))
    setTimeout(() => socket.emit('session:ready', { userId: 'u', serverId: 's', channels: [group(X, 0)] }), 50)
  })
  const c = new ChatClient({ url, token: 't', resumeFrom: { [X]: 0 } })
  t.teardown(() => c.close())
  const states: string[] = []
  let readies = 0
  c.on('state', (s) => states.push(s))
  c.on('ready', () => readies++)
  c.on('message', () => c.close())
  await until(() => c.state === 'closed', 'closed')
  await sleep(300) // room for a ready or a state after close()
  t.equal(c.state, 'closed', `state after close() is ${c.state}`)
  t.equal(readies, 0, 'no ready after close()')
  t.same(states.slice(-1), ['closed'], `states: ${states.join(' → ')}`)
})

t.test('close() from an error listener (a refused resync list): no client timer left behind', async (t) => {
  const url = await server(t, (socket) => {
    socket.on('channels:list', (_p: unknown, ack: Ack) => ack({ ok: false, error: { code: 'UNAVAILABLE', message: 'busy' } }))
    socket.emit('session:ready', { userId: 'u', serverId: 's', channels: [] })
    setTimeout(() => socket.emit('session:resync', { reason: 'BROKER_RECONNECTED' }), 50)
  })
  const realSet = globalThis.setTimeout
  const realClear = globalThis.clearTimeout
  const live = new Map<unknown, string>()
  let closed = false
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    const stack = new Error().stack ?? ''
    const h = realSet(() => { live.delete(h); fn() }, ms)
    if (closed && stack.includes('src/client/')) live.set(h, `${ms} ms ${stack.split('\n').slice(2, 5).join(' | ')}`)
    return h
  }) as typeof setTimeout
  globalThis.clearTimeout = ((h: Parameters<typeof clearTimeout>[0]) => { live.delete(h); realClear(h) }) as typeof clearTimeout
  t.teardown(() => { globalThis.setTimeout = realSet; globalThis.clearTimeout = realClear })
  const c = new ChatClient({ url, token: 't', resyncJitterMs: 0, reconnectMinMs: 3000, reconnectMaxMs: 5000 })
  c.on('error', () => { closed = true; c.close() })
  await until(() => closed, 'the refused list reported')
  await sleep(100)
  t.equal(c.state, 'closed')
  t.same([...live.values()], [], 'no timer scheduled by the client after close()')
})

t.test('close() from a state listener on "disconnected": the client stays closed and does not reconnect', async (t) => {
  let connections = 0
  const url = await server(t, (socket) => {
    connections++
    socket.emit('session:ready', { userId: 'u', serverId: 's', channels: [] })
    if (connections === 1) setTimeout(() => socket.disconnect(true), 50)
  })
  const c = new ChatClient({ url, token: 't', reconnectMinMs: 50, reconnectMaxMs: 100 })
  t.teardown(() => c.close())
  const states: string[] = []
  c.on('state', (s) => {
    states.push(s)
    if (s === 'disconnected') c.close() // say, an app that gives up
  })
  await until(() => states.includes('disconnected'), 'disconnected')
  await sleep(1000) // a reconnect is due within 100 ms (reconnectMaxMs): room for it to show
  t.equal(c.state, 'closed', `states: ${states.join(' → ')}`)
  t.equal(connections, 1, 'no new connection after close()')
})
