/**
 * Local users of this gateway and the channels they belong to. One reference on
 * `user:{id}` per local user (not per socket) and one on `channel:{id}` per local
 * member, so many sockets or many members cost one binding.
 *
 * Changes to a user's channels (session open, joined, left, resync) run one at a time
 * per user, so a `left` can never overtake the `joined` before it. A channel list read
 * from the worker may be older than a joined/left applied while it was in flight, or
 * than another list: each user's `clock` orders notices and list requests, so a list
 * fills in what was missed without undoing anything newer.
 */
import type { BindingManager } from '../broker/binding-manager.js'
import { channelKey, userKey } from '../broker/topology.js'
import type { WorkerRpc } from '../broker/rpc.js'
import { CHANNELS_SEQ_MAX_IDS } from '../contracts/envelopes.js'
import type { ChannelSummary, SessionReady } from '../contracts/protocol.js'
import { ClientError } from '../errors.js'
import type { Logger } from '../log.js'
import { readBisecting } from './bisect.js'
import { reading, settled, touch, type ListClock } from './list-clock.js'
import { channelRoom, userRoom, type AppIo, type AppSocket } from './types.js'

interface LocalUser extends ListClock {
  id: string
  sockets: Set<AppSocket>
  channels: Map<string, ChannelSummary>
  /** Tail of this user's serialized channel changes. */
  tail: Promise<void>
  /** Set once the first session.open answered. */
  loaded: boolean
  /** Direct channels learned from live messages (not from a list), oldest first; at most MAX_LIVE_DIRECT (created on first use). */
  liveDirect?: Set<string>
  /**
   * Groups this user left while here. A group once left is never joined again (there is
   * no invite; a create makes a new channel), so a joined notice for one was queued
   * before the leave and is stale: applied, it brought the channel back (created on first use).
   */
  left?: Set<string>
}

/** Most left groups remembered per user; a user who leaves more is rate limited long before. */
const MAX_LEFT = 1000

const CHANNEL_PREFIX = channelKey('')

/** Users per memberships.list request when re-reading after lost deliveries (a broker outage, a full queue). */
const RESYNC_CHUNK = 500

/**
 * Requests at most per chunk when its read fails and is split: enough to single out
 * three or four users of 500 (about 2 × log2(500) requests each); past it, every user of a
 * part still failing is ended and reconnects. Without it a chunk could cost 999.
 */
const RESYNC_MAX_REQUESTS = 64

export interface SessionsOptions {
  io: AppIo
  bindings: BindingManager
  rpc: WorkerRpc
  serverId: string
  log: Logger
}

/**
 * Direct channels a user may learn from live messages per session before the oldest so
 * learned is forgotten here. A direct channel is created by messaging a fresh id, without
 * bound; forgotten, it is learned again by its next message (or the next session), and
 * until then only sends and history by `toUserId`/`withUserId` reach it: by channel id
 * they are refused (FORBIDDEN).
 */
export const MAX_LIVE_DIRECT = 10_000

export class Sessions {
  readonly #users = new Map<string, LocalUser>()
  readonly #ready = new WeakMap<AppSocket, Promise<boolean>>()
  /** Sockets whose session:ready went out. */
  readonly #opened = new WeakSet<AppSocket>()
  readonly #o: SessionsOptions
  #sockets = 0
  /**
   * The highest seq emitted to each bound channel's room. A socket that joins a room
   * missed what was emitted to it before, and its session:ready's lastSeq, read by the
   * worker earlier, may not count it: the ready takes the larger of the two, so the
   * client sees the gap and fetches it. Dropped when the channel's key is unbound.
   */
  readonly #emitted = new Map<string, number>()

  constructor (options: SessionsOptions) {
    this.#o = options
    options.bindings.on('operation', ({ op, key }: { op: 'bind' | 'unbind', key: string }) => {
      if (op === 'unbind' && key.startsWith(CHANNEL_PREFIX)) this.#emitted.delete(key.slice(CHANNEL_PREFIX.length))
    })
  }

  /** A group message went to its channel's room (see #emitted). */
  emitted (channelId: string, seq: number): void {
    // A message still queued when its channel's key was unbound would bring the entry
    // back after the unbind dropped it, and nothing would drop it again.
    if (this.#o.bindings.boundSince(channelKey(channelId)) === undefined) return
    if (seq > (this.#emitted.get(channelId) ?? 0)) this.#emitted.set(channelId, seq)
  }

  /** Channels whose highest emitted seq is kept (bounded by the channel keys bound here). */
  get emittedChannels (): number { return this.#emitted.size }

  get socketCount (): number { return this.#sockets }
  get userCount (): number { return this.#users.size }

  /**
   * Registers a socket and starts its session; `session:ready` is emitted once its
   * user key and every channel key are bound.
   */
  attach (socket: AppSocket): void {
    const userId = socket.data.userId
    let user = this.#users.get(userId)
    if (user === undefined) {
      user = { id: userId, sockets: new Set(), channels: new Map(), tail: Promise.resolve(), loaded: false, clock: 0, listedAt: 0 }
      this.#users.set(userId, user)
      void this.#o.bindings.acquire(userKey(userId))
    }
    user.sockets.add(socket)
    this.#sockets++
    void socket.join(userRoom(userId))
    this.#ready.set(socket, this.#open(user, socket).catch((err: unknown) => {
      this.#o.log.error({ err, userId }, 'could not open a session')
      // The client sent nothing to validate here: a VALIDATION is about the gateway's own
      // request to the worker, and telling the client to fix its payload would mislead.
      const error = err instanceof ClientError && err.code !== 'VALIDATION' ? err.toJSON() : { code: 'INTERNAL' as const, message: 'could not open the session' }
      socket.emit('session:end', error)
      socket.disconnect(true)
      return false
    }))
  }

  /** True once the socket's session:ready went out. */
  isOpen (socket: AppSocket): boolean {
    return this.#opened.has(socket)
  }

  /** Resolves true once the socket's session is ready, false if it ended first. */
  whenReady (socket: AppSocket): Promise<boolean> {
    return this.#ready.get(socket) ?? Promise.resolve(false)
  }

  /** Forgets a socket; the last socket of a user releases the user's keys. */
  detach (socket: AppSocket): void {
    const user = this.#users.get(socket.data.userId)
    if (user === undefined || !user.sockets.delete(socket)) return
    this.#sockets--
    if (user.sockets.size > 0) return
    this.#users.delete(user.id)
    this.#o.bindings.release(userKey(user.id))
    for (const channel of user.channels.values()) {
      if (channel.kind === 'group') this.#o.bindings.release(channelKey(channel.id))
    }
    user.channels.clear()
  }

  /** Sockets the user has on this gateway. */
  socketsOf (userId: string): number {
    return this.#users.get(userId)?.sockets.size ?? 0
  }

  /** The user's channel, if this gateway knows them as a member. */
  channelOf (userId: string, channelId: string): ChannelSummary | undefined {
    return this.#users.get(userId)?.channels.get(channelId)
  }

  /** The user gained a channel: bind, join rooms, then tell the sockets. */
  joined (userId: string, channel: ChannelSummary): Promise<void> {
    return this.#serial(userId, async (user) => {
      if (user.left?.has(channel.id) === true) return
      touch(user, channel.id)
      if (user.channels.has(channel.id)) {
        user.channels.set(channel.id, { ...channel, lastSeq: Math.max(channel.lastSeq, user.channels.get(channel.id)!.lastSeq) })
        return
      }
      if (channel.kind === 'direct') this.#learnDirect(user, channel.id)
      await this.#gain(user, channel)
      this.#o.io.to(userRoom(userId)).emit('channel:joined', { channel })
    })
  }

  /** The user left a channel: leave rooms, release the key, tell the sockets. */
  left (userId: string, channelId: string): Promise<void> {
    return this.#serial(userId, async (user) => {
      // Even for a channel not known yet: a list read before this leave must not add it.
      touch(user, channelId)
      const left = user.left ??= new Set()
      left.add(channelId)
      if (left.size > MAX_LEFT) left.delete(left.values().next().value as string)
      const channel = user.channels.get(channelId)
      if (channel === undefined) return
      this.#lose(user, channel)
      this.#o.io.to(userRoom(userId)).emit('channel:left', { channelId })
    })
  }

  /** Counts a direct channel learned live; past MAX_LIVE_DIRECT the oldest so learned is forgotten. */
  #learnDirect (user: LocalUser, channelId: string): void {
    const live = user.liveDirect ??= new Set()
    live.add(channelId)
    if (live.size <= MAX_LIVE_DIRECT) return
    const oldest = live.values().next().value as string
    live.delete(oldest)
    // Direct channels have no key or room: forgetting one is only this entry.
    if (user.channels.get(oldest)?.kind === 'direct') user.channels.delete(oldest)
  }

  /** How many entries a user's per-channel state holds (for tests and diagnostics). */
  sizes (userId: string): { channels: number, touched: number, liveDirect: number } | undefined {
    const u = this.#users.get(userId)
    return u === undefined ? undefined : { channels: u.channels.size, touched: u.touched?.size ?? 0, liveDirect: u.liveDirect?.size ?? 0 }
  }

  /**
   * Re-reads the channels of every local user and applies what changed: joined/left
   * notices routed while this gateway had no queue (a broker outage) were dropped by
   * the broker. Sockets are told with channel:joined / channel:left.
   *
   * One user's read must not stop the others' (the worker refuses every request naming a
   * user in more channels than MEMBERSHIPS_MAX_CHANNELS, a row it cannot read, a read too
   * slow to answer in time): a chunk that fails is read again in halves
   * (src/gateway/bisect.ts). A user the worker still refuses alone has their sockets
   * ended, so that they reconnect and re-open a session, which reads their channels on
   * its own. Users whose part got no answer in time are returned `unresolved`, for the
   * caller to re-read later; they are never ended (the worker may be overloaded, as when
   * every gateway re-reads after an outage).
   * Every chunk is read with one request before any failing chunk is split, so a slow
   * user's split (about log2(500) + 1 timeouts) holds up no other chunk; and `onRead` hears
   * of the users of each part as soon as it is applied, not when the pass ends.
   * @param only re-read just these users (those a previous pass left unresolved)
   * @param onRead called with the ids of each part's users once their channels are applied
   * @returns users re-read (`resolved`: tell them to catch up), left unresolved, and
   *   how many sockets were ended
   */
  async resync (only?: ReadonlySet<string>, onRead?: (userIds: string[]) => void, readerAnswers = false): Promise<{ resolved: string[], unresolved: string[], ended: number }> {
    const users = [...this.#users.values()].filter((u) => only === undefined || only.has(u.id))
    const out = { resolved: [] as string[], unresolved: [] as string[], ended: 0 }
    const inconclusive = (err: unknown) => err instanceof ClientError && err.code === 'UNAVAILABLE'
    const read = (part: LocalUser[]) => this.#reread(part, onRead)
    const chunks: LocalUser[][] = []
    for (let i = 0; i < users.length; i += RESYNC_CHUNK) chunks.push(users.slice(i, i + RESYNC_CHUNK))
    /** Splits a chunk whose one request failed with `err`; false when not one part was answered. */
    const split = async (chunk: LocalUser[], err: unknown): Promise<boolean> => {
      let first = true
      const result = await readBisecting(chunk, (part) => {
        // The chunk's own request was made already: its outcome counts as the first.
        if (first && part === chunk) {
          first = false
          return Promise.reject(err)
        }
        return read(part)
      }, {
        maxRequests: RESYNC_MAX_REQUESTS,
        inconclusive,
        definite: (e) => e instanceof ClientError && e.code === 'LIMIT_REACHED',
        readerAnswers
      })
      const failed = new Set(result.failed.map((f) => f.item))
      const unresolved = new Set(result.unresolved)
      for (const { item, err: e } of result.failed) out.ended += this.#endUnreadable(item, e)
      for (const u of chunk) {
        if (unresolved.has(u)) out.unresolved.push(u.id)
        else if (!failed.has(u)) out.resolved.push(u.id)
      }
      return result.read > 0 || result.failed.length > 0
    }
    const deferred: Array<{ chunk: LocalUser[], err: unknown }> = []
    let missedInARow = 0
    for (let i = 0; i < chunks.length; i++) {
      const chunk = chunks[i]!
      try {
        await read(chunk)
        missedInARow = 0
        for (const u of chunk) out.resolved.push(u.id)
        continue
      } catch (err) {
        deferred.push({ chunk, err })
        missedInARow = inconclusive(err) ? missedInARow + 1 : 0
      }
      // Two chunks in a row unanswered: the worker may be away (also when it went away in
      // the middle of the pass). Find out on the oldest before asking for the others, each
      // of which would wait a timeout too.
      if (missedInARow >= 2) {
        const first = deferred.shift()!
        if (!await split(first.chunk, first.err)) {
          for (const { chunk: c } of deferred) for (const u of c) out.unresolved.push(u.id)
          for (const c of chunks.slice(i + 1)) for (const u of c) out.unresolved.push(u.id)
          return out
        }
        missedInARow = 0
      }
    }
    for (let k = 0; k < deferred.length; k++) {
      const { chunk, err } = deferred[k]!
      // Not one answer in the whole split: the worker is away, and every other chunk would
      // wait as long. They are left unresolved, to be re-read alone with backoff.
      if (!await split(chunk, err)) {
        for (const { chunk: c } of deferred.slice(k + 1)) for (const u of c) out.unresolved.push(u.id)
        break
      }
    }
    return out
  }

  /** Reads the channels of `part` in one request and applies them; rejects if the worker refused or did not answer. */
  async #reread (part: LocalUser[], onRead?: (userIds: string[]) => void): Promise<void> {
    // A part read again after a failure is a new request: it may only apply what is newer.
    const since = part.map((u) => reading(u))
    try {
      const { memberships } = await this.#o.rpc.call({ op: 'memberships.list', userIds: part.map((u) => u.id) })
      const listed = new Map(memberships.map((m) => [m.userId, m.channels]))
      await Promise.all(part.map((u, k) => this.#serial(u.id, async (current) => {
        const channels = listed.get(u.id)
        // A user who left and came back meanwhile has a new record and its own session.open.
        if (current !== u || channels === undefined) return
        await this.#apply(u, channels, since[k]!)
      })))
    } finally {
      part.forEach((u, k) => settled(u, since[k]!))
    }
    onRead?.(part.map((u) => u.id))
  }

  /**
   * A user whose channels could not be re-read: their memberships here may be stale, so
   * their sockets are ended (`session:end` UNAVAILABLE, as when a session cannot be opened)
   * and their client reconnects; the new session reads the user's channels alone.
   * @returns how many sockets were ended
   */
  #endUnreadable (u: LocalUser, err: unknown): number {
    if (this.#users.get(u.id) !== u) return 0
    const sockets = [...u.sockets]
    this.#o.log.warn({ err, userId: u.id, sockets: sockets.length }, 'could not re-read a user\'s channels; ending their sockets')
    for (const socket of sockets) {
      socket.emit('session:end', { code: 'UNAVAILABLE', message: 'your channels could not be re-read after lost deliveries; reconnect' })
      socket.disconnect(true)
    }
    return sockets.length
  }

  /**
   * Makes the user's channels those of `listed`, a list requested when the user's clock
   * was `since`: a channel joined or left after that keeps its state, and a list older
   * than one already applied only refreshes lastSeq. Once the user is loaded, sockets
   * are told; before, their session:ready carries the list.
   */
  async #apply (u: LocalUser, listed: ChannelSummary[], since: number, opening?: AppSocket): Promise<void> {
    const { io } = this.#o
    if (since < u.listedAt) {
      for (const channel of listed) {
        const known = u.channels.get(channel.id)
        if (known !== undefined && channel.lastSeq > known.lastSeq) known.lastSeq = channel.lastSeq
      }
      return
    }
    u.listedAt = since
    const changedSince = (id: string) => (u.touched?.get(id) ?? 0) > since
    const tell = u.loaded ? (opening === undefined ? io.to(userRoom(u.id)) : io.to(userRoom(u.id)).except(opening.id)) : undefined
    const ids = new Set<string>()
    const gained: Array<{ channel: ChannelSummary, bound: Promise<void> }> = []
    for (const channel of listed) {
      ids.add(channel.id)
      const known = u.channels.get(channel.id)
      if (known !== undefined) {
        if (channel.lastSeq > known.lastSeq) known.lastSeq = channel.lastSeq
        continue
      }
      if (changedSince(channel.id)) continue
      gained.push({ channel, bound: this.#gain(u, channel) })
    }
    for (const channel of [...u.channels.values()]) {
      if (ids.has(channel.id) || changedSince(channel.id)) continue
      this.#lose(u, channel)
      tell?.emit('channel:left', { channelId: channel.id })
    }
    if (tell === undefined || gained.length === 0) return
    // As joined() does: a socket told of a channel can rely on its live messages.
    await Promise.all(gained.map((g) => g.bound))
    for (const { channel } of gained) tell.emit('channel:joined', { channel })
  }

  /** The user is a member now: rooms first (anything routed from the moment the bind lands reaches the sockets), then the key. Resolves once bound. */
  async #gain (u: LocalUser, channel: ChannelSummary): Promise<void> {
    u.channels.set(channel.id, channel)
    if (channel.kind !== 'group') return
    for (const socket of u.sockets) void socket.join(channelRoom(channel.id))
    await this.#o.bindings.acquire(channelKey(channel.id))
  }

  /** The user is no longer a member: out of the rooms, key released. */
  #lose (u: LocalUser, channel: ChannelSummary): void {
    u.channels.delete(channel.id)
    if (channel.kind !== 'group') return
    for (const socket of u.sockets) void socket.leave(channelRoom(channel.id))
    this.#o.bindings.release(channelKey(channel.id))
  }

  #serial (userId: string, change: (user: LocalUser) => Promise<void>): Promise<void> {
    const user = this.#users.get(userId)
    if (user === undefined) return Promise.resolve()
    const run = user.tail.then(() => this.#users.get(userId) === user ? change(user) : undefined)
    user.tail = run.catch((err: unknown) => this.#o.log.error({ err, userId }, 'channel change failed'))
    return user.tail
  }

  async #open (user: LocalUser, socket: AppSocket): Promise<boolean> {
    const { bindings, rpc } = this.#o
    await bindings.whenBound(userKey(user.id))
    // Anything routed to channel keys bound after this instant may have been missed
    // between the read below and the bind: those channels' lastSeq is read again.
    const mark = bindings.now()
    const since = reading(user)
    let channels: ChannelSummary[] | undefined
    try {
      const opened = await this.#retry(socket, () => rpc.call({ op: 'session.open', userId: user.id }))
      if (opened === undefined) return false
      await this.#serial(user.id, async (u) => {
        // Every socket of the user left meanwhile and a new record began: `since` means
        // nothing to it, and the new record's own sockets open their own sessions.
        if (u !== user || !socket.connected) return
        await this.#apply(u, opened.channels, since, socket)
        u.loaded = true
        channels = [...u.channels.values()]
        for (const channel of channels) {
          if (channel.kind !== 'group') continue
          void socket.join(channelRoom(channel.id))
          const seen = this.#emitted.get(channel.id)
          if (seen !== undefined && seen > channel.lastSeq) channel.lastSeq = seen
        }
      })
    } finally {
      settled(user, since)
    }
    if (channels === undefined) return false
    const groups = channels.filter((c) => c.kind === 'group')
    // The user key too: a broker outage since `mark` unbound it, and direct messages
    // routed meanwhile are only in the database.
    await Promise.all([bindings.whenBound(userKey(user.id)), ...groups.map((c) => bindings.whenBound(channelKey(c.id)))])
    if (!socket.connected) return false
    const boundAfterMark = (key: string) => (bindings.boundSince(key) ?? Number.MAX_SAFE_INTEGER) > mark
    const directLate = boundAfterMark(userKey(user.id))
    const late = channels.filter((c) => c.kind === 'group' ? boundAfterMark(channelKey(c.id)) : directLate)
    // In chunks the worker accepts: a user in more channels than one request may name
    // must still get a session (one chunk's refusal would end it with VALIDATION).
    for (let from = 0; from < late.length; from += CHANNELS_SEQ_MAX_IDS) {
      const chunk = late.slice(from, from + CHANNELS_SEQ_MAX_IDS)
      const fresh = await this.#retry(socket, () => rpc.call({ op: 'channels.seq', userId: user.id, channelIds: chunk.map((c) => c.id) }))
      if (fresh === undefined) return false
      for (const c of chunk) {
        const seq = fresh.seqs[c.id]
        if (seq !== undefined && seq > c.lastSeq) c.lastSeq = seq
      }
    }
    const ready: SessionReady = { userId: user.id, serverId: this.#o.serverId, channels: channels.map((c) => ({ ...c })) }
    this.#opened.add(socket)
    socket.emit('session:ready', ready)
    return true
  }

  /** Retries a worker call while the socket stays connected; undefined if it went away. */
  async #retry<T> (socket: AppSocket, call: () => Promise<T>): Promise<T | undefined> {
    for (let attempt = 0; ; attempt++) {
      if (!socket.connected) return undefined
      try {
        return await call()
      } catch (err) {
        if (!(err instanceof ClientError) || err.code !== 'UNAVAILABLE') throw err
        this.#o.log.warn({ userId: socket.data.userId, attempt }, 'worker unavailable while opening a session; retrying')
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * 2 ** attempt)))
      }
    }
  }
}
