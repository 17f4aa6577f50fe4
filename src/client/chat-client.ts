/**
 * ChatClient: a connection to any gateway that makes the delivery guarantees real.
 * It reconnects by itself (also after the server ends a socket), fails over between
 * gateways, retries sends until acked, and catches up from history so that
 * `on('message')` sees every message of every channel once, in seq order.
 * @see ../../docs/CLIENT.md
 */
import { io, type Socket } from 'socket.io-client'
import type {
  Ack, ChannelSummary, ClientToServerEvents, CreateResult, HistoryResult, ListResult, Message, ServerToClientEvents, SessionReady
} from '../contracts/protocol.js'
import { ChannelTracker, type TrackerStats } from './channel-tracker.js'
import { newClientMsgId } from './client-id.js'
import { TypedEmitter } from './emitter.js'
import { ChatError, RETRYABLE_SEND_CODES } from './errors.js'
import { normalizeOptions, type ChatClientOptions, type NormalizedOptions } from './options.js'

type ClientSocket = Socket<ServerToClientEvents, ClientToServerEvents>
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

interface Waiter { resolve: (socket: ClientSocket) => void, reject: (err: ChatError) => void }

export class ChatClient extends TypedEmitter<ChatClientEvents> {
  readonly #o: NormalizedOptions
  readonly #tracker: ChannelTracker
  /** Start positions of channels we do not track now (given, or kept after leaving). */
  readonly #resume: Map<string, number>
  readonly #waiters = new Set<Waiter>()
  readonly #timers = new Set<Timer>()
  /** Rejects the pending sleeps of send() retries; close() calls them. */
  readonly #sleepers = new Set<() => void>()
  #socket: ClientSocket | undefined
  /** The current socket's session, once it is ready. */
  #session: SessionReady | undefined
  /** Events that arrived before the socket's session:ready, replayed after it (they build on its list). */
  #early: Array<() => void> = []
  #endHint: { code: string, message: string, reconnectInMs?: number } | undefined
  #state: ConnectionState = 'idle'
  #url: string | undefined
  #attempt = 0
  #failures = 0
  #sessions = 0
  #reconnectTimer: Timer | undefined

  constructor (options: ChatClientOptions) {
    super()
    this.#o = normalizeOptions(options)
    this.#resume = new Map(Object.entries(this.#o.resumeFrom))
    this.#tracker = new ChannelTracker({
      pageSize: this.#o.historyPageSize,
      fetchPage: (channel, afterSeq, limit) => this.#fetchPage(channel, afterSeq, limit),
      deliver: (m) => this.emit('message', m),
      onFetchError: (err, channel) => this.#onFetchError(err, channel)
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
  channels (): ChannelSummary[] { return this.#tracker.channels() }
  /** Highest seq delivered per channel; pass it back as `resumeFrom`. */
  positions (): Record<string, number> { return { ...Object.fromEntries(this.#resume), ...this.#tracker.positions() } }
  stats (): TrackerStats & { sessions: number } { return { ...this.#tracker.stats, sessions: this.#sessions } }

  connect (): void {
    if (this.#state === 'closed') throw new ChatError('CLIENT_CLOSED', 'the client is closed')
    if (this.#socket !== undefined || this.#reconnectTimer !== undefined || this.#state === 'connecting') return
    void this.#open()
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
    for (const w of this.#waiters) w.reject(new ChatError('CLIENT_CLOSED', 'the client was closed'))
    this.#waiters.clear()
    for (const cancel of this.#sleepers) cancel()
  }

  /**
   * Sends a message and resolves once a gateway acked it (it is then stored and will
   * arrive through `message`). Retries, across reconnects and gateways, on timeouts,
   * disconnects, UNAVAILABLE and RATE_LIMITED: the same clientMsgId makes that safe.
   * @throws ChatError VALIDATION, FORBIDDEN, … (the server's answer), CLIENT_CLOSED, CLIENT_ABORTED
   */
  async send (target: SendTarget, content: string, options: { clientMsgId?: string, signal?: AbortSignal } = {}): Promise<{ clientMsgId: string }> {
    const clientMsgId = options.clientMsgId ?? newClientMsgId()
    // Built field by field: the server refuses unknown fields, and a target may be a richer object.
    const payload = 'channelId' in target
      ? { clientMsgId, content, channelId: target.channelId }
      : { clientMsgId, content, toUserId: target.toUserId }
    for (let attempt = 1; ; attempt++) {
      const socket = await this.#whenReady(undefined, options.signal)
      try {
        await this.#request(socket, 'message:send', payload)
        return { clientMsgId }
      } catch (err) {
        if (!(err instanceof ChatError)) throw err
        const transient = err.code === 'CLIENT_TIMEOUT' || err.code === 'CLIENT_DISCONNECTED' || RETRYABLE_SEND_CODES.has(err.code)
        if (!transient) throw err
        // A disconnect waits for the next session anyway; the others back off.
        if (err.code !== 'CLIENT_DISCONNECTED') await this.#sleep(this.#backoff(attempt), options.signal)
      }
    }
  }

  /** Creates a group channel; the creator is a member. Not retried (not idempotent). */
  async createChannel (name: string, memberIds: string[]): Promise<string> {
    const res = await this.#call<CreateResult>('channel:create', { name, memberIds })
    return res.channelId
  }

  async leaveChannel (channelId: string): Promise<void> {
    await this.#call('channel:leave', { channelId })
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
    const url = this.#pickUrl(this.#attempt++)
    this.#url = url
    this.#setState('connecting', { url })
    let token: string
    try {
      token = typeof this.#o.token === 'string' ? this.#o.token : await this.#o.token()
    } catch (cause) {
      this.emit('error', new ChatError('CLIENT_TOKEN', 'the token function failed', { cause }))
      this.#retryLater(url, 'token function failed')
      return
    }
    if (this.#state === 'closed') return
    // Our own reconnect loop, not socket.io's: socket.io does not reconnect after a
    // server-side disconnect (token expiry, drain), and cannot move to another URL.
    const socket: ClientSocket = io(url, {
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      timeout: this.#o.connectTimeoutMs,
      auth: { token }
    })
    this.#socket = socket
    this.#session = undefined
    this.#early = []
    this.#endHint = undefined
    // Every handler checks that its socket is still the current one: a late event of
    // a socket we gave up on must not touch the new session.
    socket.on('connect_error', (err) => { if (this.#socket === socket) this.#lost(socket, err.message) })
    socket.on('disconnect', (reason) => { if (this.#socket === socket) this.#lost(socket, reason) })
    socket.on('session:end', (end) => { if (this.#socket === socket) this.#endHint = end })
    socket.on('session:ready', (ready) => { if (this.#socket === socket) this.#onReady(socket, ready) })
    socket.on('session:resync', () => { if (this.#socket === socket) this.#onResync(socket) })
    const inSession = (fn: () => void) => {
      if (this.#socket !== socket) return
      if (this.#session === undefined) this.#early.push(fn)
      else fn()
    }
    socket.on('message:new', (m) => inSession(() => this.#onMessage(m)))
    socket.on('channel:joined', ({ channel }) => inSession(() => this.#learn(channel, false)))
    socket.on('channel:left', ({ channelId }) => inSession(() => this.#forget(channelId)))
    socket.on('typing', (typing) => { if (this.#socket === socket) this.emit('typing', typing) })
    socket.on('message:rejected', (r) => { if (this.#socket === socket) this.emit('rejected', r) })
  }

  #lost (socket: ClientSocket, reason: string): void {
    this.#socket = undefined
    this.#session = undefined
    this.#early = []
    socket.disconnect()
    if (this.#state === 'closed') return
    const url = this.#url
    if (reason === 'UNAUTHORIZED') {
      const err = new ChatError('UNAUTHORIZED', `the gateway refused the token (${url ?? ''})`)
      this.emit('error', err)
      if (typeof this.#o.token === 'string') {
        this.close()
        return
      }
    }
    const hint = this.#endHint
    this.#endHint = undefined
    this.#retryLater(url, hint !== undefined ? `${hint.code}: ${hint.message}` : reason, hint?.reconnectInMs)
  }

  #retryLater (url: string | undefined, reason: string, delayMs?: number): void {
    if (this.#state === 'closed') return
    this.#failures++
    this.#setState('disconnected', { ...(url !== undefined ? { url } : {}), reason })
    this.#reconnectTimer = setTimeout(() => { void this.#open() }, delayMs ?? this.#backoff(this.#failures))
  }

  #onReady (socket: ClientSocket, ready: SessionReady): void {
    const first = this.#sessions === 0
    this.#sessions++
    this.#failures = 0
    this.#session = ready
    const before = new Set(this.#tracker.channels().map((c) => c.id))
    const listed = new Set<string>()
    for (const channel of ready.channels) {
      listed.add(channel.id)
      this.#learn(channel, first)
    }
    // Left while we were away (another device, say).
    for (const id of before) if (!listed.has(id)) this.#forget(id)
    const early = this.#early
    this.#early = []
    for (const replay of early) replay()
    this.#setState('ready', { url: this.#url ?? '' })
    this.emit('ready', ready)
    for (const w of this.#waiters) w.resolve(socket)
    this.#waiters.clear()
  }

  #onResync (socket: ClientSocket): void {
    const jitter = Math.floor(Math.random() * this.#o.resyncJitterMs)
    this.#later(jitter, async () => {
      if (this.#socket !== socket || this.#session === undefined) return // a new session catches up anyway
      try {
        const { channels } = await this.#request<ListResult>(socket, 'channels:list', {})
        for (const channel of channels) this.#learn(channel, false)
      } catch (err) {
        if (this.#socket === socket) this.emit('error', asChatError(err))
      }
    })
  }

  /** A channel from the server: track it (and announce it if new); catch up if behind. */
  #learn (channel: ChannelSummary, firstSession: boolean): void {
    const start = this.#resume.get(channel.id) ?? (firstSession ? Math.max(0, channel.lastSeq - this.#o.backlog) : 0)
    if (this.#tracker.upsert(channel, start)) {
      this.#resume.delete(channel.id)
      if (!firstSession) this.emit('channel:joined', { ...channel })
    }
  }

  #forget (channelId: string): void {
    const tracked = this.#tracker.get(channelId)
    if (tracked === undefined) return
    // Keep the position: should the channel come back, nothing is delivered twice.
    this.#resume.set(channelId, tracked.delivered)
    this.#tracker.remove(channelId)
    this.emit('channel:left', channelId)
  }

  #onMessage (m: Message): void {
    if (this.#tracker.get(m.channelId) === undefined) {
      // A direct channel is created by its first message and announced by nothing else.
      const me = this.#session?.userId
      const peerId = m.kind === 'direct' ? (m.senderId === me ? m.toUserId ?? m.senderId : m.senderId) : undefined
      const summary: ChannelSummary = { id: m.channelId, kind: m.kind, name: peerId ?? '', lastSeq: m.seq - 1, ...(peerId !== undefined ? { peerId } : {}) }
      this.#learn(summary, false)
    }
    this.#tracker.accept(m)
  }

  #fetchPage (channel: ChannelSummary, afterSeq: number, limit: number): Promise<Message[]> {
    // Direct channels by peer: a gateway learns of a direct channel created after the
    // session opened only at the next session, and would refuse it by id until then.
    const target = channel.kind === 'direct' && channel.peerId !== undefined ? { withUserId: channel.peerId } : { channelId: channel.id }
    const socket = this.#socket
    if (socket === undefined || this.#session === undefined) return Promise.reject(new ChatError('CLIENT_DISCONNECTED', 'no session'))
    return this.#request<HistoryResult>(socket, 'history:fetch', { ...target, afterSeq, limit }).then((r) => r.messages)
  }

  #onFetchError (err: unknown, channel: ChannelSummary): void {
    const e = asChatError(err)
    if (e.code === 'FORBIDDEN') {
      this.#forget(channel.id)
      return
    }
    if (e.code === 'CLIENT_DISCONNECTED' || e.code === 'CLIENT_CLOSED') return // the next session:ready fetches again
    this.emit('error', e)
    const socket = this.#socket
    this.#later(this.#backoff(1), () => { if (this.#socket === socket && this.#session !== undefined) void this.#tracker.fill(channel.id) })
  }

  // --- requests ---------------------------------------------------------------

  /** A request that waits (up to ackTimeoutMs) for a session, tried once. */
  async #call<R extends object = Record<never, never>> (event: keyof ClientToServerEvents, payload: object): Promise<R> {
    const socket = await this.#whenReady(this.#o.ackTimeoutMs)
    return await this.#request<R>(socket, event, payload)
  }

  async #request<R extends object = Record<never, never>> (socket: ClientSocket, event: keyof ClientToServerEvents, payload: object): Promise<R> {
    let res: Ack<R>
    try {
      // The event map types acks loosely (payloads are validated server-side); this is the one cast.
      res = await (socket.timeout(this.#o.ackTimeoutMs).emitWithAck as (ev: string, p: object) => Promise<Ack<R>>)(event, payload)
    } catch (cause) {
      if (this.#state === 'closed') throw new ChatError('CLIENT_CLOSED', 'the client was closed', { cause })
      throw socket.connected
        ? new ChatError('CLIENT_TIMEOUT', `no answer to ${event} within ${this.#o.ackTimeoutMs} ms`, { cause })
        : new ChatError('CLIENT_DISCONNECTED', `disconnected before ${event} was answered`, { cause })
    }
    if (!res.ok) throw new ChatError(res.error.code, res.error.message)
    return res
  }

  /** The current socket once its session is ready; waits across reconnects. */
  #whenReady (timeoutMs?: number, signal?: AbortSignal): Promise<ClientSocket> {
    if (this.#state === 'closed') return Promise.reject(new ChatError('CLIENT_CLOSED', 'the client is closed'))
    if (signal?.aborted === true) return Promise.reject(new ChatError('CLIENT_ABORTED', 'aborted', { cause: signal.reason }))
    if (this.#socket !== undefined && this.#session !== undefined) return Promise.resolve(this.#socket)
    return new Promise<ClientSocket>((resolve, reject) => {
      let timer: Timer | undefined
      const onAbort = () => done(new ChatError('CLIENT_ABORTED', 'aborted', { cause: signal?.reason }))
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

  // --- small helpers ----------------------------------------------------------

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

  #later (ms: number, fn: () => void | Promise<void>): void {
    const timer = setTimeout(() => {
      this.#timers.delete(timer)
      void fn()
    }, ms)
    this.#timers.add(timer)
  }

  #sleep (ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (err?: ChatError) => {
        clearTimeout(timer)
        this.#sleepers.delete(cancel)
        signal?.removeEventListener('abort', onAbort)
        if (err === undefined) resolve()
        else reject(err)
      }
      const cancel = () => finish(new ChatError('CLIENT_CLOSED', 'the client was closed'))
      const onAbort = () => finish(new ChatError('CLIENT_ABORTED', 'aborted', { cause: signal?.reason }))
      const timer = setTimeout(() => finish(), ms)
      if (this.#state === 'closed') {
        cancel()
        return
      }
      this.#sleepers.add(cancel)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }
}

function asChatError (err: unknown): ChatError {
  return err instanceof ChatError ? err : new ChatError('INTERNAL', err instanceof Error ? err.message : String(err), { cause: err })
}

/** Same as `new ChatClient(options)`. */
export function createChatClient (options: ChatClientOptions): ChatClient {
  return new ChatClient(options)
}
