/** socket.io-client helpers: signed tokens, connected users, and waiting for events. */
import { randomUUID } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import { io, type Socket } from 'socket.io-client'
import type { Test } from 'tap'
import type { ClientToServerEvents, Message, ServerToClientEvents, SessionReady } from '../../src/contracts/protocol.js'
import { JWT_SECRET, sleep } from './system.js'

export type ClientSocket = Socket<ServerToClientEvents, ClientToServerEvents>

const signer = createSigner({ key: JWT_SECRET, expiresIn: 3_600_000 })
export const tokenFor = (userId: string, claims: Record<string, unknown> = {}) => signer({ sub: userId, ...claims })

export interface TestClient {
  userId: string
  socket: ClientSocket
  ready: SessionReady
  /** Every event received, in order. */
  events: Array<{ event: string, args: unknown[] }>
  messages: () => Message[]
  /** Resolves with the first matching event (already received or future). */
  waitFor: <T = unknown>(event: string, match?: (payload: T) => boolean, timeoutMs?: number) => Promise<T>
  send: (target: { toUserId: string } | { channelId: string }, content: string, clientMsgId?: string) => Promise<{ ok: boolean, clientMsgId?: string, error?: { code: string } }>
  request: <R = any>(event: keyof ClientToServerEvents, payload: unknown) => Promise<R>
  close: () => void
}

export async function connectRaw (url: string, auth: Record<string, unknown>, opts: { reconnection?: boolean } = {}): Promise<ClientSocket> {
  const socket: ClientSocket = io(url, { transports: ['websocket'], auth, reconnection: opts.reconnection ?? false, forceNew: true })
  return socket
}

/** A user's socket, resolved at `session:ready`; `token` replaces the usual one-hour token for `userId`. */
export async function connectUser (t: Test, url: string, userId: string, opts: { timeoutMs?: number, token?: string } = {}): Promise<TestClient> {
  const socket: ClientSocket = io(url, { transports: ['websocket'], auth: { token: opts.token ?? tokenFor(userId) }, reconnection: false, forceNew: true })
  t.teardown(() => { socket.disconnect() })
  const events: TestClient['events'] = []
  const waiters = new Set<{ event: string, match: (p: any) => boolean, resolve: (p: any) => void }>()
  socket.onAny((event: string, ...args: unknown[]) => {
    events.push({ event, args })
    for (const w of waiters) {
      if (w.event === event && w.match(args[0])) {
        waiters.delete(w)
        w.resolve(args[0])
      }
    }
  })
  const waitFor: TestClient['waitFor'] = (event, match = () => true, timeoutMs = 10_000) => {
    const seen = events.find((e) => e.event === event && match(e.args[0] as any))
    if (seen !== undefined) return Promise.resolve(seen.args[0] as any)
    return new Promise((resolve, reject) => {
      const w = { event, match: match as (p: any) => boolean, resolve }
      waiters.add(w)
      setTimeout(() => {
        if (waiters.delete(w)) reject(new Error(`${userId}: no ${event} within ${timeoutMs} ms`))
      }, timeoutMs).unref()
    })
  }
  const failed = new Promise<never>((_resolve, reject) => socket.once('connect_error', (err) => reject(err)))
  const ready = await Promise.race([waitFor<SessionReady>('session:ready', undefined, opts.timeoutMs ?? 10_000), failed])
  return {
    userId,
    socket,
    ready,
    events,
    messages: () => events.filter((e) => e.event === 'message:new').map((e) => e.args[0] as Message),
    waitFor,
    send: (target, content, clientMsgId = randomUUID()) => socket.timeout(10_000).emitWithAck('message:send', { ...target, content, clientMsgId } as never) as never,
    request: (event, payload) => socket.timeout(10_000).emitWithAck(event, payload as never) as never,
    close: () => { socket.disconnect() }
  }
}

/** Waits a little for stragglers, to assert that something did NOT arrive. */
export const settle = (ms = 300) => sleep(ms)
