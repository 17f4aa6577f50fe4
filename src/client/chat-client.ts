/**
 * ChatClient: a connection to any gateway that makes the delivery guarantees real.
 * It reconnects by itself (also after the server ends a socket), fails over between
 * gateways, retries sends until acked, and catches up from history so that
 * `on('message')` sees every message of every channel once, in seq order.
 * @see ../../docs/CLIENT.md
 */
import { io } from 'socket.io-client'
import type { ChannelSummary, CreateResult, HistoryResult, ListResult, Message, SessionReady } from '../contracts/protocol.js'
import type { TrackerStats } from './channel-tracker.js'
import { ChannelSync } from './channel-sync.js'
import { newClientMsgId } from './client-id.js'
import { TypedEmitter } from './emitter.js'
import { ChatError, RETRYABLE_SEND_CODES } from './errors.js'
import { limitConcurrency } from './limiter.js'
import { normalizeOptions, type ChatClientOptions, type NormalizedOptions } from './options.js'
import { request, SessionGate, type ClientSocket } from './session-gate.js'

/** history:fetch pages of a catch-up in flight at once: half the gateway's default cap per user. */
const CATCH_UP_READS = 4

type Timer = ReturnType<typeof setTimeout>

export type ConnectionState = 'idle' | 'connecting' | 'ready' | 'disconnected' | 'closed'
export type SendTarget = { toUserId: string } | { channelId: string }
export type HistoryQuery = ({ channelId: string } | { withUserId: string }) & { afterSeq?: number, beforeSeq?: number, limit?: number }

export interface ChatClientEvents {
  /** Every message of every channel of the user, once, in seq order per channel. */
  message: (message: Message) => void
  /** A session opened (after every connect and reconnect). */
  ready: (session: SessionReady) => void
  /** A channel appeared: joined, created, a first direct message, or joined while away. */
  'channel:joined': (channel: ChannelSummary) => void
  'channel:left': (channelId: string) => void
  typing: (typing: { channelId: string, userId: string }) => void
  /** The worker refused a message after its send was acked (the sender left the channel, say). */
  rejected: (rejection: { clientMsgId: string, error: { code: string, message: string } }) => void
  state: (state: ConnectionState, detail: { url?: string, reason?: string }) => void
  /** Something went wrong that the client works around (or, for a static token, cannot). */
  error: (error: ChatError) => void
}

export class ChatClient extends TypedEmitter<ChatClientEvents> {
  readonly #o: NormalizedOptions
  readonly #sync: ChannelSync
  readonly #gate = new SessionGate()
  readonly #timers = new Set<Timer>()
  /** The socket being connected or connected; its session may not be open yet. */
  #socket: ClientSocket | undefined
  #session: SessionReady | undefined
  /** Events that arrived before the socket's session:ready, replayed after it (they build on its list). */
  #early: Array<() => void> = []
  #endHint: { code: string, message: string, reconnectInMs?: number } | undefined
  /** When the hint came: `reconnectInMs` counts from it (the gateway waits it out before disconnecting). */
  #endHintAt = 0
  #state: ConnectionState = 'idle'
  #url: string | undefined
  #attempt = 0
  #failures = 0
  #reconnectTimer: Timer | undefined
  /** connect() was called and the first attempt is about to start. */
  #starting = false
  /** Catch-up reads in flight; the app's own calls are not counted. */
  readonly #catchUpLimit = limitConcurrency(CATCH_UP_READS)

  constructor (options: ChatClientOptions) {
    super()
    this.#o = normalizeOptions(options)
    this.#sync = new ChannelSync({
      backlog: this.#o.backlog,
      resumeFrom: this.#o.resumeFrom,
      pageSize: this.#o.historyPageSize,
      fetchPage: (target, afterSeq, limit) => this.#catchUpLimit(async () => {
        const socket = this.#gate.current
        if (socket === undefined) throw new ChatError('CLIENT_DISCONNECTED', 'no session')
        return (await this.#request<HistoryResult>(socket, 'history:fetch', { ...target, afterSeq, limit })).messages
      }),
      // A listener may close the client in the middle of a catch-up: nothing after that.
      message: (m) => { if (this.#state !== 'closed') this.emit('message', m) },
      joined: (c) => { if (this.#state !== 'closed') this.emit('channel:joined', c) },
      left: (id) => { if (this.#state !== 'closed') this.emit('channel:left', id) },
      error: (err) => this.emit('error', err),
      retryLater: (attempt, again) => {
        const socket = this.#gate.current
        this.#later(this.#backoff(attempt), () => { if (socket !== undefined && this.#gate.current === socket) again() })
      }
    })
    if (this.#o.autoConnect) this.connect()
  }

  get state (): ConnectionState { return this.#state }
  /** The user, once a session opened. */
  get userId (): string | undefined { return this.#session?.userId }
  /** The gateway serving the current session. */
  get serverId (): string | undefined { return this.#session?.serverId }
  get url (): string | undefined { return this.#url }
  /** The user's channels as far as this client knows; lastSeq is the highest seen. */
  channels (): ChannelSummary[] { return this.#sync.channels() }
  /** Highest seq delivered per channel; pass it back as `resumeFrom`. */
  positions (): Record<string, number> { return this.#sync.positions() }
  stats (): TrackerStats & { sessions: number } { return { ...this.#sync.stats, sessions: this.#sync.sessions } }

  connect (): void {
    if (this.#state === 'closed') throw new ChatError('CLIENT_CLOSED', 'the client is closed')
    if (this.#state !== 'idle' || this.#starting) return
    this.#starting = true
    // After the caller's current code: listeners attached right after the constructor
    // (autoConnect) see the first attempt's state and errors too.
    queueMicrotask(() => {
      this.#starting = false
      if (this.#state === 'idle') void this.#open()
    })
  }

  /** Disconnects for good; pending calls reject with CLIENT_CLOSED. Idempotent. */
  close (): void {
    if (this.#state === 'closed') return
    this.#setState('closed', {})
    clearTimeout(this.#reconnectTimer)
    for (const timer of this.#timers) clearTimeout(timer)
    this.#timers.clear()
    const socket = this.#socket
    this.#socket = undefined
    this.#session = undefined
    socket?.disconnect()
    this.#gate.close()
  }

  /**
   * Sends a message and resolves once a gateway acked it (it is then stored and will
   * arrive through `message`). Retries, across reconnects and gateways, on timeouts,
   * disconnects, UNAVAILABLE and RATE_LIMITED: the same clientMsgId makes that safe.
   * @throws ChatError VALIDATION, FORBIDDEN, … (the server's answer), CLIENT_CLOSED, CLIENT_ABORTED
   */
  async send (target: SendTarget, content: string, options: { clientMsgId?: string, signal?: AbortSignal } = {}): Promise<{ clientMsgId: string }> {
    // In lower case, as the server stores and echoes it: one spelling for the app to match.
    const clientMsgId = (options.clientMsgId ?? newClientMsgId()).toLowerCase()
    // Built field by field: the server refuses unknown fields, and a target may be a richer object.
    const payload = 'channelId' in target
      ? { clientMsgId, content, channelId: target.channelId }
      : { clientMsgId, content, toUserId: target.toUserId }
    await this.#retrying('message:send', payload, options.signal)
    return { clientMsgId }
  }

  /**
   * Creates a group channel; the creator is a member. Retried like `send`: the same
   * requestId (made here unless given) makes the server create it once and answer the
   * same channel to every attempt.
   * @throws ChatError LIMIT_REACHED, VALIDATION, … (the server's answer), CLIENT_CLOSED, CLIENT_ABORTED
   */
  async createChannel (name: string, memberIds: string[], options: { requestId?: string, signal?: AbortSignal } = {}): Promise<string> {
    const requestId = (options.requestId ?? newClientMsgId()).toLowerCase()
    return (await this.#retrying<CreateResult>('channel:create', { name, memberIds, requestId }, options.signal)).channelId
  }

  /** Leaves a group channel. Retried like `send`, with one requestId for every attempt. */
  async leaveChannel (channelId: string, options: { requestId?: string, signal?: AbortSignal } = {}): Promise<void> {
    const requestId = (options.requestId ?? newClientMsgId()).toLowerCase()
    await this.#retrying('channel:leave', { channelId, requestId }, options.signal)
  }

  /** Tells the other members that the user is typing (ephemeral; throttle it). */
  async typing (channelId: string): Promise<void> {
    await this.#call('typing', { channelId })
  }

  /** One page of history, outside the catch-up machinery: for scrolling back. */
  async history (query: HistoryQuery): Promise<Message[]> {
    return (await this.#call<HistoryResult>('history:fetch', query)).messages
  }

  async listChannels (): Promise<ChannelSummary[]> {
    return (await this.#call<ListResult>('channels:list', {})).channels
  }

  // --- connection -------------------------------------------------------------

  async #open (): Promise<void> {
    this.#reconnectTimer = undefined
    if (this.#isClosed()) return
    let url: string
    try {
      url = this.#pickUrl(this.#attempt++)
    } catch (cause) {
      this.emit('error', new ChatError('CLIENT_URL', 'the url function failed', { cause }))
      this.#retryLater(this.#url, 'url function failed')
      return
    }
    this.#url = url
    this.#setState('connecting', { url })
    if (this.#isClosed()) return // a state listener closed the client
    let token: string
    try {
      token = typeof this.#o.token === 'string' ? this.#o.token : await this.#withTimeout(Promise.resolve(this.#o.token()), this.#o.connectTimeoutMs, 'the token function did not settle')
    } catch (cause) {
      if (this.#isClosed()) return
      this.emit('error', new ChatError('CLIENT_TOKEN', 'the token function failed', { cause }))
      this.#retryLater(url, 'token function failed')
      return
    }
    if (this.#isClosed()) return
    // Our own reconnect loop, not socket.io's: socket.io does not reconnect after a
    // server-side disconnect (token expiry, drain), and cannot move to another URL.
    const socket: ClientSocket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true, timeout: this.#o.connectTimeoutMs, auth: { token } })
    this.#socket = socket
    this.#early = []
    this.#endHint = undefined
    // Every handler checks that its socket is still the current one: a late event of
    // a socket we gave up on must not touch the new session.
    const mine = () => this.#socket === socket
    const inSession = (fn: () => void) => {
      if (!mine()) return
      if (this.#session === undefined) this.#early.push(fn)
      else fn()
    }
    socket.on('connect_error', (err) => { if (mine()) this.#lost(socket, err.message) })
    socket.on('disconnect', (reason) => { if (mine()) this.#lost(socket, reason) })
    // Connected is not enough: a gateway cut off from its worker or broker holds the
    // socket without ever opening the session. Give up on it and try the next.
    socket.on('connect', () => {
      this.#later(this.#o.sessionTimeoutMs, () => {
        if (mine() && this.#session === undefined && socket.connected) {
          this.emit('error', new ChatError('CLIENT_TIMEOUT', `no session from ${url} within ${this.#o.sessionTimeoutMs} ms`))
          this.#lost(socket, 'session timeout')
        }
      })
    })
    socket.on('session:end', (end) => {
      if (!mine()) return
      this.#endHint = end
      this.#endHintAt = Date.now()
    })
    socket.on('session:ready', (ready) => { if (mine()) this.#opened(socket, ready) })
    // Early too: the list behind session:ready may predate what the gateway lost.
    socket.on('session:resync', () => inSession(() => this.#resync(socket)))
    socket.on('message:new', (m) => inSession(() => this.#sync.message(m)))
    socket.on('channel:joined', ({ channel }) => inSession(() => this.#sync.learn(channel)))
    socket.on('channel:left', ({ channelId }) => inSession(() => this.#sync.forget(channelId)))
    socket.on('typing', (typing) => { if (mine()) this.emit('typing', typing) })
    socket.on('message:rejected', (r) => { if (mine()) this.emit('rejected', r) })
  }

  #opened (socket: ClientSocket, ready: SessionReady): void {
    this.#failures = 0
    this.#session = ready
    this.#gate.opened(socket)
    this.#sync.opened(ready)
    const early = this.#early
    this.#early = []
    for (const replay of early) replay()
    // A listener (channel:joined, message) may have closed the client meanwhile.
    if (this.#isClosed() || this.#socket !== socket) return
    this.#setState('ready', { url: this.#url ?? '' })
    if (this.#isClosed() || this.#socket !== socket) return
    this.emit('ready', ready)
  }

  #lost (socket: ClientSocket, reason: string): void {
    this.#socket = undefined
    this.#session = undefined
    this.#early = []
    this.#gate.lost()
    socket.disconnect()
    if (this.#state === 'closed') return
    if (reason === 'UNAUTHORIZED') {
      this.emit('error', new ChatError('UNAUTHORIZED', `the gateway refused the token (${this.#url ?? ''})`))
      if (typeof this.#o.token === 'string') return this.close() // the same token cannot do better
    }
    const hint = this.#endHint
    this.#endHint = undefined
    const wait = hint?.reconnectInMs === undefined ? undefined : Math.max(0, this.#endHintAt + hint.reconnectInMs - Date.now())
    this.#retryLater(this.#url, hint !== undefined ? `${hint.code}: ${hint.message}` : reason, wait)
  }

  #retryLater (url: string | undefined, reason: string, delayMs?: number): void {
    if (this.#state === 'closed') return
    this.#failures++
    this.#setState('disconnected', { ...(url !== undefined ? { url } : {}), reason })
    if (this.#isClosed()) return // a state listener closed the client
    this.#reconnectTimer = setTimeout(() => { void this.#open() }, delayMs ?? this.#backoff(this.#failures))
  }

  /** Live delivery may have missed messages (the gateway re-bound after a broker outage, or its full queue dropped deliveries): catch up every channel that moved. */
  #resync (socket: ClientSocket, attempt = 1): void {
    // Jitter first, then backoff: a gateway's sockets ask right when it is busiest, and a
    // failed list must be asked again or a quiet channel would stay behind until the next gap.
    const delay = attempt === 1 ? Math.floor(Math.random() * this.#o.resyncJitterMs) : this.#backoff(attempt - 1)
    this.#later(delay, async () => {
      if (this.#gate.current !== socket) return // a new session catches up anyway
      try {
        const { channels } = await this.#request<ListResult>(socket, 'channels:list', {})
        // Joins and leaves were announced before session:resync; the list (read by the
        // worker, not ordered with those notices) only says how far tracked channels went.
        for (const channel of channels) this.#sync.refresh(channel)
      } catch (err) {
        if (this.#gate.current !== socket || !(err instanceof ChatError)) return
        this.emit('error', err)
        this.#resync(socket, attempt + 1)
      }
    })
  }

  // --- helpers ----------------------------------------------------------------

  /**
   * Sends an idempotent request until it is answered: across reconnects and gateways, on
   * timeouts, disconnects, UNAVAILABLE and RATE_LIMITED. Only for payloads with their
   * own idempotency key (clientMsgId, requestId).
   */
  async #retrying<R extends object = Record<never, never>> (event: Parameters<typeof request>[1], payload: object, signal: AbortSignal | undefined): Promise<R> {
    for (let attempt = 1; ; attempt++) {
      const socket = await this.#gate.wait(undefined, signal)
      try {
        return await this.#request<R>(socket, event, payload)
      } catch (err) {
        if (!(err instanceof ChatError)) throw err
        const transient = err.code === 'CLIENT_TIMEOUT' || err.code === 'CLIENT_DISCONNECTED' || RETRYABLE_SEND_CODES.has(err.code)
        if (!transient) throw err
        // A disconnect waits for the next session anyway (unless the gate has not heard of
        // it yet: then a pause keeps this from spinning); the others back off.
        if (err.code !== 'CLIENT_DISCONNECTED' || this.#gate.current === socket) await this.#gate.sleep(this.#backoff(attempt), signal)
      }
    }
  }

  /** A request that waits (up to ackTimeoutMs) for a session, tried once. */
  async #call<R extends object = Record<never, never>> (event: Parameters<typeof request>[1], payload: object): Promise<R> {
    return await this.#request<R>(await this.#gate.wait(this.#o.ackTimeoutMs), event, payload)
  }

  async #request<R extends object = Record<never, never>> (socket: ClientSocket, event: Parameters<typeof request>[1], payload: object): Promise<R> {
    // socket.io-client buffers an emit on a disconnected socket until the ack times out.
    if (this.#isClosed()) throw new ChatError('CLIENT_CLOSED', 'the client was closed')
    if (!socket.connected) throw new ChatError('CLIENT_DISCONNECTED', `disconnected before ${event} was sent`)
    try {
      return await request<R>(socket, event, payload, this.#o.ackTimeoutMs)
    } catch (err) {
      if (this.#isClosed()) throw new ChatError('CLIENT_CLOSED', 'the client was closed', { cause: err })
      throw err
    }
  }

  #pickUrl (attempt: number): string {
    const u = this.#o.url
    if (typeof u === 'string') return u
    if (typeof u === 'function') return u(attempt)
    return u[attempt % u.length]!
  }

  /** Exponential with jitter, so that a gateway's clients do not all come back at once. */
  #backoff (failures: number): number {
    const ceiling = Math.min(this.#o.reconnectMaxMs, this.#o.reconnectMinMs * 2 ** Math.min(20, Math.max(0, failures - 1)))
    return Math.round(ceiling * (0.5 + Math.random() / 2))
  }

  #setState (state: ConnectionState, detail: { url?: string, reason?: string }): void {
    this.#state = state
    this.emit('state', state, detail)
  }

  #isClosed (): boolean { return this.#state === 'closed' }

  /** Rejects with CLIENT_TIMEOUT when `work` has not settled within `ms`. */
  async #withTimeout<T> (work: Promise<T>, ms: number, what: string): Promise<T> {
    let timer: Timer | undefined
    try {
      return await Promise.race([work, new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          this.#timers.delete(timer!)
          reject(new ChatError('CLIENT_TIMEOUT', `${what} within ${ms} ms`))
        }, ms)
        // close() clears it with the others: a closed client keeps no process alive.
        this.#timers.add(timer)
      })])
    } finally {
      if (timer !== undefined) this.#timers.delete(timer)
      clearTimeout(timer)
    }
  }

  #later (ms: number, fn: () => void | Promise<void>): void {
    if (this.#isClosed()) return // close() has cleared the others
    const timer = setTimeout(() => {
      this.#timers.delete(timer)
      void fn()
    }, ms)
    this.#timers.add(timer)
  }
}

/** Same as `new ChatClient(options)`. */
export function createChatClient (options: ChatClientOptions): ChatClient {
  return new ChatClient(options)
}
