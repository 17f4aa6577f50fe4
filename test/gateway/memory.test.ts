/**
 * Per-socket memory: once a socket is connected, the gateway keeps nothing of its HTTP
 * upgrade request (1.3 KB of live heap per socket in the idle benchmark, of 11.9).
 * engine.io's upgrade listeners would keep it for the life of the socket.
 */
import type { IncomingMessage } from 'node:http'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { io } from 'socket.io-client'
import { connectUser, tokenFor } from '../helpers/client.js'
import { createDatabase, createVhost } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

// A full collection on demand, without restarting the test process with --expose-gc.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
await startTestWorker(t, { amqpUrl, databaseUrl })
const gw = await startTestGateway(t, { amqpUrl, databaseUrl })

t.test('a connected socket keeps no HTTP request', async (t) => {
  const requests: Array<WeakRef<IncomingMessage>> = []
  gw.app.server.prependListener('upgrade', (req: IncomingMessage) => { requests.push(new WeakRef(req)) })
  const users = await Promise.all(Array.from({ length: 10 }, (_, i) => connectUser(t, gw.url, `mem-${i}`)))
  await waitUntil(() => gw.app.io.engine.clientsCount === 10, 5000, 'ten sockets')
  t.equal(requests.length, 10, 'ten upgrades seen')
  // WeakRefs hold their target until the current job ends: collect across turns.
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(requests.filter((r) => r.deref() !== undefined).length, 0, 'every upgrade request was collected while its socket stays open')
  t.ok(users.every((u) => u.socket.connected), 'the sockets are still connected')
  const [ann, ben] = users
  t.match(await ann!.send({ toUserId: ben!.userId }, 'still works'), { ok: true })
  await ben!.waitFor('message:new')
})

t.test('a socket that starts on polling and upgrades keeps no upgrade request either', async (t) => {
  const both = await startTestGateway(t, { amqpUrl, databaseUrl }, { SOCKET_TRANSPORTS: 'websocket,polling' })
  const requests: Array<WeakRef<IncomingMessage>> = []
  both.app.server.prependListener('upgrade', (req: IncomingMessage) => { requests.push(new WeakRef(req)) })
  const sockets = Array.from({ length: 5 }, (_, i) => io(both.url, { transports: ['polling', 'websocket'], auth: { token: tokenFor(`poll-${i}`) }, reconnection: false, forceNew: true }))
  t.teardown(() => { for (const s of sockets) s.disconnect() })
  await Promise.all(sockets.map(async (s) => await new Promise<void>((resolve) => {
    let ready = false
    let upgraded = false
    s.once('session:ready', () => { ready = true; if (upgraded) resolve() })
    s.io.engine.once('upgrade', () => { upgraded = true; if (ready) resolve() })
  })))
  t.equal(requests.length, 5, 'five upgrades seen')
  // The client reports its upgrade when it sends it: wait until the gateway took it.
  const engine = both.app.io.engine as unknown as { clients: Record<string, { upgraded: boolean }> }
  await waitUntil(() => Object.values(engine.clients).length === 5 && Object.values(engine.clients).every((c) => c.upgraded), 5000, 'the gateway upgraded every socket')
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(requests.filter((r) => r.deref() !== undefined).length, 0, 'every upgrade request was collected')
  t.ok(sockets.every((s) => s.connected && s.io.engine.transport.name === 'websocket'), 'the sockets are connected over WebSocket')
})
