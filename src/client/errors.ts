/**
 * The one error type the SDK throws and emits. Codes are the protocol's own
 * (docs/PROTOCOL.md, "Acks") plus a few that only a client can see.
 */
import type { ClientErrorCode } from '../errors.js'

export type ChatErrorCode =
  | ClientErrorCode
  /** close() was called; pending calls are rejected with this. */
  | 'CLIENT_CLOSED'
  /** A request got no answer in time (a send is retried instead). */
  | 'CLIENT_TIMEOUT'
  /** The call needs a session and there is none right now (it will come back by itself). */
  | 'CLIENT_DISCONNECTED'
  /** The `token` option threw or rejected. */
  | 'CLIENT_TOKEN'
  /** The `url` option (a function) threw. */
  | 'CLIENT_URL'
  /** The caller's AbortSignal fired. */
  | 'CLIENT_ABORTED'

export class ChatError extends Error {
  readonly code: ChatErrorCode
  constructor (code: ChatErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'ChatError'
    this.code = code
  }
}

/** Ack errors worth retrying a send for: the message was not taken, and a retry is idempotent. */
export const RETRYABLE_SEND_CODES: ReadonlySet<string> = new Set(['UNAVAILABLE', 'RATE_LIMITED'])
