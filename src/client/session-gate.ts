/**
 * The socket whose session is open, and the calls that wait for one: a send made
 * while disconnected waits here across reconnects instead of failing.
 */
import type { Socket } from 'socket.io-client'
import type { Ack, ClientToServerEvents, ServerToClientEvents } from '../contracts/protocol.js'
import { ChatError } from './errors.js'

export type ClientSocket = Socket<ServerToClientEvents, ClientToServerEvents>

interface Waiter { resolve: (socket: ClientSocket) => void, reject: (err: ChatError) => void }

const closedError = () => new ChatError('CLIENT_CLOSED', 'the client is closed')
const abortedError = (signal?: AbortSignal) => new ChatError('CLIENT_ABORTED', 'aborted', { cause: signal?.reason })

export class SessionGate {
  #socket: ClientSocket | undefined
  #closed = false
  readonly #waiters = new Set<Waiter>()
  /** Cancels pending sleeps (send retries' backoff) at close. */
  readonly #sleepers = new Set<() => void>()

  /** The socket whose session is open, if any. */
  get current (): ClientSocket | undefined { return this.#socket }
  get closed (): boolean { return this.#closed }

  opened (socket: ClientSocket): void {
    this.#socket = socket
    for (const w of [...this.#waiters]) w.resolve(socket)
  }

  lost (): void { this.#socket = undefined }

  /** Rejects every waiting call with CLIENT_CLOSED. Idempotent. */
  close (): void {
    this.#closed = true
    this.#socket = undefined
    for (const w of [...this.#waiters]) w.reject(closedError())
    for (const cancel of [...this.#sleepers]) cancel()
  }

  /** The open session's socket; waits for one (at most `timeoutMs`, if given). */
  wait (timeoutMs?: number, signal?: AbortSignal): Promise<ClientSocket> {
    if (this.#closed) return Promise.reject(closedError())
    if (signal?.aborted === true) return Promise.reject(abortedError(signal))
    if (this.#socket !== undefined) return Promise.resolve(this.#socket)
    return new Promise<ClientSocket>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined
      const onAbort = () => done(abortedError(signal))
      const done = (err?: ChatError, socket?: ClientSocket) => {
        this.#waiters.delete(waiter)
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (socket !== undefined) resolve(socket)
        else reject(err)
      }
      const waiter: Waiter = { resolve: (socket) => done(undefined, socket), reject: (err) => done(err) }
      this.#waiters.add(waiter)
      signal?.addEventListener('abort', onAbort)
      if (timeoutMs !== undefined) timer = setTimeout(() => done(new ChatError('CLIENT_DISCONNECTED', `no session within ${timeoutMs} ms`)), timeoutMs)
    })
  }

  /** A delay that close() and the signal cut short (with CLIENT_CLOSED / CLIENT_ABORTED). */
  sleep (ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (err?: ChatError) => {
        clearTimeout(timer)
        this.#sleepers.delete(cancel)
        signal?.removeEventListener('abort', onAbort)
        if (err === undefined) resolve()
        else reject(err)
      }
      const cancel = () => finish(closedError())
      const onAbort = () => finish(abortedError(signal))
      const timer = setTimeout(() => finish(), ms)
      if (this.#closed) return cancel()
      if (signal?.aborted === true) return onAbort()
      this.#sleepers.add(cancel)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }
}

/**
 * One client event and its ack. A refusal becomes a ChatError with the server's code;
 * no ack in time is CLIENT_TIMEOUT, or CLIENT_DISCONNECTED if the socket went away.
 */
export async function request<R extends object = Record<never, never>> (
  socket: ClientSocket, event: keyof ClientToServerEvents, payload: object, timeoutMs: number
): Promise<R> {
  let res: Ack<R>
  try {
    // The event map types acks loosely (payloads are validated server-side); this is the one cast.
    res = await (socket.timeout(timeoutMs).emitWithAck as (ev: string, p: object) => Promise<Ack<R>>)(event, payload)
  } catch (cause) {
    throw socket.connected
      ? new ChatError('CLIENT_TIMEOUT', `no answer to ${event} within ${timeoutMs} ms`, { cause })
      : new ChatError('CLIENT_DISCONNECTED', `disconnected before ${event} was answered`, { cause })
  }
  if (!res.ok) throw new ChatError(res.error.code, res.error.message)
  return res
}
