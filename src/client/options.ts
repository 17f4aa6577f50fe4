/** The client's options, documented where declared, normalised once. */

export interface ChatClientOptions {
  /**
   * Gateway URL; or several, to fail over between (each connection attempt takes the
   * next one); or a function that picks one per attempt (0, 1, 2…).
   */
  url: string | readonly string[] | ((attempt: number) => string)
  /**
   * The JWT; or a function returning one (or a Promise of one), called before every
   * connection attempt, so an expired token is replaced on reconnect. With a plain
   * string, an UNAUTHORIZED answer closes the client: retrying cannot help.
   */
  token: string | (() => string | Promise<string>)
  /** Where to resume per channel (from `positions()`, say restored from storage). */
  resumeFrom?: Record<string, number>
  /**
   * On a first start (empty `resumeFrom`), for each channel of the first session: how
   * many of its latest messages to deliver. Every other channel (joined while connected
   * or away, or, when `resumeFrom` names any channel, one it does not name) is delivered
   * from its first message.
   * @default 0
   */
  backlog?: number
  /** Messages per history:fetch page while catching up (1–500). @default 100 */
  historyPageSize?: number
  /** How long to wait for an ack; a send is then retried, other requests fail. @default 10000 */
  ackTimeoutMs?: number
  /** First reconnect delay; doubles per failed attempt (with jitter). @default 250 */
  reconnectMinMs?: number
  /** Longest reconnect delay. @default 5000 */
  reconnectMaxMs?: number
  /** Socket.IO connect timeout per attempt. @default 10000 */
  connectTimeoutMs?: number
  /**
   * How long a connected socket may wait for its session (`session:ready`) before the
   * client gives up on that gateway and tries the next: one that cannot reach its worker
   * or broker keeps the socket open but never opens the session. @default 30000
   */
  sessionTimeoutMs?: number
  /** Spread catch-ups after `session:resync` over this many ms, so a gateway's sockets do not ask at once. @default 1000 */
  resyncJitterMs?: number
  /** Connect in the constructor; otherwise call connect(). @default true */
  autoConnect?: boolean
}

export type NormalizedOptions = Required<Omit<ChatClientOptions, 'resumeFrom'>> & { resumeFrom: Record<string, number> }

function int (name: string, value: number | undefined, def: number, min: number, max: number): number {
  const v = value ?? def
  if (!Number.isInteger(v) || v < min || v > max) throw new TypeError(`ChatClient: ${name} must be an integer from ${min} to ${max}`)
  return v
}

/** @throws TypeError naming the bad option. */
export function normalizeOptions (o: ChatClientOptions): NormalizedOptions {
  const urlOk = typeof o.url === 'string' ? o.url !== '' : typeof o.url === 'function' || (Array.isArray(o.url) && o.url.length > 0 && o.url.every((u) => typeof u === 'string' && u !== ''))
  if (!urlOk) throw new TypeError('ChatClient: url must be a URL, a non-empty list of URLs or a function')
  if (typeof o.token !== 'function' && (typeof o.token !== 'string' || o.token === '')) throw new TypeError('ChatClient: token must be a string or a function')
  const reconnectMinMs = int('reconnectMinMs', o.reconnectMinMs, 250, 0, 600_000)
  for (const [channelId, seq] of Object.entries(o.resumeFrom ?? {})) {
    // A position that is not a seq would hold the channel back for good, or replay it all.
    if (!Number.isSafeInteger(seq) || seq < 0) throw new TypeError(`ChatClient: resumeFrom[${JSON.stringify(channelId)}] must be a seq (an integer ≥ 0)`)
  }
  return {
    url: o.url,
    token: o.token,
    resumeFrom: { ...o.resumeFrom },
    backlog: int('backlog', o.backlog, 0, 0, Number.MAX_SAFE_INTEGER),
    historyPageSize: int('historyPageSize', o.historyPageSize, 100, 1, 500),
    ackTimeoutMs: int('ackTimeoutMs', o.ackTimeoutMs, 10_000, 1, 600_000),
    reconnectMinMs,
    // The default maximum follows a larger minimum rather than refusing it.
    reconnectMaxMs: int('reconnectMaxMs', o.reconnectMaxMs, Math.max(5000, reconnectMinMs), reconnectMinMs, 600_000),
    connectTimeoutMs: int('connectTimeoutMs', o.connectTimeoutMs, 10_000, 1, 600_000),
    sessionTimeoutMs: int('sessionTimeoutMs', o.sessionTimeoutMs, 30_000, 1, 600_000),
    resyncJitterMs: int('resyncJitterMs', o.resyncJitterMs, 1000, 0, 600_000),
    autoConnect: o.autoConnect ?? true
  }
}
