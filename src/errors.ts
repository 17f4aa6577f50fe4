/**
 * Error catalogue. Client-facing codes travel in acks as
 * `{ ok: false, error: { code, message } }`; internal failures use APP_* codes
 * and keep their cause.
 */

/** Codes a client may see in an ack, a connect_error or a `message:rejected`. */
export const CLIENT_ERROR_CODES = [
  'VALIDATION', // the payload is malformed; nothing was stored
  'FORBIDDEN', // not a member of the channel
  'NOT_FOUND', // no such channel
  'RATE_LIMITED', // too many events; retry later
  'LIMIT_REACHED', // a per-user limit (group channels) would be passed; nothing changed
  'UNAVAILABLE', // broker or worker unreachable; safe to retry with the same clientMsgId
  'INTERNAL', // a bug; logged on the server
  'UNAUTHORIZED', // bad, missing or expired token (connect_error message)
  'TOKEN_EXPIRED' // the token expired while connected
] as const
export type ClientErrorCode = typeof CLIENT_ERROR_CODES[number]

export interface ErrorBody { code: ClientErrorCode, message: string }
export interface ErrorAck { ok: false, error: ErrorBody }

/** An error whose code and message are safe to show to the client. */
export class ClientError extends Error {
  readonly code: ClientErrorCode
  constructor (code: ClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'ClientError'
    this.code = code
  }

  toJSON (): ErrorBody { return { code: this.code, message: this.message } }
}

export const errorAck = (code: ClientErrorCode, message: string): ErrorAck => ({ ok: false, error: { code, message } })

/** Turns anything thrown into an ack; only ClientErrors keep their message. */
export function toErrorAck (err: unknown): ErrorAck {
  if (err instanceof ClientError) return { ok: false, error: err.toJSON() }
  return errorAck('INTERNAL', 'internal error')
}

/** An internal failure with an APP_* code and its cause. */
export class AppError extends Error {
  readonly code: string
  constructor (code: `APP_${string}`, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'AppError'
    this.code = code
  }
}
