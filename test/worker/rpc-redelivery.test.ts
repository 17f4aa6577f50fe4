/**
 * A channel create whose worker loses its broker connection while the create is in the
 * database: the create commits, its answer cannot be sent, and the broker hands the
 * request back. It must not be run a second time (a second channel, announced to every
 * member), nor be answered UNAVAILABLE while it committed.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { openConnection } from '../../src/broker/connection.js'
import { WorkerRpc } from '../../src/broker/rpc.js'
import { brokerNames } from '../../src/broker/topology.js'
import { hash32 } from '../../src/hash.js'
import { silentLogger } from '../../src/log.js'
import { closeConnections, createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { sleep, startTestWorker, waitUntil } from '../helpers/system.js'

t.test('a create in progress when the worker\'s broker connection drops is done once, and its caller is told so', async (t) => {
  const { vhost, url: amqpUrl } = await createVhost(t)
  const url = await createDatabase(t)
  const sql = sqlClient(t, url)
  const worker = await startTestWorker(t, { amqpUrl, databaseUrl: url }, { SERVER_ID: 'redeliv-w' })
  const conn = openConnection({ url: amqpUrl, name: 'test-gateway', heartbeatSeconds: 5, log: silentLogger })
  t.teardown(() => conn.close())
  const rpc = new WorkerRpc(conn, brokerNames('chat'), 5000)
  t.teardown(() => rpc.close())

  // The create waits for the lock another create on the same user holds (1.5 s).
  let held!: () => void
  const lockTaken = new Promise<void>((resolve) => { held = resolve })
  const holding = sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${0x63686174}::int, ${hash32('rd-ann') % 64}::int)`
    held()
    await sleep(1500)
  })
  await lockTaken
  // With a request id, as every gateway sends it (src/gateway/handlers.ts).
  const call = rpc.call({ op: 'channel.create', userId: 'rd-ann', name: 'team', memberIds: ['rd-bob'], requestId: randomUUID() })
    .then((r) => ({ ok: true as const, r }), (err: { code?: string }) => ({ ok: false as const, code: err.code }))
  // The worker has the request and waits in the database; its consume connection drops.
  await sleep(400)
  t.equal(await closeConnections(vhost, 'redeliv-w:consume'), 1, 'the worker\'s consume connection was closed')
  await holding
  const outcome = await call
  await waitUntil(() => worker.status().ready, 15_000, 'worker ready again')
  await sleep(500)
  const created = await sql`select id from channels where created_by = 'rd-ann'`
  t.comment(`caller: ${JSON.stringify(outcome.ok ? 'ok' : outcome.code)}, channels created: ${created.length}`)
  if (outcome.ok) t.equal(created.length, 1, 'answered ok: exactly one channel was created')
  else t.equal(created.length, 0, `answered ${outcome.code}: nothing was created`)
})
