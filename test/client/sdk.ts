/** SDK clients for tests: what the application saw, and waiting for it. */
import type { Test } from 'tap'
import { ChatClient, type ChatClientOptions, type ChannelSummary, type ConnectionState, type Message } from '../../src/client/index.js'
import { tokenFor } from '../helpers/client.js'
import { waitUntil } from '../helpers/system.js'

export interface SdkUser {
  client: ChatClient
  /** Every message the application was handed, in order. */
  received: Message[]
  joined: ChannelSummary[]
  states: Array<{ state: ConnectionState, at: number, reason?: string }>
  errors: Error[]
  tokens: number
  /** The messages of one channel, in the order the application got them. */
  of: (channelId: string) => Message[]
  /** Waits until the channel holds `count` messages. */
  waitForCount: (channelId: string, count: number, timeoutMs?: number) => Promise<void>
  waitForSessions: (n: number, timeoutMs?: number) => Promise<void>
}

/** A ChatClient for `userId` with a token function (counted), closed at teardown. */
export async function sdkUser (t: Test, url: ChatClientOptions['url'], userId: string, options: Partial<ChatClientOptions> = {}): Promise<SdkUser> {
  const user: SdkUser = {
    client: undefined as unknown as ChatClient, // set just below, before anything can read it
    received: [],
    joined: [],
    states: [],
    errors: [],
    tokens: 0,
    of: (channelId) => user.received.filter((m) => m.channelId === channelId),
    waitForCount: (channelId, count, timeoutMs = 30_000) =>
      waitUntil(() => user.of(channelId).length >= count, timeoutMs, `${userId}: ${count} messages in ${channelId} (has ${user.of(channelId).length})`),
    waitForSessions: (n, timeoutMs = 30_000) => waitUntil(() => user.client.stats().sessions >= n, timeoutMs, `${userId}: session ${n}`)
  }
  user.client = new ChatClient({
    url,
    token: () => {
      user.tokens++
      return tokenFor(userId)
    },
    ...options
  })
  t.teardown(() => user.client.close())
  user.client.on('message', (m) => user.received.push(m))
  user.client.on('channel:joined', (c) => user.joined.push(c))
  user.client.on('state', (state, detail) => user.states.push({ state, at: Date.now(), ...(detail.reason !== undefined ? { reason: detail.reason } : {}) }))
  user.client.on('error', (err) => user.errors.push(err))
  await user.waitForSessions(1)
  return user
}

/**
 * The application got exactly the stored messages of a channel: each once, in seq
 * order, the same ids and contents as history has them.
 */
export function assertExactlyOnceInOrder (t: Test, got: Message[], stored: Message[], what: string): void {
  t.same(got.map((m) => m.seq), stored.map((m) => m.seq), `${what}: seqs in order, none missing, none twice`)
  t.same(got.map((m) => m.id), stored.map((m) => m.id), `${what}: the stored messages`)
  t.equal(new Set(got.map((m) => m.id)).size, got.length, `${what}: no duplicate id`)
}
