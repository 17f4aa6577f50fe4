/**
 * The demo page and dev tokens: off by default, and when enabled, a page whose
 * modules all load and a token endpoint whose tokens the gateway accepts.
 */
import { createVerifier } from 'fast-jwt'
import t from 'tap'
import { ChatClient } from '../../src/client/index.js'
import { createDatabase, createVhost } from '../helpers/services.js'
import { JWT_SECRET, startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
await startTestWorker(t, env)
const plain = await startTestGateway(t, env)
const demo = await startTestGateway(t, env, { DEMO_ENABLED: 'true', DEV_TOKENS_ENABLED: 'true' })

const post = (url: string, body: unknown) =>
  fetch(`${url}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })

t.test('off by default: no page, no token endpoint', async (t) => {
  t.equal((await fetch(`${plain.url}/`)).status, 404)
  t.equal((await fetch(`${plain.url}/demo/demo.js`)).status, 404)
  t.equal((await post(plain.url, { userId: 'x' })).status, 404)
  t.equal(plain.config.DEMO_ENABLED, false)
  t.equal(plain.config.DEV_TOKENS_ENABLED, false)
})

t.test('enabled: the page, its module, the SDK and socket.io-client are served', async (t) => {
  const page = await fetch(`${demo.url}/`)
  t.equal(page.status, 200)
  t.match(page.headers.get('content-type'), /^text\/html/)
  const html = await page.text()
  t.match(html, /<script type="importmap">/)
  const imports = (JSON.parse(/<script type="importmap">([\s\S]*?)<\/script>/.exec(html)![1]!) as { imports: Record<string, string> }).imports
  t.same(Object.keys(imports).sort(), ['chat-gateway/client', 'socket.io-client'])
  for (const path of [...Object.values(imports), '/demo/demo.js', '/demo/client/chat-client.js', '/demo/demo.css']) {
    const res = await fetch(`${demo.url}${path}`)
    t.equal(res.status, 200, path)
    t.match(res.headers.get('content-type'), path.endsWith('.css') ? /^text\/css/ : /^text\/javascript/, path)
  }
  t.match(await (await fetch(`${demo.url}/demo/vendor/socket.io.esm.min.js`)).text(), /export\s*\{/, 'an ES module')
  t.equal((await fetch(`${demo.url}/demo/../package.json`)).status, 404, 'only listed files')
  t.equal((await fetch(`${demo.url}/demo/client/../../../package.json`)).status, 404)
  t.equal((await fetch(`${demo.url}/demo/nope.js`)).status, 404)
})

t.test('POST /dev/token signs a token the gateway accepts, and refuses bad names', async (t) => {
  const res = await post(demo.url, { userId: 'demo-user' })
  t.equal(res.status, 200)
  const { token, expiresInMs } = await res.json() as { token: string, expiresInMs: number }
  const claims = createVerifier({ key: JWT_SECRET })(token) as { sub: string, exp: number }
  t.equal(claims.sub, 'demo-user')
  t.ok(claims.exp * 1000 <= Date.now() + expiresInMs + 1000, 'expires')
  const client = new ChatClient({ url: demo.url, token })
  t.teardown(() => client.close())
  await waitUntil(() => client.state === 'ready', 15_000)
  t.equal(client.userId, 'demo-user')

  for (const body of [{}, { userId: '' }, { userId: 'a\u0000b' }, { userId: 'x'.repeat(201) }, { userId: 5 }]) {
    const bad = await post(demo.url, body)
    t.equal(bad.status, 400, JSON.stringify(body).slice(0, 30))
    t.match(await bad.json(), { ok: false, error: { code: 'VALIDATION' } })
  }
})
