/**
 * The one way a client event is handled: rate limit, wait for the session, validate,
 * run, and answer through the ack with `{ ok: true, ... }` or `{ ok: false, error }`.
 * A handler that throws never crashes the process; only ClientErrors reach the client.
 *
 * One dispatcher function serves every socket (Socket.IO calls `onAny` listeners with
 * the socket as `this`), so a socket costs no closures per event: at 19,000 idle sockets
 * per gateway, per-socket listeners were a measurable part of the memory per socket.
 */
import type { Static, TSchema } from '@sinclair/typebox'
import type { ClientToServerEvents } from '../contracts/protocol.js'
import { compile, type Validated } from '../contracts/validate.js'
import { ClientError, toErrorAck } from '../errors.js'
import type { GatewayContext } from './context.js'
import type { AppSocket } from './types.js'

export type EventName = keyof ClientToServerEvents

/** A handler of one event: gets the validated payload, returns the ack's extra fields. */
export type Run<S extends TSchema> = (ctx: GatewayContext, socket: AppSocket, payload: Static<S>) => Promise<object>

interface Route { validate: (input: unknown) => Validated<unknown>, run: (ctx: GatewayContext, socket: AppSocket, payload: unknown) => Promise<object> }

export function route<S extends TSchema> (schema: S, run: Run<S>): Route {
  return { validate: compile(schema), run: run as Route['run'] }
}

/** Token bucket state of one socket: `rate` events per second on average, `burst` at once. */
export interface Bucket { tokens: number, last: number }

export function take (bucket: Bucket, rate: number, burst: number): boolean {
  const now = performance.now()
  bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.last) / 1000) * rate)
  bucket.last = now
  if (bucket.tokens < 1) return false
  bucket.tokens -= 1
  return true
}

/**
 * Events a socket may have waiting for its session to open. The session waits for the
 * worker (retrying while it is away); events held meanwhile keep their payloads.
 */
export const MAX_WAITING_EVENTS = 16

/** The shared `onAny` listener for every socket of a gateway. */
export function createDispatcher (ctx: GatewayContext, routes: Record<EventName, Route>) {
  const { SOCKET_RATE_PER_SEC: rate, SOCKET_RATE_BURST: burst } = ctx.config
  const known = new Map<string, Route>(Object.entries(routes))
  return function dispatch (this: AppSocket, event: unknown, ...args: unknown[]): void {
    const socket = this
    // Socket.IO passes the client's ack last (only it can be a function), after exactly
    // one payload; answer malformed calls too, whatever their shape.
    const last = args.at(-1)
    const reply = typeof last === 'function' ? last as (res: unknown) => void : undefined
    const params = reply === undefined ? args : args.slice(0, -1)
    const r = typeof event === 'string' ? known.get(event) : undefined
    const name = r === undefined ? 'unknown' : event as string
    ctx.metrics.events.inc({ event: name })
    const refuse = (code: 'RATE_LIMITED' | 'VALIDATION' | 'UNAVAILABLE', message: string) => {
      ctx.metrics.errors.inc({ event: name, code })
      reply?.({ ok: false, error: { code, message } })
    }
    if (!take(socket.data.bucket, rate, burst)) return refuse('RATE_LIMITED', 'too many events; slow down')
    if (r === undefined) return refuse('VALIDATION', 'unknown event')
    const checked = params.length === 1 ? r.validate(params[0]) : { ok: false as const, reason: `expected one payload, got ${params.length}` }
    if (!checked.ok) return refuse('VALIDATION', checked.reason)
    const early = !ctx.sessions.isOpen(socket)
    if (early) {
      const waiting = socket.data.waiting ?? 0
      if (waiting >= MAX_WAITING_EVENTS) return refuse('UNAVAILABLE', 'the session is not open yet; wait for session:ready')
      socket.data.waiting = waiting + 1
    }
    ctx.sessions.whenReady(socket)
      .then(async (ready) => {
        if (early) socket.data.waiting = (socket.data.waiting ?? 1) - 1
        if (!ready) throw new ClientError('UNAVAILABLE', 'session is not open')
        return await r.run(ctx, socket, checked.value)
      })
      .then((result) => reply?.({ ok: true, ...result }), (err: unknown) => {
        const res = toErrorAck(err)
        if (!(err instanceof ClientError)) ctx.log.error({ err, event: name }, 'event handler failed')
        ctx.metrics.errors.inc({ event: name, code: res.error.code })
        reply?.(res)
      })
  }
}
