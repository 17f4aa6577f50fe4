/**
 * A user's channel list has no bound in the database: anyone may message any id, and each
 * new pair makes a direct channel. An answer listing them all once went out as one broker
 * message whatever its size; past the broker's max_message_size (16 MiB on RabbitMQ 4.x)
 * the broker closes the worker's channel, and the request, handed back, closed it again
 * until it expired, failing every other request in flight each time. The worker now
 * answers LIMIT_REACHED instead of publishing past RPC_MAX_REPLY_BYTES (here its least,
 * 64 KiB, so a few hundred channels are enough on either broker).
 */
import t from 'tap'
import type { Ack } from '../../src/contracts/protocol.js'
import { connectRaw, connectUser, tokenFor } from '../helpers/client.js'
import { createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, env, { RPC_MAX_REPLY_BYTES: '65536' })
const gw = await startTestGateway(t, env)

/** Direct channels between `userId` and `count` fresh users with long ids, as messaging fresh ids makes them. */
async function directChannels (userId: string, count: number): Promise<void> {
  await sql`
    with made as (
      insert into channels (kind, direct_key, created_by)
      select 'direct', json_build_array(${userId}::text, 'fresh-user-with-a-long-id-' || lpad(i::text, 8, '0'))::text, ${userId} from generate_series(1, ${count}) as i
      returning id, direct_key
    )
    insert into members (channel_id, user_id)
    select id, u from made, lateral (values (${userId}::text), ((direct_key::json)->>1)) as v(u)`
}

t.test('a user whose channel list is past RPC_MAX_REPLY_BYTES is refused LIMIT_REACHED; everyone else is served', async (t) => {
  await directChannels('crowded', 1000) // about 170 KB of answer
  const socket = await connectRaw(gw.url, { token: tokenFor('crowded') })
  t.teardown(() => { socket.disconnect() })
  const end = await new Promise<{ code: string, message: string }>((resolve, reject) => {
    socket.on('session:end', resolve)
    socket.on('session:ready', () => reject(new Error('session:ready arrived: the oversized answer was published')))
    setTimeout(() => reject(new Error('no session:end within 10 s')), 10_000).unref()
  })
  t.equal(end.code, 'LIMIT_REACHED', 'the session ends with a coded error')
  t.match(end.message, /more than one reply may carry \(RPC_MAX_REPLY_BYTES 65536\)/, 'which says why')

  // The worker's request channel stayed up: others open sessions and are answered at once.
  const others = await Promise.all(['calm-1', 'calm-2', 'calm-3'].map((id) => connectUser(t, gw.url, id)))
  await directChannels('calm-1', 3)
  for (const client of others) {
    const listed = await client.request<Ack & { channels?: unknown[] }>('channels:list', {})
    t.match(listed, { ok: true }, `${client.userId}: channels:list answered`)
  }
  const created = await others[0]!.request<Ack & { channelId?: string }>('channel:create', { name: 'still fine', memberIds: ['calm-2'] })
  t.match(created, { ok: true }, 'a create is answered too')
})
