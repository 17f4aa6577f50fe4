/**
 * A client that stops reading cannot grow the gateway's memory without bound: once
 * its write backlog passes the limit it is disconnected, and the other sockets carry on.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { Connection } from 'rabbitmq-client'
import type { Delivery } from '../../src/contracts/envelopes.js'
import { connectUser } from '../helpers/client.js'
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js'
import { createDatabase, createVhost } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
await startTestWorker(t, { amqpUrl, databaseUrl })
const gw = await startTestGateway(t, { amqpUrl, databaseUrl }, { SOCKET_MAX_PENDING_PACKETS: '100', SOCKET_MAX_BUFFER_BYTES: '262144' })

t.test('a stalled socket is cut when its backlog passes the limit', async (t) => {
  const slow = await connectUser(t, gw.url, 'slow')
  const fine = await connectUser(t, gw.url, 'fine')
  // Stop reading: the kernel buffers fill, then ws, then engine.io's write buffer.
  // engine.io-client keeps its ws (the `ws` package in Node) on the transport; untyped internals.
  const raw = (slow.socket.io.engine as unknown as { transport: { ws: { _socket: { pause: () => void } } } }).transport.ws._socket
  raw.pause()

  const rabbit = new Connection(amqpUrl)
  t.teardown(() => rabbit.close())
  const pub = rabbit.createPublisher({ confirm: true })
  t.teardown(() => pub.close())
  const content = 'x'.repeat(4000)
  const flood = async (to: string, n: number) => {
    for (let i = 0; i < n; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => {
        const d: Delivery = { t: 'message', message: { id: `${to}-${i + j}`, channelId: randomUUID(), kind: 'direct', seq: i + j + 1, senderId: 'flooder', toUserId: to, content, clientMsgId: randomUUID(), createdAt: new Date().toISOString() } }
        return pub.send({ exchange: 'chat.outgoing', routingKey: `user:${to}` }, d)
      }))
    }
  }
  await flood('slow', 8000) // ~32 MB, far more than loopback socket buffers hold
  const metric = async () => sampleValue(parsePrometheus(await (await fetch(`${gw.url}/metrics`)).text()).samples, 'chat_gateway_slow_consumers_total') ?? 0
  await waitUntil(async () => (await metric()) === 1, 20_000, 'slow consumer cut')
  await waitUntil(() => gw.app.sessions.socketsOf('slow') === 0, 10_000, 'its session is gone')
  t.equal(gw.app.sessions.socketsOf('fine'), 1, 'the other socket stays')
  await flood('fine', 100)
  await waitUntil(() => fine.messages().length === 100, 10_000, 'the other socket still receives')
  t.pass('bounded')
})
