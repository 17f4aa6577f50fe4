/**
 * /ready is never "green but deaf": it goes 503 when the gateway's broker connection
 * dies and back to 200 only once every binding is restored, as the broker's own
 * binding list shows. /metrics parses and its gauges match the broker.
 */
import t from 'tap'
import { connectUser } from '../helpers/client.js'
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js'
import { closeConnections, createDatabase, createVhost, listBindings } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
await startTestWorker(t, env)
const gw = await startTestGateway(t, env)

type Ready = { ready: boolean, queue: string, route: string, boundUserKeys: number, boundChannelKeys: number, sockets: number, users: number, missingKeys: number }
const ready = async () => {
  const res = await fetch(`${gw.url}/ready`)
  return { status: res.status, body: await res.json() as Ready }
}
const brokerKeys = async (route: string) => (await listBindings(vhost, 'chat.outgoing')).filter((b) => b.destination === route).map((b) => b.routingKey)
/** Queues the gateway's route feeds (its other destination is its holder exchange). */
const routeQueues = async (route: string) => (await listBindings(vhost, route)).filter((b) => b.kind === 'queue').map((b) => b.destination)

// 30 users, each in 3 of 5 shared channels: 30 user keys + 5 channel keys.
const owner = await connectUser(t, gw.url, 'owner')
const channelIds: string[] = []
for (let c = 0; c < 5; c++) {
  const members = Array.from({ length: 30 }, (_, i) => `u${i}`).filter((_, i) => i % 5 !== c && i % 5 !== (c + 1) % 5)
  channelIds.push((await owner.request<{ channelId: string }>('channel:create', { name: `c${c}`, memberIds: members })).channelId)
}
owner.close()
await waitUntil(() => gw.app.sessions.userCount === 0)
for (let i = 0; i < 30; i++) await connectUser(t, gw.url, `u${i}`)
await waitUntil(() => gw.app.bindings.stats().pending === 0)

t.test('figures in /ready and /metrics equal the broker\'s own binding list', async (t) => {
  const { status, body } = await ready()
  t.equal(status, 200)
  const keys = await brokerKeys(body.route)
  t.equal(keys.filter((k) => k.startsWith('user:')).length, 30)
  t.equal(keys.filter((k) => k.startsWith('channel:')).length, 5)
  t.match(body, { ready: true, sockets: 30, users: 30, boundUserKeys: 30, boundChannelKeys: 5, missingKeys: 0 })

  const text = await (await fetch(`${gw.url}/metrics`)).text()
  const { samples, types } = parsePrometheus(text)
  t.equal(types.get('chat_gateway_bound_keys'), 'gauge')
  t.equal(sampleValue(samples, 'chat_gateway_bound_keys', { kind: 'user' }), 30)
  t.equal(sampleValue(samples, 'chat_gateway_bound_keys', { kind: 'channel' }), 5)
  t.equal(sampleValue(samples, 'chat_gateway_sockets'), 30)
  t.equal(sampleValue(samples, 'chat_gateway_ready'), 1)
  t.ok((sampleValue(samples, 'chat_gateway_bind_operations_total', { op: 'bind' }) ?? 0) >= 35)
  t.ok(samples.some((s) => s.name === 'chat_gateway_publish_confirm_seconds_bucket'), 'histograms are exposed')
})

t.test('a cut broker connection turns /ready 503 until every binding is back', async (t) => {
  const before = await ready()
  const oldQueue = before.body.queue
  const wanted = (await brokerKeys(before.body.route)).sort()
  t.equal(wanted.length, 35)
  const seen: number[] = []
  const poller = setInterval(() => { void ready().then((r) => seen.push(r.status), () => {}) }, 20)
  t.teardown(() => clearInterval(poller))

  t.ok(await closeConnections(vhost, `gateway:${gw.config.SERVER_ID}:consume`) >= 1)
  await waitUntil(() => seen.includes(503), 5000, '/ready 503 after the cut')
  await waitUntil(async () => (await ready()).status === 200, 20_000, '/ready 200 again')
  clearInterval(poller)

  const after = await ready()
  t.not(after.body.queue, oldQueue, 'a new queue')
  t.equal(after.body.route, before.body.route, 'the same route')
  t.same(await routeQueues(after.body.route), [after.body.queue], 'the route feeds the new queue, and only it')
  const keys = (await brokerKeys(after.body.route)).sort()
  t.same(keys, wanted, 'the broker holds every key')
  t.match(after.body, { boundUserKeys: 30, boundChannelKeys: 5, missingKeys: 0 })
  const { samples } = parsePrometheus(await (await fetch(`${gw.url}/metrics`)).text())
  t.equal(sampleValue(samples, 'chat_gateway_bound_keys', { kind: 'user' }), 30)
  t.equal(sampleValue(samples, 'chat_gateway_bound_keys', { kind: 'channel' }), 5)
  t.equal(sampleValue(samples, 'chat_gateway_rebind_seconds_count'), 2, 'one rebind after start, one after the cut')
})

t.test('readiness flips before the hard socket cap, which refuses connections', async (t) => {
  const capped = await startTestGateway(t, env, { GATEWAY_MAX_SOCKETS: '3', GATEWAY_READY_SOCKETS: '2', USER_MAX_SOCKETS: '2' })
  await connectUser(t, capped.url, 'a')
  t.equal((await fetch(`${capped.url}/ready`)).status, 200)
  await connectUser(t, capped.url, 'a')
  t.equal((await fetch(`${capped.url}/ready`)).status, 503, 'unready at the soft limit')
  await t.rejects(connectUser(t, capped.url, 'a'), { message: 'RATE_LIMITED' }, 'per-user cap')
  await connectUser(t, capped.url, 'b')
  await t.rejects(connectUser(t, capped.url, 'c'), { message: 'UNAVAILABLE' }, 'hard cap')
})

t.test('a gateway capped at one socket is ready while it has none (90 % of 1 is not 0)', async (t) => {
  const one = await startTestGateway(t, env, { GATEWAY_MAX_SOCKETS: '1', USER_MAX_SOCKETS: '1' })
  t.equal((await fetch(`${one.url}/ready`)).status, 200, 'ready when empty')
  await connectUser(t, one.url, 'solo')
  t.equal((await fetch(`${one.url}/ready`)).status, 503, 'unready when full')
})
