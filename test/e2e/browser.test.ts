/**
 * The demo page in a real browser: headless Debian Chromium driven by playwright-core,
 * two pages on two gateways (separate processes) chat — a direct message, a group
 * both see, typing — and a screenshot is kept in test-artifacts/.
 * Chromium is not installed here: .ci/run installs Debian's package when missing.
 */
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import t from 'tap'
import { createDatabase, createVhost } from '../helpers/services.js'
import { ROOT, spawnGateway, spawnWorker } from '../helpers/system.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const ARTIFACTS = join(ROOT, 'test-artifacts')
const WAIT = { timeout: 30_000 }

if (!existsSync(CHROMIUM)) {
  // On CI a missing browser is a broken set-up, not a reason to skip.
  if (process.env.CI !== undefined && process.env.CI !== '') t.fail(`no Chromium at ${CHROMIUM}: .ci/run should have installed Debian's chromium`)
  else t.skip(`no Chromium at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)`, async () => {})
} else {
  const { url: amqpUrl } = await createVhost(t)
  const databaseUrl = await createDatabase(t)
  const env = { amqpUrl, databaseUrl }
  const demo = { DEMO_ENABLED: 'true', DEV_TOKENS_ENABLED: 'true' }
  await spawnWorker(t, env)
  const [g1, g2] = await Promise.all([spawnGateway(t, env, demo), spawnGateway(t, env, demo)])

  // launch() gives the browser a new, empty profile directory of its own every time.
  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(() => browser.close())

  const pageErrors: string[] = []
  async function signIn (url: string, name: string): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1100, height: 700 } })
    const page = await context.newPage()
    page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`))
    page.on('console', (msg) => { if (msg.type() === 'error') pageErrors.push(`${name} console: ${msg.text()}`) })
    page.on('response', (res) => { if (res.status() >= 400) pageErrors.push(`${name}: HTTP ${res.status()} for ${res.url()}`) })
    await page.goto(url)
    await page.fill('#login-name', name)
    await page.click('#login-button')
    await page.locator('#status[data-state="ready"]').waitFor(WAIT)
    return page
  }
  const message = (page: Page, text: string) => page.locator('#messages li', { hasText: text }).waitFor(WAIT)
  const channelButton = (page: Page, title: string) => page.locator('#channels button', { hasText: title })

  const alice = await signIn(g1.url, 'alice')
  const bob = await signIn(g2.url, 'bob')

  t.test('the two pages are on two different gateways', async (t) => {
    const [a, b] = [await alice.textContent('#server'), await bob.textContent('#server')]
    t.ok(a !== null && a !== '' && b !== null && b !== '')
    t.not(a, b)
  })

  t.test('a direct message arrives on the other gateway', async (t) => {
    await alice.fill('#dm-user', 'bob')
    await alice.click('#dm-open')
    await alice.fill('#text', 'hello bob, this is alice')
    await alice.click('#send')
    await message(alice, 'hello bob, this is alice')
    await channelButton(bob, '@ alice').waitFor(WAIT)
    await channelButton(bob, '@ alice').click()
    await message(bob, 'hello bob, this is alice')
    t.pass('bob read it')
  })

  t.test('a group message reaches both members, and typing shows', async (t) => {
    await alice.fill('#group-name', 'team')
    await alice.fill('#group-members', 'bob')
    await alice.click('#group-create')
    await alice.locator('#title', { hasText: '# team' }).waitFor(WAIT)
    await channelButton(bob, '# team').waitFor(WAIT)
    await alice.fill('#text', 'hello team')
    await alice.click('#send')
    await message(alice, 'hello team')
    await channelButton(bob, '# team').click()
    await message(bob, 'hello team')

    await bob.locator('#text').pressSequentially('hi alice', { delay: 20 })
    await alice.locator('#typing', { hasText: 'bob is typing' }).waitFor(WAIT)
    await bob.click('#send')
    await message(alice, 'hi alice')
    await message(bob, 'hi alice')
    t.same(await alice.locator('#messages li').allTextContents().then((all) => all.map((s) => s.replace(/\d\d:\d\d.*$/, '').trim())),
      ['alicehello team', 'bobhi alice'], 'both messages, in order, on each page')
  })

  t.test('a screenshot is kept as a test artifact', async (t) => {
    mkdirSync(ARTIFACTS, { recursive: true })
    await alice.screenshot({ path: join(ARTIFACTS, 'demo.png') })
    await bob.screenshot({ path: join(ARTIFACTS, 'demo-bob.png') })
    t.ok(existsSync(join(ARTIFACTS, 'demo.png')))
    t.same(pageErrors, [], 'no script errors on either page')
  })
}
