/**
 * After a broker outage a gateway re-reads the channels of all its users, 500 to a
 * request. One user whose read fails (in far too many channels, or a row the worker
 * cannot read) used to fail the whole pass, retried forever: no other user of that
 * gateway got their missed joins applied or their session:resync. Here such a user
 * shares a gateway with others, the gateway's broker connection is cut, and the others
 * must recover while the unreadable user is told to reconnect.
 */
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { ChannelSummary } from '../../src/contracts/protocol.js'
import { connectUser, type TestClient } from '../helpers/client.js'
import { closeConnections, createDatabase, createVhost, sqlClient } from '../helpers/services.js'
import { startTestGateway, startTestWorker } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, env, { MEMBERSHIPS_MAX_CHANNELS: '50' })

/** A group `userId` belongs to without any notice about it: what an outage loses. */
async function silentGroup (userId: string): Promise<string> {
  const [row] = await sql<Array<{ id: string }>>`insert into channels (kind, name, created_by) values ('group', 'missed', ${userId}) returning id`
  await sql`insert into members (channel_id, user_id) values (${row!.id}, ${userId})`
  return row!.id
}

/** Cuts the gateway's broker connections and expects `light` to recover and `unreadable` to be ended. */
async function cutAndCheck (t: Test, serverId: string, light: TestClient[], unreadable: TestClient, missed: string[]): Promise<void> {
  t.ok(await closeConnections(vhost, serverId) >= 1, 'closed the gateway\'s broker connections')
  for (const [k, client] of light.entries()) {
    const joined = await client.waitFor<{ channel: ChannelSummary }>('channel:joined', (j) => j.channel.id === missed[k], 30_000)
    t.equal(joined.channel.id, missed[k], `${client.userId}: the channel joined during the outage is announced`)
    const resync = await client.waitFor<{ reason: string }>('session:resync', undefined, 30_000)
    t.equal(resync.reason, 'BROKER_RECONNECTED', `${client.userId}: told to catch up`)
    t.ok(client.socket.connected, `${client.userId}: still connected`)
  }
  const end = await unreadable.waitFor<{ code: string }>('session:end', undefined, 30_000)
  t.equal(end.code, 'UNAVAILABLE', 'the user whose channels could not be read is told to reconnect')
  t.notOk(unreadable.events.some((e) => e.event === 'session:resync'), 'and is not told its stale session is caught up')
}

t.test('a user whose channel list the worker cannot read does not stop the others\' re-read', async (t) => {
  const gw = await startTestGateway(t, env)
  const light = [await connectUser(t, gw.url, 'u1-ann'), await connectUser(t, gw.url, 'u1-bob')]
  const broken = await connectUser(t, gw.url, 'u1-broken')
  // A direct channel whose key is not the JSON pair it must be: every read naming the
  // user fails (INTERNAL), as a read that times out would.
  const [row] = await sql<Array<{ id: string }>>`insert into channels (kind, direct_key, created_by) values ('direct', ${`corrupt ${randomUUID()}`}, 'u1-broken') returning id`
  await sql`insert into members (channel_id, user_id) values (${row!.id}, 'u1-broken')`
  const missed = [await silentGroup('u1-ann'), await silentGroup('u1-bob')]
  await cutAndCheck(t, gw.config.SERVER_ID, light, broken, missed)
})

t.test('a user in more channels than one answer may list (MEMBERSHIPS_MAX_CHANNELS) is ended; the others recover', async (t) => {
  const gw = await startTestGateway(t, env)
  const light = [await connectUser(t, gw.url, 'u2-ann'), await connectUser(t, gw.url, 'u2-bob'), await connectUser(t, gw.url, 'u2-cid')]
  const heavy = await connectUser(t, gw.url, 'u2-heavy')
  // Direct channels with 60 fresh users, as messaging fresh ids makes them (without bound).
  await sql`
    with made as (
      insert into channels (kind, direct_key, created_by)
      select 'direct', json_build_array('u2-heavy', 'u2-fresh-' || i)::text, 'u2-heavy' from generate_series(1, 60) as i
      returning id, direct_key
    )
    insert into members (channel_id, user_id)
    select id, u from made, lateral (values ('u2-heavy'), ((direct_key::json)->>1)) as v(u)`
  const missed = [await silentGroup('u2-ann'), await silentGroup('u2-bob'), await silentGroup('u2-cid')]
  await cutAndCheck(t, gw.config.SERVER_ID, light, heavy, missed)
})
