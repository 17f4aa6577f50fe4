/**
 * Hostile input for the security tests: the protocol's rules written out again from
 * docs/PROTOCOL.md (so the validators are checked against the spec, not against
 * themselves), and fast-check arbitraries for values that are valid, nearly valid or
 * plainly hostile: wrong types, control characters, lone surrogates, huge strings,
 * deep nesting, invalid uuids, keys like `__proto__`.
 */
import fc from 'fast-check'

// ---- the spec, independently of src/contracts ------------------------------------

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/
/** Unicode general category Cc: U+0000–U+001F and U+007F–U+009F. */
const CONTROL = /\p{Cc}/u
const CONTROL_BUT_TAB_CR_LF = /(?![\t\n\r])\p{Cc}/u

export const spec = {
  uuid: (v: unknown): boolean => typeof v === 'string' && UUID.test(v),
  /** "1–200 UTF-8 bytes, no control characters", and well-formed (PostgreSQL stores UTF-8). */
  userId: (v: unknown): boolean =>
    typeof v === 'string' && v.length > 0 && !LONE_SURROGATE.test(v) && !CONTROL.test(v) && Buffer.byteLength(v, 'utf8') <= 200,
  /** Well-formed text; tab, CR and LF are the only control characters allowed. */
  chatText: (v: unknown, min: number, max: number): boolean =>
    typeof v === 'string' && v.length >= min && v.length <= max && !LONE_SURROGATE.test(v) && !CONTROL_BUT_TAB_CR_LF.test(v),
  int: (v: unknown, min: number, max: number): boolean => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max,
  /** Arrays as JSON has them: every index present (holes are refused like `undefined`). */
  arrayOf: (v: unknown, max: number, item: (x: unknown) => boolean): boolean => {
    if (!Array.isArray(v) || v.length > max) return false
    for (let i = 0; i < v.length; i++) if (!(i in v) || !item(v[i])) return false
    return true
  }
}

// ---- arbitraries -------------------------------------------------------------------

/** Any single UTF-16 code unit, lone surrogates and NUL included. */
export const anyCodeUnit = fc.integer({ min: 0, max: 0xffff }).map((n) => String.fromCharCode(n))
/** Strings of arbitrary code units. */
export const rawString = (maxLength = 30) => fc.string({ unit: anyCodeUnit, maxLength })
/** A Cc character other than tab, CR and LF (those are allowed in text, not in ids). */
export const controlChar = fc.oneof(fc.integer({ min: 0, max: 0x1f }), fc.integer({ min: 0x7f, max: 0x9f }))
  .filter((n) => n !== 0x09 && n !== 0x0a && n !== 0x0d)
  .map((n) => String.fromCharCode(n))
export const loneSurrogate = fc.oneof(fc.integer({ min: 0xd800, max: 0xdbff }), fc.integer({ min: 0xdc00, max: 0xdfff }))
  .map((n) => String.fromCharCode(n))

/** `inner` with `bad` inserted somewhere (never next to a surrogate it could pair with). */
export const spliced = (inner: fc.Arbitrary<string>, bad: fc.Arbitrary<string>) =>
  fc.tuple(inner, bad, fc.nat()).map(([s, b, at]) => {
    const i = s.length === 0 ? 0 : at % (s.length + 1)
    return `${s.slice(0, i)} ${b} ${s.slice(i)}`
  })

/** Nested arrays or objects, built by JSON.parse as a decoded frame would be. */
export function nested (depth: number, kind: 'array' | 'object'): unknown {
  return JSON.parse(kind === 'array' ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth))
}
export const deep = (maxDepth = 10_000) =>
  fc.tuple(fc.integer({ min: 2, max: maxDepth }), fc.constantFrom('array' as const, 'object' as const)).map(([d, k]) => nested(d, k))

/** Strings longer than any field allows (ids 36/200, names 100, content 1,000,000). */
export const hugeString = fc.tuple(fc.constantFrom(37, 101, 201, 1_000_001), fc.constantFrom('x', 'é', '😀', '0'))
  .map(([n, c]) => c.repeat(n))

export const validUuid = fc.oneof(fc.uuid(), fc.uuid().map((u) => u.toUpperCase()))
/** Almost a uuid: one character, the length or the framing is wrong. */
export const badUuid = fc.oneof(
  fc.uuid().map((u) => u.slice(1)),
  fc.uuid().map((u) => `${u}0`),
  fc.uuid().map((u) => u.replace(/-/g, '')),
  fc.uuid().map((u) => `{${u}}`),
  fc.uuid().map((u) => `${u}\n`),
  fc.uuid().map((u) => ` ${u}`),
  fc.uuid().map((u) => `channel:${u}`),
  fc.tuple(fc.uuid(), fc.nat(35), fc.constantFrom('g', 'Z', ' ', '\u0000', 'é', '\ud800', '٣')).map(([u, i, c]) => u.slice(0, i) + c + u.slice(i + 1)),
  fc.constantFrom('', 'null', '00000000-0000-0000-0000-00000000000', '*', '#', 'channel:1')
)

/** User ids that look like routing keys, room names or globs, plus arbitrary well-formed ones. */
export const trickyUserIds = ['#', '*', 'channel:1', 'user:bob', 'u:bob', 'c:1', '__proto__', 'constructor', ' ', 'a.b.c', 'x'.repeat(200), '€'.repeat(66), '😀'.repeat(50)]
export const validUserId = fc.oneof(
  fc.constantFrom(...trickyUserIds),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }).filter(spec.userId)
)
export const badUserId = fc.oneof(
  fc.constant(''),
  spliced(fc.string({ maxLength: 20 }), fc.oneof(controlChar, fc.constantFrom('\t', '\n', '\r'))),
  spliced(fc.string({ maxLength: 20 }), loneSurrogate),
  fc.constantFrom('x'.repeat(201), '€'.repeat(67), '😀'.repeat(51), 'é'.repeat(101))
)

export const validText = (min: number, max: number) =>
  fc.string({ unit: 'binary', minLength: min, maxLength: Math.min(max, 60) }).filter((s) => spec.chatText(s, min, max))
export const badText = (max: number) => fc.oneof(
  fc.constant(''),
  spliced(fc.string({ maxLength: 20 }), controlChar),
  spliced(fc.string({ maxLength: 20 }), loneSurrogate),
  fc.constantFrom('x', '😀').map((c) => c.repeat(max + 1))
)

/** Numbers and look-alikes that are not an integer in [min, max]. */
export const badInt = (min: number, max: number) => fc.oneof(
  fc.constantFrom(min - 1, max + 1, 0.5, -0.5, min + 0.5, Number.MAX_VALUE, -Number.MAX_VALUE, 2 ** 53, -(2 ** 53)),
  fc.double({ noDefaultInfinity: true, noNaN: true }).filter((d) => !spec.int(d, min, max)),
  fc.constantFrom(String(min), `${max}`, '1', 'NaN', 'Infinity', '1e3', true, false, null, [], {}, [min])
)

/** Values of other JSON types than a string. */
export const notAString = fc.oneof(
  fc.constantFrom(null, true, false, 0, -1, 1.5, 1e308, [], {}, [''], { toString: 'x' }),
  fc.integer(),
  fc.array(fc.string(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 })
)

/** Anything a field should never hold, whatever its type. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  notAString,
  rawString(),
  spliced(fc.string({ maxLength: 20 }), controlChar),
  spliced(fc.string({ maxLength: 20 }), loneSurrogate),
  badUuid,
  deep(300)
)

/** Keys no payload may carry: prototype pollution, spoofing, and stray names. */
export const extraKey = fc.oneof(
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'senderId', 'userId', 'createdBy', 'v', 'op', 'toString', 'hasOwnProperty', ''),
  fc.string({ maxLength: 12 })
)

/**
 * `obj` (a plain JSON object) with one more own key. Built through JSON.parse, so
 * `__proto__` becomes an own property exactly as in a decoded frame.
 */
export function withKey (obj: Record<string, unknown>, key: string, value: unknown): Record<string, unknown> {
  const body = JSON.stringify(obj).slice(1, -1)
  const extra = `${JSON.stringify(key)}:${JSON.stringify(value) ?? 'null'}`
  return JSON.parse(`{${extra}${body === '' ? '' : ','}${body}}`) as Record<string, unknown>
}
