/** A random v4 UUID for `clientMsgId`, in Node and in every browser context. */
export function newClientMsgId (): string {
  const c = globalThis.crypto
  // randomUUID exists only in secure contexts (https, localhost); a demo opened over
  // plain http on a LAN address still has getRandomValues.
  if (typeof c.randomUUID === 'function') return c.randomUUID()
  const b = c.getRandomValues(new Uint8Array(16))
  b[6] = (b[6]! & 0x0f) | 0x40 // version 4
  b[8] = (b[8]! & 0x3f) | 0x80 // RFC 4122 variant
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}
