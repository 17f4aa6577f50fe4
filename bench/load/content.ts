/**
 * Bench message content: `b|<n>|<sentAtUs>|<padding>`, where n numbers the sender's
 * messages from 0 and sentAtUs is CLOCK_MONOTONIC in microseconds, the same clock in
 * every process on the machine, so send→receive is measured without clock skew.
 */
export function encodeContent (n: number, sentAtUs: number, bytes: number): string {
  const head = `b|${n}|${sentAtUs}|`
  return head.length >= bytes ? head : head + 'x'.repeat(bytes - head.length)
}

export function decodeContent (content: string): { n: number, sentAtUs: number } | undefined {
  if (content.charCodeAt(0) !== 98 /* b */) return undefined
  const a = content.indexOf('|', 2)
  const b = content.indexOf('|', a + 1)
  if (a < 0 || b < 0) return undefined
  return { n: Number(content.slice(2, a)), sentAtUs: Number(content.slice(a + 1, b)) }
}
