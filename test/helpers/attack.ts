/** Client-side tools for the security tests: handshakes with arbitrary auth, tokens built by hand. */
import { createHmac } from 'node:crypto'
import { io } from 'socket.io-client'
import type { ClientSocket } from './client.js'

/**
 * Opens a socket with `auth` (any value, as a hostile client would send it) and
 * resolves with the connect_error message, or 'connected'. The socket is closed either way.
 */
export async function handshake (url: string, auth: unknown, opts: { query?: Record<string, string> } = {}): Promise<string> {
  const socket: ClientSocket = io(url, {
    transports: ['websocket'],
    // socket.io-client types auth as an object; a hostile client sends whatever it likes.
    auth: auth as Record<string, unknown>,
    reconnection: false,
    forceNew: true,
    timeout: 15_000,
    ...(opts.query !== undefined ? { query: opts.query } : {})
  })
  try {
    return await new Promise<string>((resolve) => {
      socket.once('connect', () => resolve('connected'))
      socket.once('connect_error', (err) => resolve(err.message))
    })
  } finally {
    socket.disconnect()
  }
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
