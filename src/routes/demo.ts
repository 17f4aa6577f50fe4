/**
 * The demo chat page at `/` (DEMO_ENABLED) and `POST /dev/token` (DEV_TOKENS_ENABLED),
 * both off unless set. The page is plain HTML plus one ES module using the SDK; the
 * SDK's compiled modules and socket.io-client's ESM bundle are served beside it and
 * resolved by an import map, so nothing is bundled and nothing new is installed.
 */
import { readdir, readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createSigner } from 'fast-jwt'
import type { FastifyPluginAsync, FastifyReply } from 'fastify'
import type { Config } from '../config.js'
import { isUserId } from '../contracts/ids.js'
import { errorAck } from '../errors.js'

/** Dev tokens are short-lived on purpose: the demo fetches a new one on every reconnect. */
export const DEV_TOKEN_TTL_MS = 3_600_000

const ROOT = fileURLToPath(new URL(import.meta.url.includes('/dist/src/') ? '../../..' : '../..', import.meta.url))
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8'
}

/** URL path → file: a fixed list, so no request can name a file of its own. */
async function demoFiles (): Promise<Map<string, string>> {
  const files = new Map<string, string>([
    ['/', join(ROOT, 'public/index.html')],
    ['/demo/demo.js', join(ROOT, 'public/demo.js')],
    ['/demo/demo.css', join(ROOT, 'public/demo.css')]
  ])
  // The compiled SDK (dist/, also when the gateway itself runs from src/ under tsx).
  const sdk = join(ROOT, 'dist/src/client')
  for (const name of await readdir(sdk).catch(() => [])) {
    if (name.endsWith('.js') || name.endsWith('.js.map')) files.set(`/demo/client/${name}`, join(sdk, name))
  }
  // The package does not export its dist/ folder, so find it next to its package.json.
  const socketIo = join(dirname(createRequire(import.meta.url).resolve('socket.io-client/package.json')), 'dist')
  for (const name of ['socket.io.esm.min.js', 'socket.io.esm.min.js.map']) files.set(`/demo/vendor/${name}`, join(socketIo, name))
  return files
}

const routes: FastifyPluginAsync<{ config: Config }> = async (app, { config }) => {
  if (config.NODE_ENV === 'production' && (config.DEMO_ENABLED || config.DEV_TOKENS_ENABLED)) {
    app.log.warn('DEMO_ENABLED or DEV_TOKENS_ENABLED is set in production: anyone can sign in as anyone through POST /dev/token')
  }

  if (config.DEV_TOKENS_ENABLED) {
    const sign = createSigner({
      key: config.JWT_SECRET,
      algorithm: 'HS256',
      expiresIn: DEV_TOKEN_TTL_MS,
      ...(config.JWT_ISSUER !== '' ? { iss: config.JWT_ISSUER } : {}),
      ...(config.JWT_AUDIENCE !== '' ? { aud: config.JWT_AUDIENCE } : {})
    })
    app.post('/dev/token', async (req, reply) => {
      const userId = (req.body as { userId?: unknown } | null | undefined)?.userId
      if (typeof userId !== 'string' || !isUserId(userId)) {
        return await reply.code(400).send(errorAck('VALIDATION', 'userId must be 1 to 200 bytes of printable text'))
      }
      return { token: sign({ sub: userId }), expiresInMs: DEV_TOKEN_TTL_MS }
    })
  }

  if (config.DEMO_ENABLED) {
    const files = await demoFiles()
    const serve = async (path: string, reply: FastifyReply) => {
      const file = files.get(path)
      const body = file === undefined ? undefined : await readFile(file).catch(() => undefined)
      if (file === undefined || body === undefined) {
        if (file !== undefined) app.log.warn({ file }, 'demo file missing: the demo needs the source tree (public/) and npm run build (dist/src/client)')
        return await reply.code(404).send(errorAck('NOT_FOUND', 'no such file'))
      }
      return await reply
        .header('cache-control', 'no-cache')
        .header('x-content-type-options', 'nosniff')
        .type(TYPES[extname(file)] ?? 'application/octet-stream')
        .send(body)
    }
    app.get('/', async (_req, reply) => await serve('/', reply))
    app.get('/demo/*', async (req, reply) => await serve(req.url.split('?')[0] ?? '', reply))
  }
}

export default routes
