/**
 * A string hash that every process of every version computes alike: it places sends in
 * shards (src/broker/shards.ts) and user ids in lock buckets (src/db/repositories/channels.ts).
 */

/**
 * 32-bit FNV-1a over UTF-16 code units, then MurmurHash3's finalizer: stable across
 * processes, versions and platforms. Without the finalizer, FNV's low bit is the parity
 * of the characters' low bits, and `% 2` sent every key of a test to one shard.
 */
export function hash32 (text: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}
