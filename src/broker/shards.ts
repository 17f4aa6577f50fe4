/**
 * Sends are spread over WORKER_SHARDS send queues by channel. Each queue has a single
 * active consumer, so one worker stores a channel's sends in queue order (a sender's
 * messages keep their order in `seq`), while different channels are stored by
 * different workers at once: persistence scales out instead of being one thread.
 *
 * The function is a contract between gateways of every version (workers only consume
 * queue names): changing it would move channels between queues exactly as changing
 * the shard count does (docs/OPERATIONS.md, "Send shards").
 */

import { hash32 } from '../hash.js'

/** What decides a send's shard: its group channel, or the pair of users of a direct message. */
export interface ShardKey {
  senderId: string
  toUserId?: string
  channelId?: string
}


/**
 * The shard (0 … shards − 1) that stores `send`. Both directions of a direct channel share
 * one; a send to a direct channel by its id must be given as its pair (`toUserId`).
 */
export function sendShard (send: ShardKey, shards: number): number {
  if (shards <= 1) return 0
  let key: string
  if (send.channelId !== undefined) {
    key = `c\n${send.channelId}`
  } else {
    const to = send.toUserId ?? send.senderId
    key = send.senderId < to ? `d\n${send.senderId}\n${to}` : `d\n${to}\n${send.senderId}`
  }
  return hash32(key) % shards
}
