/** Client-side tools for the security tests: handshakes with arbitrary auth, tokens built by hand. */
import { createHmac } from 'node:crypto'
import { io, Manager, type Socket } from 'socket.io-client'
import type { Test } from 'tap'
import type { ClientSocket } from './client.js'
import { sleep } from './system.js'

/**
 * Opens a socket with `auth` (any value, as a hostile client would send it) and
 * resolves with the outcome, the connect_error message or 'connected', and the
 * socket, left open; the caller closes it.
 */
export async function tryConnect (url: string, auth: unknown, opts: { query?: Record<string, string> } = {}): Promise<{ outcome: string, socket: ClientSocket }> {
  const socket: ClientSocket = io(url, {
    transports: ['websocket'],
    // socket.io-client types auth as an object; a hostile client sends whatever it likes.
    auth: auth as Record<string, unknown>,
    reconnection: false,
    forceNew: true,
    timeout: 15_000,
    ...(opts.query !== undefined ? { query: opts.query } : {})
  })
  const outcome = await new Promise<string>((resolve) => {
    socket.once('connect', () => resolve('connected'))
    socket.once('connect_error', (err) => resolve(err.message))
  })
  return { outcome, socket }
}

/** The outcome of a handshake ('connected' or the connect_error message); the socket is closed. */
export async function handshake (url: string, auth: unknown, opts: { query?: Record<string, string> } = {}): Promise<string> {
  const { outcome, socket } = await tryConnect(url, auth, opts)
  socket.disconnect()
  return outcome
}

/** Resolves when the socket is disconnected, with the reason. */
export function disconnected (socket: ClientSocket, timeoutMs = 15_000): Promise<string> {
  if (!socket.connected && !socket.active) return Promise.resolve('already disconnected')
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still connected after ${timeoutMs} ms`)), timeoutMs)
    socket.once('disconnect', (reason) => {
      clearTimeout(timer)
      resolve(reason)
    })
  })
}

export const base64url = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

/** A JWT assembled by hand: any header, any payload, signed with HMAC-SHA256 over `secret` or not at all. */
export function craftToken (header: unknown, payload: unknown, secret?: string): string {
  const input = `${base64url(header)}.${base64url(payload)}`
  const signature = secret === undefined ? '' : createHmac('sha256', secret).update(input).digest('base64url')
  return `${input}.${signature}`
}

export const nowSeconds = () => Math.floor(Date.now() / 1000)

/** A decoded Socket.IO packet, as the client's Manager reports it. */
export interface RawPacket { type: number, nsp: string, data?: unknown, id?: number }

/**
 * An open Engine.IO connection with no Socket.IO socket on it: the test writes raw
 * Socket.IO packets (`0{...}` CONNECT, `2[...]` EVENT, binary frames…) and reads
 * every packet the server sends back.
 */
export async function rawConnection (t: Test, url: string) {
  const manager = new Manager(url, { transports: ['websocket'], reconnection: false, autoConnect: false, forceNew: true })
  await new Promise<void>((resolve, reject) => manager.open((err) => { if (err === undefined) resolve(); else reject(err) }))
  const engine = manager.engine
  const packets: RawPacket[] = []
  manager.on('packet', (p) => { packets.push(p as RawPacket) })
  let closed = false
  const closing = new Promise<void>((resolve) => engine.on('close', () => { closed = true; resolve() }))
  t.teardown(() => { engine.close() })
  return {
    write: (data: string | Buffer) => { engine.write(data) },
    packets,
    closed: () => closed,
    /** Resolves when the server closed the connection; rejects after timeoutMs. */
    whenClosed: (timeoutMs = 15_000) => Promise.race([closing, sleep(timeoutMs).then(() => { throw new Error(`connection still open after ${timeoutMs} ms`) })]),
    close: () => { engine.close() }
  }
}

/**
 * Emits any event with any arguments and waits for the ack (the typed client only
 * allows protocol events with one payload, which is exactly what an attacker ignores).
 */
export function emitAny (socket: ClientSocket, timeoutMs: number, event: string, ...args: unknown[]): Promise<unknown> {
  const untyped = socket as unknown as Socket
  return untyped.timeout(timeoutMs).emitWithAck(event, ...args) as Promise<unknown>
}

/** Emits any event with any arguments and no ack. */
export function emitRaw (socket: ClientSocket, event: string, ...args: unknown[]): void {
  (socket as unknown as Socket).emit(event, ...args)
}
