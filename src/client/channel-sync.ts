/**
 * The client's side of the recovery flow (docs/PROTOCOL.md): which channels the user
 * has, where each one starts, and when to catch up. ChannelTracker orders and fetches
 * per channel; this decides what to feed it from the server's events.
 */
import type { ChannelSummary, Message, SessionReady } from '../contracts/protocol.js'
import { ChannelTracker, type TrackerStats } from './channel-tracker.js'
import { ChatError } from './errors.js'

export interface ChannelSyncOptions {
  /** Latest messages delivered per channel known at the first session, when resumeFrom is empty. */
  backlog: number
  resumeFrom: Record<string, number>
  pageSize: number
  /** One history page on the open session (rejects CLIENT_DISCONNECTED without one). */
  fetchPage: (target: { channelId: string } | { withUserId: string }, afterSeq: number, limit: number) => Promise<Message[]>
  message: (message: Message) => void
  joined: (channel: ChannelSummary) => void
  left: (channelId: string) => void
  error: (err: ChatError) => void
  /** Runs `again` after a pause that grows with `attempt`, if the session is still the same one. */
  retryLater: (attempt: number, again: () => void) => void
}

export class ChannelSync {
  readonly #o: ChannelSyncOptions
  readonly #tracker: ChannelTracker
  /** Start positions of channels not tracked now (given, or kept after leaving). */
  readonly #resume: Map<string, number>
  /** Groups first seen in a message: tracked, but announced only once their summary (name) arrives. */
  readonly #unnamed = new Set<string>()
  #sessions = 0
  #me: string | undefined
  /** Failed catch-ups per channel in this session: each retry waits longer. */
  readonly #failures = new Map<string, number>()
  /**
   * The app resumes (resumeFrom names a channel): a channel it does not name was joined
   * since it saved its positions, maybe while it was not running, so it starts from its
   * first message like one joined while connected, not from the backlog (whose default,
   * 0, would skip what was posted meanwhile).
   */
  readonly #resuming: boolean

  constructor (options: ChannelSyncOptions) {
    this.#o = options
    this.#resume = new Map(Object.entries(options.resumeFrom))
    this.#resuming = this.#resume.size > 0
    this.#tracker = new ChannelTracker({
      pageSize: options.pageSize,
      fetchPage: (channel, afterSeq, limit) => options.fetchPage(historyTarget(channel), afterSeq, limit),
      deliver: options.message,
      onFetchError: (err, channel) => this.#fetchFailed(err, channel)
    })
  }

  get sessions (): number { return this.#sessions }
  get stats (): TrackerStats { return this.#tracker.stats }
  channels (): ChannelSummary[] { return this.#tracker.channels() }
  positions (): Record<string, number> { return { ...Object.fromEntries(this.#resume), ...this.#tracker.positions() } }

  /** session:ready: track its channels, drop those it no longer lists, catch up. */
  opened (ready: SessionReady): void {
    const first = this.#sessions++ === 0
    this.#me = ready.userId
    this.#failures.clear()
    const listed = new Set(ready.channels.map((c) => c.id))
    const before = this.#tracker.channels().map((c) => c.id)
    for (const channel of ready.channels) this.learn(channel, first)
    // Left while we were away (from another device, say).
    for (const id of before) if (!listed.has(id)) this.forget(id)
  }

  /** A channel from the server (session:ready, channel:joined, channels:list): track it, catch up if behind. */
  learn (channel: ChannelSummary, firstSession = false): void {
    const start = this.#resume.get(channel.id) ?? (firstSession && !this.#resuming ? Math.max(0, channel.lastSeq - this.#o.backlog) : 0)
    if (!this.#tracker.upsert(channel, start)) {
      if (this.#unnamed.delete(channel.id)) this.#o.joined({ ...(this.#tracker.get(channel.id)?.summary ?? channel) })
      return
    }
    this.#resume.delete(channel.id)
    if (!firstSession) this.#o.joined({ ...channel })
  }

  /** channels:list after session:resync: catch up the channels tracked; joins and leaves come as their own notices. */
  refresh (channel: ChannelSummary): void {
    if (this.#tracker.get(channel.id) !== undefined) this.learn(channel)
  }

  forget (channelId: string): void {
    const tracked = this.#tracker.get(channelId)
    if (tracked === undefined) return
    // Keep the position: should the channel come back, nothing is delivered twice.
    this.#resume.set(channelId, tracked.delivered)
    this.#tracker.remove(channelId)
    // Never announced, so nothing to take back.
    if (this.#unnamed.delete(channelId)) return
    this.#o.left(channelId)
  }

  /** message:new. */
  message (m: Message): void {
    if (this.#tracker.get(m.channelId) === undefined) {
      // A direct channel is created by its first message; its channel:joined, if this
      // gateway sends one, may come after the message itself.
      const peerId = m.kind === 'direct' ? (m.senderId === this.#me ? m.toUserId ?? m.senderId : m.senderId) : undefined
      if (peerId !== undefined) {
        this.learn({ id: m.channelId, kind: 'direct', name: peerId, lastSeq: m.seq - 1, peerId })
      } else {
        // Its channel:joined is on the way (a bind and a delivery landed in one read): the
        // group's name comes with it, and so does the announcement.
        this.#tracker.upsert({ id: m.channelId, kind: m.kind, name: '', lastSeq: m.seq - 1 }, this.#resume.get(m.channelId) ?? 0)
        this.#resume.delete(m.channelId)
        this.#unnamed.add(m.channelId)
      }
    }
    this.#tracker.accept(m)
  }

  #fetchFailed (err: unknown, channel: ChannelSummary): void {
    const e = err instanceof ChatError ? err : new ChatError('INTERNAL', String(err), { cause: err })
    if (e.code === 'FORBIDDEN') return this.forget(channel.id) // no longer a member
    if (e.code === 'CLIENT_DISCONNECTED' || e.code === 'CLIENT_CLOSED') return // the next session:ready fetches again
    // The user's other clients (tabs, devices) hold the gateway's cap of waiting reads
    // (USER_REQUESTS_WAITING): wait for a place, which is no fault to report or back off for.
    if (e.code === 'RATE_LIMITED') return this.#o.retryLater(1, () => { void this.#tracker.fill(channel.id) })
    this.#o.error(e)
    const attempt = (this.#failures.get(channel.id) ?? 0) + 1
    this.#failures.set(channel.id, attempt)
    this.#o.retryLater(attempt, () => { void this.#tracker.fill(channel.id) })
  }
}

/**
 * Direct channels are fetched by peer: a gateway learns of a direct channel from its
 * first message, a moment after delivering it (and older gateways only at the next
 * session), and refuses it by id until then; by peer works either way.
 */
function historyTarget (channel: ChannelSummary): { channelId: string } | { withUserId: string } {
  return channel.kind === 'direct' && channel.peerId !== undefined ? { withUserId: channel.peerId } : { channelId: channel.id }
}
