/**
 * The one way a client event is handled: rate limit, wait for the session, validate,
 * run, and answer through the ack with `{ ok: true, ... }` or `{ ok: false, error }`.
 * A handler that throws never crashes the process; only ClientErrors reach the client.
 */
import type { Static, TSchema } from '@sinclair/typebox'
import type { ClientToServerEvents } from '../contracts/protocol.js'
import { compile } from '../contracts/validate.js'
import { ClientError, toErrorAck } from '../errors.js'
import type { GatewayContext } from './context.js'
import type { AppSocket } from './types.js'

export type EventName = keyof ClientToServerEvents

/** A token bucket per socket: `rate` events per second on average, `burst` at once. */
export function createRateLimiter (rate: number, burst: number) {
  let tokens = burst
  let last = performance.now()
  return (): boolean => {
    const now = performance.now()
    tokens = Math.min(burst, tokens + ((now - last) / 1000) * rate)
    last = now
    if (tokens < 1) return false
    tokens -= 1
    return true
  }
}

export function handle<S extends TSchema, R extends object> (
  ctx: GatewayContext,
  socket: AppSocket,
  allow: () => boolean,
  event: EventName,
  schema: S,
  run: (payload: Static<S>) => Promise<R>
): void {
  const validate = compile(schema)
  socket.on(event, (...args: unknown[]) => {
    // Socket.IO passes the client's ack last (only it can be a function), after exactly
    // one payload; answer malformed calls too, whatever their shape.
    const last = args.at(-1)
    const reply = typeof last === 'function' ? last as (res: unknown) => void : undefined
    const params = reply === undefined ? args : args.slice(0, -1)
    ctx.metrics.events.inc({ event })
    if (!allow()) {
      ctx.metrics.errors.inc({ event, code: 'RATE_LIMITED' })
      reply?.({ ok: false, error: { code: 'RATE_LIMITED', message: 'too many events; slow down' } })
      return
    }
    const checked = params.length === 1 ? validate(params[0]) : { ok: false as const, reason: `expected one payload, got ${params.length}` }
    if (!checked.ok) {
      ctx.metrics.errors.inc({ event, code: 'VALIDATION' })
      reply?.({ ok: false, error: { code: 'VALIDATION', message: checked.reason } })
      return
    }
    ctx.sessions.whenReady(socket)
      .then(async (ready) => {
        if (!ready) throw new ClientError('UNAVAILABLE', 'session is not open')
        return await run(checked.value)
      })
      .then((result) => reply?.({ ok: true, ...result }), (err: unknown) => {
        const res = toErrorAck(err)
        if (!(err instanceof ClientError)) ctx.log.error({ err, event }, 'event handler failed')
        ctx.metrics.errors.inc({ event, code: res.error.code })
        reply?.(res)
      })
  })
}
