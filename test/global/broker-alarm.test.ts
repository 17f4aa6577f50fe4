/**
 * A broker resource alarm blocks publishers (connection.blocked). A flood of sends is
 * refused cleanly with UNAVAILABLE instead of piling up in the gateway, and sends
 * work again when the alarm clears. The alarm is broker-wide, so test/global runs
 * alone, and the watermark is always restored.
 */
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { createDatabase, createVhost, rabbitmqctl } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
await startTestWorker(t, { amqpUrl, databaseUrl })
const gw = await startTestGateway(t, { amqpUrl, databaseUrl }, { SEND_TIMEOUT_MS: '2000', SOCKET_RATE_PER_SEC: '10000', SOCKET_RATE_BURST: '10000' })

const original = (await rabbitmqctl('eval', 'vm_memory_monitor:get_vm_memory_high_watermark().')).trim()
const restore = async () => { await rabbitmqctl('set_vm_memory_high_watermark', /^[0-9.]+$/.test(original) ? original : '0.4') }
t.teardown(restore)

t.test('sends under connection.blocked are refused, then accepted again', async (t) => {
  const alice = await connectUser(t, gw.url, 'alice')
  await connectUser(t, gw.url, 'bob')
  t.equal((await alice.send({ toUserId: 'bob' }, 'warm up')).ok, true)

  await rabbitmqctl('set_vm_memory_high_watermark', '0.000001')
  try {
    // The broker blocks a connection when it next publishes; one send may wait for that.
    await alice.send({ toUserId: 'bob' }, 'probe')
    await waitUntil(async () => ((await (await fetch(`${gw.url}/ready`)).json()) as { broker: string }).broker === 'blocked', 15_000, 'gateway sees the block')
    const started = Date.now()
    const flood = await Promise.all(Array.from({ length: 300 }, (_, i) => alice.send({ toUserId: 'bob' }, `flood ${i}`)))
    t.ok(flood.every((r) => !r.ok && r.error?.code === 'UNAVAILABLE'), 'every send refused with UNAVAILABLE')
    t.ok(Date.now() - started < 2000, `refused at once, not after the send timeout (${Date.now() - started} ms)`)
    // Reads and typing go over the same blocked connection: refused or dropped at once,
    // not queued in the gateway's memory past their timeout.
    const { channelId } = await alice.waitFor<Message>('message:new', (m) => m.content === 'warm up')
    const readStarted = Date.now()
    t.match(await alice.request('history:fetch', { withUserId: 'bob' }), { ok: false, error: { code: 'UNAVAILABLE' } }, 'a read is refused with UNAVAILABLE')
    t.ok(Date.now() - readStarted < 1000, `at once, not after the request timeout (${Date.now() - readStarted} ms)`)
    t.same(await alice.request('typing', { channelId }), { ok: true }, 'a typing notice is dropped, not held')
  } finally {
    await restore()
  }
  await waitUntil(async () => ((await (await fetch(`${gw.url}/ready`)).json()) as { broker: string }).broker === 'connected', 15_000, 'unblocked')
  t.equal((await alice.send({ toUserId: 'bob' }, 'after')).ok, true, 'accepted again once the alarm clears')
})
