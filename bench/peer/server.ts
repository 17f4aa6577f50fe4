/**
 * The peer we compare with: a plain Socket.IO server scaled out with
 * @socket.io/redis-adapter on the local Redis, the usual choice. It speaks the part
 * of our client protocol the bench uses (message:send with ack → message:new to the
 * rooms of the recipients, typing), with the same server options as our gateway
 * (websocket only, no compression, request objects dropped). Rooms come from the
 * handshake (`auth.channels`), since this server has no membership store.
 *
 * With DATABASE_URL set it stores each message with one INSERT before emitting it,
 * as a user building chat on Socket.IO alone would.
 *
 *   PORT=… JWT_SECRET=… REDIS_URL=… REDIS_KEY=… [DATABASE_URL=…] node --import tsx bench/peer/server.ts
 */
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import { createAdapter } from '@socket.io/redis-adapter'
import { createVerifier } from 'fast-jwt'
import postgres from 'postgres'
import { createClient } from 'redis'
import { Server } from 'socket.io'

const env = process.env
const port = Number(env.PORT ?? 0)
const serverId = env.SERVER_ID ?? `peer-${randomUUID().slice(0, 8)}`
const verify = createVerifier({ key: env.JWT_SECRET ?? '', algorithms: ['HS256'], cache: 10_000 })
const sql = env.DATABASE_URL !== undefined && env.DATABASE_URL !== '' ? postgres(env.DATABASE_URL, { max: 10, onnotice: () => {} }) : undefined

const pub = createClient({ url: env.REDIS_URL ?? 'redis://127.0.0.1:6379' })
const sub = pub.duplicate()
pub.on('error', (err: Error) => process.stderr.write(`redis: ${err.message}\n`))
sub.on('error', (err: Error) => process.stderr.write(`redis: ${err.message}\n`))
await Promise.all([pub.connect(), sub.connect()])

let delivered = 0
const http = createServer((req, res) => {
  if (req.url === '/ready') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ serverId, sockets: io.engine.clientsCount }))
    return
  }
  if (req.url === '/metrics') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end(`peer_messages_total ${delivered}\n`)
    return
  }
  res.writeHead(404).end()
})
const io = new Server(http, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: 16_384,
  pingInterval: 25_000,
  pingTimeout: 20_000,
  // One key per run, so runs never hear each other on the shared Redis.
  adapter: createAdapter(pub, sub, { key: env.REDIS_KEY ?? 'bench-peer' })
})
io.engine.on('connection', (raw: { request: unknown }) => { raw.request = null })

interface Ack { (res: { ok: boolean, clientMsgId?: string, error?: { code: string, message: string } }): void }
type SendPayload = { clientMsgId?: unknown, content?: unknown, toUserId?: unknown, channelId?: unknown }

io.use((socket, next) => {
  try {
    const claims = verify((socket.handshake.auth as { token?: string }).token ?? '') as { sub?: unknown }
    if (typeof claims.sub !== 'string') throw new Error('no sub')
    socket.data.userId = claims.sub
    const channels = (socket.handshake.auth as { channels?: unknown }).channels
    socket.data.channels = Array.isArray(channels) ? channels.filter((c): c is string => typeof c === 'string') : []
    next()
  } catch {
    next(new Error('UNAUTHORIZED'))
  }
})

let nextId = 0
io.on('connection', (socket) => {
  const userId = socket.data.userId as string
  const channels = socket.data.channels as string[]
  socket.join([`u:${userId}`, ...channels.map((c) => `c:${c}`)])
  socket.emit('session:ready', { userId, serverId, channels: [] })

  socket.on('message:send', (p: SendPayload, ack: Ack) => {
    if (typeof ack !== 'function') return
    if (typeof p?.clientMsgId !== 'string' || typeof p.content !== 'string' || (typeof p.toUserId !== 'string') === (typeof p.channelId !== 'string')) {
      ack({ ok: false, error: { code: 'VALIDATION', message: 'bad payload' } })
      return
    }
    const toUserId = typeof p.toUserId === 'string' ? p.toUserId : undefined
    const channelId = typeof p.channelId === 'string' ? p.channelId : undefined
    if (channelId !== undefined && !channels.includes(channelId)) {
      ack({ ok: false, error: { code: 'FORBIDDEN', message: 'not a member' } })
      return
    }
    const emit = (id: string) => {
      const message = { id, channelId: channelId ?? '', kind: channelId === undefined ? 'direct' : 'group', seq: 0, senderId: userId, ...(toUserId !== undefined ? { toUserId } : {}), content: p.content, clientMsgId: p.clientMsgId, createdAt: new Date().toISOString() }
      if (toUserId !== undefined) io.to([`u:${toUserId}`, `u:${userId}`]).emit('message:new', message)
      else io.to(`c:${channelId!}`).emit('message:new', message)
      delivered++
      ack({ ok: true, clientMsgId: p.clientMsgId as string })
    }
    if (sql === undefined) {
      emit(`${serverId}-${++nextId}`)
      return
    }
    sql<Array<{ id: string }>>`
      insert into peer_messages (sender_id, to_user_id, channel_id, client_msg_id, content)
      values (${userId}, ${toUserId ?? null}, ${channelId ?? null}, ${p.clientMsgId as string}, ${p.content as string})
      on conflict (sender_id, client_msg_id) do nothing
      returning id`.then((rows) => {
      if (rows[0] === undefined) ack({ ok: true, clientMsgId: p.clientMsgId as string })
      else emit(String(rows[0].id))
    }, () => ack({ ok: false, error: { code: 'UNAVAILABLE', message: 'database error' } }))
  })

  socket.on('typing', (p: { channelId?: unknown }, ack: Ack) => {
    if (typeof p?.channelId === 'string' && channels.includes(p.channelId)) socket.to(`c:${p.channelId}`).emit('typing', { channelId: p.channelId, userId })
    if (typeof ack === 'function') ack({ ok: true })
  })
})

http.listen(port, '127.0.0.1')
const stop = () => {
  void io.close()
  void Promise.allSettled([pub.quit(), sub.quit(), sql?.end({ timeout: 2 })]).then(() => process.exit(0))
  setTimeout(() => process.exit(0), 3000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
