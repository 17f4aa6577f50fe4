/**
 * With no DATABASE_URL the worker persists to embedded PGlite in DATA_DIR, migrated on
 * first start, and history survives a restart of the worker.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { Message } from '../../src/contracts/protocol.js'
import { connectUser } from '../helpers/client.js'
import { createVhost } from '../helpers/services.js'
import { spawnGateway, spawnWorker } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const dataDir = mkdtempSync(join(tmpdir(), 'chat-pglite-'))
t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
const env = { amqpUrl, databaseUrl: '' }

t.test('messages persist in the embedded database across a worker restart', async (t) => {
  const worker = await spawnWorker(t, env, { DATA_DIR: dataDir })
  const gw = await spawnGateway(t, env)
  const ann = await connectUser(t, gw.url, 'ann')
  const ben = await connectUser(t, gw.url, 'ben')
  for (const text of ['one', 'two', 'three']) t.equal((await ann.send({ toUserId: 'ben' }, text)).ok, true)
  await ben.waitFor<Message>('message:new', (m) => m.content === 'three', 20_000)

  worker.child.kill('SIGTERM')
  t.equal(await worker.exited, 0)
  await spawnWorker(t, env, { DATA_DIR: dataDir })
  const history = await ben.request<{ ok: boolean, messages: Message[] }>('history:fetch', { withUserId: 'ann' })
  t.same(history.messages.map((m) => m.content), ['one', 'two', 'three'], 'history survived the restart')
  await ann.send({ toUserId: 'ben' }, 'four')
  const four = await ben.waitFor<Message>('message:new', (m) => m.content === 'four', 20_000)
  t.equal(four.seq, 4, 'seq continues')
})
