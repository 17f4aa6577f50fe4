/**
 * Authentication on the real services: every kind of forged, malformed or out-of-date
 * token fails the handshake with UNAUTHORIZED and opens no session; a token that
 * expires while connected ends the socket with TOKEN_EXPIRED; the sender of every
 * message is the token's subject, whatever the payload says.
 */
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import t from 'tap'
import { createSigner, type SignerOptions } from 'fast-jwt'
import type { Message, SessionReady } from '../../src/contracts/protocol.js'
import { base64url, craftToken, disconnected, handshake, nowSeconds } from '../helpers/attack.js'
import { connectRaw, connectUser, tokenFor } from '../helpers/client.js'
import { createDatabase, createVhost, listBindings, sqlClient } from '../helpers/services.js'
import { JWT_SECRET, sleep, startTestGateway, startTestWorker, waitUntil } from '../helpers/system.js'

const { vhost, url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)
const env = { amqpUrl, databaseUrl }
const sql = sqlClient(t, databaseUrl)
await startTestWorker(t, env)
const gw = await startTestGateway(t, env)

const sign = (payload: Record<string, unknown>, opts: Partial<SignerOptions> = {}) =>
  createSigner({ key: JWT_SECRET, ...opts })(payload)
const anHour = () => nowSeconds() + 3600
const brokerKeys = async () => (await listBindings(vhost, 'chat.outgoing')).map((b) => b.routingKey)

t.test('forged, malformed and out-of-date tokens are refused with UNAUTHORIZED and open no session', async (t) => {
  const valid = sign({ sub: 'mallory', exp: anHour() })
  const [header, , signature] = valid.split('.')
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = (k: typeof rsa.privateKey) => k.export({ type: 'pkcs8', format: 'pem' }).toString()
  const longSub = 'x'.repeat(201)

  const cases: Array<[string, unknown]> = [
    ['signed with another secret', createSigner({ key: 'another-secret-0123456789abcdef' })({ sub: 'admin', exp: anHour() })],
    ['payload swapped after signing', `${header}.${base64url({ sub: 'admin', exp: anHour() })}.${signature}`],
    ['signature removed', `${header}.${base64url({ sub: 'mallory', exp: anHour() })}.`],
    ['alg none, no signature', craftToken({ alg: 'none', typ: 'JWT' }, { sub: 'admin', exp: anHour() })],
    ['alg none, with a signature', `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url({ sub: 'admin', exp: anHour() })}.${signature}`],
    ['alg None', craftToken({ alg: 'None' }, { sub: 'admin', exp: anHour() })],
    ['alg NONE', craftToken({ alg: 'NONE' }, { sub: 'admin', exp: anHour() })],
    ['no alg at all, HMAC-signed with the right secret', craftToken({ typ: 'JWT' }, { sub: 'admin', exp: anHour() }, JWT_SECRET)],
    ['HS512 with the right secret', sign({ sub: 'admin', exp: anHour() }, { algorithm: 'HS512' })],
    ['HS384 with the right secret', sign({ sub: 'admin', exp: anHour() }, { algorithm: 'HS384' })],
    ['RS256 (its own key pair)', createSigner({ algorithm: 'RS256', key: pem(rsa.privateKey) })({ sub: 'admin', exp: anHour() })],
    ['ES256 (its own key pair)', createSigner({ algorithm: 'ES256', key: pem(ec.privateKey) })({ sub: 'admin', exp: anHour() })],
    ['header says RS256, HMAC-signed with the right secret', craftToken({ alg: 'RS256', typ: 'JWT' }, { sub: 'admin', exp: anHour() }, JWT_SECRET)],
    ['expired a minute ago', sign({ sub: 'mallory', exp: nowSeconds() - 60 })],
    ['expired a second ago (inside the issuer clock tolerance, but a socket would be cut at once)', sign({ sub: 'mallory', exp: nowSeconds() - 1 })],
    ['no exp: a socket that would never end', sign({ sub: 'mallory' })],
    ['not valid for another 10 s (nbf past the 5 s tolerance)', sign({ sub: 'mallory', nbf: nowSeconds() + 10, exp: anHour() })],
    ['expired long ago', sign({ sub: 'mallory', exp: 1 })],
    ['not valid for another minute (nbf)', sign({ sub: 'mallory', nbf: nowSeconds() + 60, exp: anHour() })],
    ['exp is not a number', craftToken({ alg: 'HS256', typ: 'JWT' }, { sub: 'mallory', exp: 'tomorrow' }, JWT_SECRET)],
    ['nbf is not a number', craftToken({ alg: 'HS256', typ: 'JWT' }, { sub: 'mallory', nbf: 'now', exp: anHour() }, JWT_SECRET)],
    ['no sub', sign({ exp: anHour() })],
    ['sub is a number', sign({ sub: 42, exp: anHour() })],
    ['sub is null', sign({ sub: null, exp: anHour() })],
    ['sub is an object', sign({ sub: { id: 'admin' }, exp: anHour() })],
    ['sub is an array', sign({ sub: ['admin'], exp: anHour() })],
    ['sub is empty', sign({ sub: '', exp: anHour() })],
    ['sub is 201 bytes', sign({ sub: longSub, exp: anHour() })],
    ['sub is 201 bytes in 67 characters', sign({ sub: '€'.repeat(67), exp: anHour() })],
    ['sub has a NUL', sign({ sub: 'admin\u0000', exp: anHour() })],
    ['sub has a newline', sign({ sub: 'admin\nroot', exp: anHour() })],
    ['sub has DEL', sign({ sub: 'admin\u007f', exp: anHour() })],
    ['sub has a C1 control', sign({ sub: 'admin\u0085', exp: anHour() })],
    ['sub has a lone surrogate', sign({ sub: 'admin\ud800', exp: anHour() })],
    ['not a JWT', 'garbage'],
    ['three empty parts', '..'],
    ['header is not JSON', `${base64url('not json')}.${base64url({ sub: 'admin' })}.${signature}`],
    ['a valid token with a leading space', ` ${valid}`],
    ['a valid token over 8 KiB (padded with a claim)', sign({ sub: 'mallory', exp: anHour(), pad: 'x'.repeat(9000) })],
    ['empty string', ''],
    ['token is a number', 42],
    ['token is null', null],
    ['token is an array holding a valid token', [valid]],
    ['token is an object', { token: valid }]
  ]
  for (const [what, token] of cases) {
    t.equal(await handshake(gw.url, { token }, {}), 'UNAUTHORIZED', what)
  }
  t.equal(await handshake(gw.url, {}), 'UNAUTHORIZED', 'no token at all')
  t.equal(await handshake(gw.url, { jwt: valid, authorization: `Bearer ${valid}` }), 'UNAUTHORIZED', 'a token under another name')
  t.equal(await handshake(gw.url, {}, { query: { token: valid } }), 'UNAUTHORIZED', 'a token in the query string')

  t.equal(gw.app.sessions.socketCount, 0, 'no socket was attached')
  const keys = await brokerKeys()
  t.notOk(keys.some((k) => k.startsWith('user:')), `no user key was bound (${keys.join(', ')})`)
  // The control: the same handshake with a good token does connect, so the refusals above are real.
  t.equal(await handshake(gw.url, { token: valid }), 'connected', 'control: the unmodified token connects')
  t.equal(await handshake(gw.url, { token: craftToken({ alg: 'HS256', typ: 'JWT' }, { sub: 'mallory', exp: anHour() }, JWT_SECRET) }), 'connected',
    'control: a hand-built HS256 token connects')
  t.equal(await handshake(gw.url, { token: sign({ sub: 'mallory', nbf: nowSeconds() + 2, iat: nowSeconds() + 2, exp: anHour() }) }), 'connected',
    'an issuer whose clock is 2 s ahead is tolerated')
})

t.test('with JWT_ISSUER and JWT_AUDIENCE set, tokens must carry exactly those', async (t) => {
  const strict = await startTestGateway(t, env, { JWT_ISSUER: 'https://auth.example.com', JWT_AUDIENCE: 'chat' })
  const claims = { sub: 'ida', exp: anHour() }
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['right issuer and audience', { ...claims, iss: 'https://auth.example.com', aud: 'chat' }, 'connected'],
    ['audience list holding ours', { ...claims, iss: 'https://auth.example.com', aud: ['billing', 'chat'] }, 'connected'],
    ['wrong issuer', { ...claims, iss: 'https://evil.example.com', aud: 'chat' }, 'UNAUTHORIZED'],
    ['issuer with a suffix', { ...claims, iss: 'https://auth.example.com.evil', aud: 'chat' }, 'UNAUTHORIZED'],
    ['wrong audience', { ...claims, iss: 'https://auth.example.com', aud: 'billing' }, 'UNAUTHORIZED'],
    ['no issuer', { ...claims, aud: 'chat' }, 'UNAUTHORIZED'],
    ['no audience', { ...claims, iss: 'https://auth.example.com' }, 'UNAUTHORIZED'],
    ['neither', claims, 'UNAUTHORIZED'],
    ['issuer is a number', { ...claims, iss: 1, aud: 'chat' }, 'UNAUTHORIZED']
  ]
  for (const [what, payload, outcome] of cases) t.equal(await handshake(strict.url, { token: sign(payload) }), outcome, what)
})

t.test('a token that expires while connected ends the socket with TOKEN_EXPIRED', async (t) => {
  const token = sign({ sub: 'short-lived' }, { expiresIn: 3000 })
  const exp = (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp
  const client = await connectUser(t, gw.url, 'short-lived', { token })
  const gone = disconnected(client.socket, 20_000)
  const end = await client.waitFor<{ code: string, message: string }>('session:end', undefined, 20_000)
  const endedAt = Date.now()
  t.equal(end.code, 'TOKEN_EXPIRED')
  t.ok(endedAt >= exp * 1000 - 1000, 'not ended before the token expired')
  t.equal(await gone, 'io server disconnect', 'the server closed the socket')
  await waitUntil(() => gw.app.sessions.socketsOf('short-lived') === 0, 10_000, 'session detached')
  await waitUntil(() => !gw.app.bindings.isBound('user:short-lived') && gw.app.bindings.stats().pending === 0, 10_000, 'user key released')
  t.notOk((await brokerKeys()).includes('user:short-lived'), 'the broker no longer routes the user here')

  // Once expired, the same token cannot open a new session.
  await sleep(Math.max(0, (exp + 1) * 1000 - Date.now()))
  t.equal(await handshake(gw.url, { token }), 'UNAUTHORIZED', 'reconnecting with the expired token fails')
})

t.test('the sender is always the token subject', async (t) => {
  const eve = await connectUser(t, gw.url, 'eve')
  const fay = await connectUser(t, gw.url, 'fay')
  const spoofs: Array<[string, unknown]> = [
    ['message:send with senderId', { clientMsgId: randomUUID(), content: 'from fay, honest', toUserId: 'fay', senderId: 'fay' }],
    ['message:send with userId', { clientMsgId: randomUUID(), content: 'from fay, honest', toUserId: 'fay', userId: 'fay' }],
    ['message:send with from', { clientMsgId: randomUUID(), content: 'from fay, honest', toUserId: 'fay', from: 'fay' }],
    ['message:send with v and senderId (a whole broker envelope)', { v: 1, senderId: 'fay', clientMsgId: randomUUID(), content: 'from fay, honest', toUserId: 'fay' }]
  ]
  for (const [what, payload] of spoofs) t.match(await eve.request('message:send', payload), { ok: false, error: { code: 'VALIDATION' } }, what)
  t.match(await eve.request('history:fetch', { withUserId: 'fay', userId: 'fay' }), { ok: false, error: { code: 'VALIDATION' } }, 'history:fetch with userId')
  t.match(await eve.request('channel:create', { name: 'fay\'s', memberIds: [], createdBy: 'fay' }), { ok: false, error: { code: 'VALIDATION' } }, 'channel:create with createdBy')
  t.match(await eve.request('channel:create', { name: 'fay\'s', memberIds: [], userId: 'fay' }), { ok: false, error: { code: 'VALIDATION' } }, 'channel:create with userId')

  const sent = await eve.send({ toUserId: 'fay' }, 'from eve')
  const got = await fay.waitFor<Message>('message:new', (m) => m.clientMsgId === sent.clientMsgId)
  t.equal(got.senderId, 'eve', 'delivered with the token\'s sub')
  const created = await eve.request<{ ok: boolean, channelId: string }>('channel:create', { name: 'eve\'s', memberIds: ['fay'] })
  t.equal(created.ok, true)
  const [channel] = await sql<Array<{ created_by: string }>>`select created_by from channels where id = ${created.channelId}`
  t.equal(channel?.created_by, 'eve', 'a channel is created by the token\'s sub')
  const rows = await sql<Array<{ sender_id: string, content: string }>>`select sender_id, content from messages`
  t.same(rows, [{ sender_id: 'eve', content: 'from eve' }], 'only the genuine message is stored, as eve\'s')

  // Extra handshake fields cannot name another user either.
  const extra = await connectRaw(gw.url, { token: tokenFor('eve'), userId: 'fay', sub: 'fay' })
  t.teardown(() => { extra.disconnect() })
  const ready = await new Promise<SessionReady>((resolve) => extra.once('session:ready', resolve))
  t.equal(ready.userId, 'eve', 'auth.userId and auth.sub are ignored')
  t.equal(gw.app.sessions.socketsOf('fay'), 1, 'fay still has only her own socket')
})
