/**
 * One user cannot fill the workers' request queue for everyone: the reads and channel
 * commands a user has waiting through a gateway are capped (USER_REQUESTS_WAITING), across
 * that user's sockets; past the cap the ack says RATE_LIMITED at once, and other users'
 * requests are not refused. Workers answer every user from one queue, first come first
 * served: before the cap one socket sending full history pages at its rate limit made
 * everyone's channels:list and session opens time out (found in review).
 */
import t from 'tap'
import { connectUser } from '../helpers/client.js'
import { createDatabase, createVhost } from '../helpers/services.js'
import { startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }

type Ack = { ok: boolean, error?: { code: string, message: string } }

t.test('past USER_REQUESTS_WAITING a user\'s requests are refused RATE_LIMITED at once; other users\' wait their turn', async (t) => {
  const worker = await startTestWorker(t, env)
  const gw = await startTestGateway(t, env, { USER_REQUESTS_WAITING: '3', RPC_TIMEOUT_MS: '20000' })
  const hog = await connectUser(t, gw.url, 'hog')
  const hogToo = await connectUser(t, gw.url, 'hog')
  const other = await connectUser(t, gw.url, 'other')
  // No worker: requests wait in the queue, as behind a flood of heavy ones.
  await worker.close()

  const answers: Array<Ack | 'pending'> = []
  const ask = (client: typeof hog) => {
    const i = answers.push('pending') - 1
    client.request<Ack>('channels:list', {}).then((a) => { answers[i] = a }, () => {})
    return i
  }
  const hogs = Array.from({ length: 5 }, () => ask(hog))
  await waitUntil(() => hogs.filter((i) => answers[i] !== 'pending').length >= 2, 5000, 'the two past the cap answered')
  t.same(hogs.slice(3).map((i) => (answers[i] as Ack).error?.code), ['RATE_LIMITED', 'RATE_LIMITED'], 'the 4th and 5th are refused at once')
  t.match((answers[hogs[3]!] as Ack).error?.message, /3 of your requests are still waiting/)
  const fromOtherSocket = ask(hogToo)
  const others = Array.from({ length: 3 }, () => ask(other))
  await waitUntil(() => answers[fromOtherSocket] !== 'pending', 5000, 'the same user\'s other socket answered')
  t.equal((answers[fromOtherSocket] as Ack).error?.code, 'RATE_LIMITED', 'another socket of the same user gains nothing')
  t.ok(others.every((i) => answers[i] === 'pending'), 'another user\'s requests are not refused: they wait for the worker')

  await startTestWorker(t, env)
  await waitUntil(() => [...hogs.slice(0, 3), ...others].every((i) => answers[i] !== 'pending'), 15_000, 'the waiting requests answered')
  t.ok([...hogs.slice(0, 3), ...others].every((i) => (answers[i] as Ack).ok), 'once a worker is back every waiting request is answered')
  const again = await Promise.all([hog.request<Ack>('channels:list', {}), hog.request<Ack>('channels:list', {}), hogToo.request<Ack>('channels:list', {})])
  t.ok(again.every((a) => a.ok), 'answered requests free their places')
})
