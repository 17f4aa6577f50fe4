/**
 * The SDK as users get it: the package subpath `chat-gateway/client` resolves to the
 * compiled modules with declarations, and those modules import nothing but
 * socket.io-client and each other (no Node built-ins: they run in browsers).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { ROOT } from '../helpers/system.js'

const DIST = join(ROOT, 'dist/src/client')

t.test('chat-gateway/client resolves to the compiled SDK, with types', async (t) => {
  const specifier = 'chat-gateway/client' // a variable, so type-checking does not need dist/
  const sdk = await import(specifier) as typeof import('../../src/client/index.js')
  t.equal(typeof sdk.ChatClient, 'function')
  t.equal(typeof sdk.createChatClient, 'function')
  t.equal(new sdk.ChatError('CLIENT_CLOSED', 'x').code, 'CLIENT_CLOSED')
  t.match(import.meta.resolve(specifier), /\/dist\/src\/client\/index\.js$/)
  t.ok(existsSync(join(DIST, 'index.d.ts')), 'index.d.ts')
  t.match(readFileSync(join(DIST, 'index.d.ts'), 'utf8'), /ChatClient/)
})

t.test('the compiled SDK imports only socket.io-client and its own modules', async (t) => {
  const files = readdirSync(DIST).filter((f) => f.endsWith('.js'))
  t.ok(files.length >= 5)
  const seen = new Set<string>()
  for (const file of files) {
    const source = readFileSync(join(DIST, file), 'utf8')
    const specifiers = [...source.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]/g), ...source.matchAll(/\bimport\(\s*['"]([^'"]+)['"]/g)].map((m) => m[1]!)
    for (const s of specifiers) seen.add(s)
    const foreign = specifiers.filter((s) => s !== 'socket.io-client' && !/^\.\/[\w-]+\.js$/.test(s))
    t.same(foreign, [], file)
    t.notMatch(source, /\b(process|Buffer|require)\b\s*[.(]/, `${file}: no Node globals`)
  }
  t.ok(seen.has('socket.io-client') && seen.has('./chat-client.js'), 'the scan found the imports')
})
