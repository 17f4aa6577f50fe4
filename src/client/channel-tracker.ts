/**
 * Per-channel delivery state: the protocol's recovery flow (docs/PROTOCOL.md,
 * "Delivery guarantees") as a plain class with no socket in it. Messages from live
 * delivery and from history both go through accept(); the application sees each
 * message once, in seq order per channel, whatever order and how often they came.
 *
 * De-duplication: a channel's messages are numbered 1, 2, 3… without gaps and
 * (channelId, seq) names exactly one message id, so "every seq up to `delivered`
 * was handed over" is de-duplication by id in constant memory per channel.
 */
import type { ChannelSummary, Message } from '../contracts/protocol.js'

export interface TrackedChannel {
  summary: ChannelSummary
  /** Every seq up to this one was delivered (or skipped on purpose, see `start`). */
  delivered: number
  /** Messages that arrived ahead of a gap, by seq. */
  readonly pending: Map<number, { message: Message, fromHistory: boolean }>
  fetching: boolean
  /** Asked to fetch again while a fetch ran. */
  again: boolean
}

export interface TrackerStats {
  /** Messages handed to the application. */
  delivered: number
  /** Of those, how many came from history:fetch rather than live delivery. */
  fromHistory: number
  /** Messages dropped because they had been delivered already. */
  duplicates: number
  /** history:fetch pages requested. */
  pages: number
}

export interface ChannelTrackerOptions {
  /** One history:fetch page: messages with seq > afterSeq, oldest first, at most `limit`. */
  fetchPage: (channel: ChannelSummary, afterSeq: number, limit: number) => Promise<Message[]>
  /** Hands a message to the application. */
  deliver: (message: Message) => void
  /** A fetch failed; the tracker keeps its position and fetches again when asked. */
  onFetchError: (err: unknown, channel: ChannelSummary) => void
  /** @default 100 */
  pageSize?: number
}

export class ChannelTracker {
  readonly #channels = new Map<string, TrackedChannel>()
  readonly #o: ChannelTrackerOptions
  readonly #pageSize: number
  readonly #stats: TrackerStats = { delivered: 0, fromHistory: 0, duplicates: 0, pages: 0 }

  constructor (options: ChannelTrackerOptions) {
    this.#o = options
    this.#pageSize = options.pageSize ?? 100
  }

  get stats (): TrackerStats { return { ...this.#stats } }

  get (channelId: string): TrackedChannel | undefined { return this.#channels.get(channelId) }

  channels (): ChannelSummary[] { return [...this.#channels.values()].map((c) => ({ ...c.summary })) }

  /** Highest seq delivered per channel: persist it and pass it back as a start position. */
  positions (): Record<string, number> {
    const out: Record<string, number> = {}
    for (const [id, c] of this.#channels) out[id] = c.delivered
    return out
  }

  /**
   * Learns or refreshes a channel from the server (session:ready, channel:joined,
   * channels:list) and fetches whatever it has that we have not delivered.
   * `start` is used only for a channel seen for the first time.
   * @returns true if the channel was new.
   */
  upsert (summary: ChannelSummary, start: number): boolean {
    let channel = this.#channels.get(summary.id)
    const isNew = channel === undefined
    if (channel === undefined) {
      channel = { summary: { ...summary }, delivered: Math.max(0, start), pending: new Map(), fetching: false, again: false }
      this.#channels.set(summary.id, channel)
    } else {
      channel.summary = { ...summary, lastSeq: Math.max(summary.lastSeq, channel.summary.lastSeq) }
    }
    if (channel.summary.lastSeq > channel.delivered) void this.fill(summary.id)
    return isNew
  }

  remove (channelId: string): void {
    this.#channels.delete(channelId)
  }

  /**
   * A message from live delivery or history. Delivers it and whatever it unblocks;
   * a seq beyond the next one means live delivery missed some: fetch the gap.
   */
  accept (message: Message, fromHistory = false): void {
    const channel = this.#channels.get(message.channelId)
    if (channel === undefined) return
    if (!this.#hold(channel, message, fromHistory)) return
    this.#flush(channel)
    if (channel.pending.size > 0) void this.fill(message.channelId)
  }

  /** Fetches history until the channel has caught up; one fetch per channel at a time. */
  async fill (channelId: string): Promise<void> {
    const channel = this.#channels.get(channelId)
    if (channel === undefined) return
    if (channel.fetching) {
      channel.again = true
      return
    }
    channel.fetching = true
    try {
      do {
        channel.again = false
        try {
          await this.#fetchAll(channel)
        } catch (err) {
          // Asked again meanwhile (a new session, say): that attempt may well succeed.
          if (!channel.again) this.#o.onFetchError(err, channel.summary)
        }
      } while (channel.again && this.#channels.get(channelId) === channel)
    } finally {
      channel.fetching = false
    }
  }

  async #fetchAll (channel: TrackedChannel): Promise<void> {
    for (;;) {
      const after = channel.delivered
      this.#stats.pages++
      const page = await this.#o.fetchPage(channel.summary, after, this.#pageSize)
      if (this.#channels.get(channel.summary.id) !== channel) return // left meanwhile
      for (const m of page) {
        if (m.channelId !== channel.summary.id) continue
        this.#hold(channel, m, true)
      }
      this.#flush(channel)
      // A short page is the end; no progress on a full page would loop forever.
      if (page.length < this.#pageSize || channel.delivered === after) return
    }
  }

  /** Records a message for delivery; false if it is a duplicate. */
  #hold (channel: TrackedChannel, m: Message, fromHistory: boolean): boolean {
    if (m.seq <= channel.delivered || channel.pending.has(m.seq)) {
      this.#stats.duplicates++
      return false
    }
    channel.pending.set(m.seq, { message: m, fromHistory })
    if (m.seq > channel.summary.lastSeq) channel.summary.lastSeq = m.seq
    return true
  }

  #flush (channel: TrackedChannel): void {
    for (let next = channel.pending.get(channel.delivered + 1); next !== undefined; next = channel.pending.get(channel.delivered + 1)) {
      channel.pending.delete(next.message.seq)
      channel.delivered = next.message.seq
      this.#stats.delivered++
      if (next.fromHistory) this.#stats.fromHistory++
      this.#o.deliver(next.message)
    }
  }
}
