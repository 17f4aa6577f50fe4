/**
 * Property-based checks of the validators every client event and broker envelope
 * goes through (pure, no services). For each schema: well-formed payloads are
 * accepted unchanged; extra keys (own `__proto__`, `constructor`, `prototype`,
 * `senderId`…), missing fields, wrong types, control characters, lone surrogates,
 * huge strings, deep nesting and invalid uuids are refused; nothing, not even
 * non-JSON values, makes a validator throw. The rules come from test/helpers/hostile.ts,
 * written from docs/PROTOCOL.md, not from the schemas.
 */
import t, { type Test } from 'tap'
import fc from 'fast-check'
import type { TSchema } from '@sinclair/typebox'
import { compile } from '../../src/contracts/validate.js'
import { isChatText, isUserId, MAX_USER_ID_BYTES } from '../../src/contracts/ids.js'
import {
  ChannelCreateSchema, ChannelLeaveSchema, ChannelsListSchema, ContentSchema, HistoryFetchSchema, MessageSendSchema, TypingSchema
} from '../../src/contracts/protocol.js'
import { RpcRequestSchema, SendCommandSchema } from '../../src/contracts/envelopes.js'
import {
  anyCodeUnit, badInt, badText, badUserId, badUuid, controlChar, deep, extraKey, hostileValue, hugeString, loneSurrogate,
  notAString, rawString, spec, spliced, validText, validUserId, validUuid, withKey
} from '../helpers/hostile.js'

type Obj = Record<string, unknown>

interface Field {
  required: boolean
  ok: (v: unknown) => boolean
  valid: fc.Arbitrary<unknown>
  /** Values that are wrong for this field by construction. */
  invalid: fc.Arbitrary<unknown>
}
type Shape = Record<string, Field>

const MAX_SEQ = Number.MAX_SAFE_INTEGER
/** `invalid` is filtered through `ok` too, so a generic wrong value that happens to fit (a 37-character string as a user id) is dropped. */
const field = (required: boolean, ok: Field['ok'], valid: Field['valid'], invalid: Field['invalid']): Field =>
  ({ required, ok, valid, invalid: invalid.filter((v) => !ok(v)) })
const uuidField = (required: boolean) => field(required, spec.uuid, validUuid, fc.oneof(badUuid, notAString, hugeString, deep()))
const userField = (required: boolean) => field(required, spec.userId, validUserId, fc.oneof(badUserId, notAString, hugeString, deep()))
const textField = (min: number, max: number) =>
  field(true, (v) => spec.chatText(v, min, max), validText(min, max), fc.oneof(badText(max), notAString, deep()))
const intField = (required: boolean, min: number, max: number) =>
  field(required, (v) => spec.int(v, min, max), fc.integer({ min, max: Math.min(max, 2 ** 40) }), badInt(min, max))
const usersField = (max: number) => field(true, (v) => spec.arrayOf(v, max, spec.userId), fc.array(validUserId, { maxLength: 5 }),
  fc.oneof(
    fc.tuple(fc.array(validUserId, { maxLength: 3 }), fc.oneof(badUserId, notAString, deep())).map(([ok, bad]) => [...ok, bad]),
    notAString.filter((v) => !Array.isArray(v) || v.length > 0),
    deep()
  ))
const literal = (value: string | number) => field(true, (v) => v === value, fc.constant(value),
  fc.oneof(fc.constantFrom(String(value), `${value} `, String(value).toUpperCase(), 2, null, [value]).filter((v) => v !== value), rawString()))

/** Every schema under test: a union lists one shape per member. */
const SCHEMAS: Array<{ name: string, schema: TSchema, shapes: Shape[] }> = [
  {
    name: 'message:send',
    schema: MessageSendSchema,
    shapes: [{ clientMsgId: uuidField(true), content: textField(1, 1_000_000), toUserId: userField(false), channelId: uuidField(false) }]
  },
  { name: 'channel:create', schema: ChannelCreateSchema, shapes: [{ name: textField(1, 100), memberIds: usersField(100_000) }] },
  { name: 'channel:leave', schema: ChannelLeaveSchema, shapes: [{ channelId: uuidField(true) }] },
  {
    name: 'history:fetch',
    schema: HistoryFetchSchema,
    shapes: [{
      channelId: uuidField(false),
      withUserId: userField(false),
      afterSeq: intField(false, 0, MAX_SEQ),
      beforeSeq: intField(false, 1, MAX_SEQ),
      limit: intField(false, 1, 500)
    }]
  },
  { name: 'channels:list', schema: ChannelsListSchema, shapes: [{}] },
  { name: 'typing', schema: TypingSchema, shapes: [{ channelId: uuidField(true) }] },
  {
    name: 'SendCommand (broker)',
    schema: SendCommandSchema,
    shapes: [{
      v: literal(1),
      senderId: userField(true),
      clientMsgId: uuidField(true),
      content: textField(1, 1_000_000),
      toUserId: userField(false),
      channelId: uuidField(false),
      sentAt: field(false, (v) => typeof v === 'number' && Number.isFinite(v), fc.double({ noNaN: true, noDefaultInfinity: true }),
        fc.constantFrom('1', null, true, [], {}, Number.NaN, Number.POSITIVE_INFINITY))
    }]
  },
  {
    name: 'RpcRequest (broker)',
    schema: RpcRequestSchema,
    shapes: [
      { op: literal('session.open'), userId: userField(true) },
      { op: literal('channels.list'), userId: userField(true) },
      {
        op: literal('channels.seq'),
        userId: userField(true),
        channelIds: field(true, (v) => spec.arrayOf(v, 10_000, spec.uuid), fc.array(validUuid, { maxLength: 5 }),
          fc.oneof(fc.tuple(fc.array(validUuid, { maxLength: 3 }), badUuid).map(([ok, bad]) => [...ok, bad]), notAString.filter((v) => !Array.isArray(v) || v.length > 0)))
      },
      {
        op: literal('history.fetch'),
        userId: userField(true),
        channelId: uuidField(false),
        withUserId: userField(false),
        afterSeq: intField(false, 0, MAX_SEQ),
        beforeSeq: intField(false, 0, MAX_SEQ),
        limit: intField(true, 1, 500)
      },
      { op: literal('channel.create'), userId: userField(true), name: textField(1, 100), memberIds: usersField(100_000) },
      { op: literal('channel.leave'), userId: userField(true), channelId: uuidField(true) }
    ]
  }
]

const isObj = (x: unknown): x is Obj => typeof x === 'object' && x !== null && !Array.isArray(x)
/** The protocol's verdict: an object with only the shape's keys, each valid, every required one present. */
function conforms (shape: Shape, x: unknown): boolean {
  if (!isObj(x)) return false
  if (!Object.getOwnPropertyNames(x).every((k) => Object.hasOwn(shape, k))) return false
  return Object.entries(shape).every(([k, f]) => x[k] === undefined ? !f.required : f.ok(x[k]))
}

const validOf = (shape: Shape): fc.Arbitrary<Obj> => fc.record(
  Object.fromEntries(Object.entries(shape).map(([k, f]) => [k, f.valid])),
  { requiredKeys: Object.entries(shape).filter(([, f]) => f.required).map(([k]) => k) }
)
/** Each key present or not, each value valid or hostile: both verdicts are common. */
const nearOf = (shape: Shape): fc.Arbitrary<Obj> => fc.record(
  Object.fromEntries(Object.entries(shape).map(([k, f]) => [k, fc.oneof({ arbitrary: f.valid, weight: 4 }, { arbitrary: f.invalid, weight: 1 }, { arbitrary: hostileValue, weight: 1 })])),
  { requiredKeys: [] }
)

/** Runs a property and records one assertion with the counterexample, if any. */
function holds<Ts> (t: Test, what: string, property: fc.IProperty<Ts>, numRuns = 200): void {
  const out = fc.check(property, { numRuns })
  t.notOk(out.failed, what, { diagnostic: out.failed, report: fc.defaultReportMessage(out) })
}

for (const { name, schema, shapes } of SCHEMAS) {
  const validate = compile(schema)
  const verdict = (x: unknown) => shapes.some((s) => conforms(s, x))
  const anyShape = fc.constantFrom(...shapes)

  t.test(`${name}: validator against the protocol`, async (t) => {
    holds(t, 'accepts every well-formed payload and returns it unchanged', fc.property(anyShape.chain(validOf), (x) => {
      const r = validate(x)
      return r.ok && r.value === x
    }))

    let accepted = 0
    let refused = 0
    holds(t, 'on nearly-valid payloads and arbitrary JSON, accepts exactly what the protocol allows', fc.property(
      fc.oneof(anyShape.chain(nearOf), fc.jsonValue({ maxDepth: 4 }), fc.tuple(anyShape.chain(validOf), extraKey, fc.jsonValue({ maxDepth: 2 })).map(([o, k, v]) => withKey(o, k, v))),
      (x) => {
        const r = validate(x)
        if (r.ok) accepted++
        else refused++
        return r.ok === verdict(x) && (r.ok || (typeof r.reason === 'string' && r.reason.length > 0))
      }), 500)
    t.ok(accepted > 0 && refused > 0, `both verdicts were exercised (${accepted} accepted, ${refused} refused)`)

    holds(t, 'refuses any extra key, own __proto__/constructor/prototype and senderId included', fc.property(
      anyShape.chain((s) => fc.tuple(validOf(s), extraKey.filter((k) => !Object.hasOwn(s, k)), fc.jsonValue({ maxDepth: 2 }))),
      ([o, k, v]) => {
        const x = withKey(o, k, v)
        return Object.hasOwn(x, k) && !validate(x).ok
      }))

    const withRequired = shapes.filter((s) => Object.values(s).some((f) => f.required))
    if (withRequired.length > 0) {
      holds(t, 'refuses a payload missing a required field', fc.property(
        fc.constantFrom(...withRequired).chain((s) => fc.tuple(validOf(s), fc.constantFrom(...Object.keys(s).filter((k) => s[k]!.required)))),
        ([o, k]) => {
          const { [k]: _dropped, ...rest } = o
          return !validate(rest).ok
        }))
    }

    const withFields = shapes.filter((s) => Object.keys(s).length > 0)
    if (withFields.length > 0) {
      holds(t, 'refuses a wrong value in any one field (type, control character, lone surrogate, size, nesting, uuid)', fc.property(
        fc.constantFrom(...withFields).chain((s) => fc.constantFrom(...Object.keys(s)).chain((k) => fc.tuple(validOf(s), fc.constant(k), s[k]!.invalid))),
        ([o, k, bad]) => !validate({ ...o, [k]: bad }).ok))
    }

    holds(t, 'refuses anything that is not an object: primitives, arrays, deep nesting', fc.property(
      fc.oneof(fc.jsonValue().filter((v) => !isObj(v)), deep(), hugeString, rawString()),
      (x) => !validate(x).ok))

    holds(t, 'never throws, on any JavaScript value, and accepts nothing the protocol refuses', fc.property(
      fc.anything({ withBoxedValues: true, withMap: true, withSet: true, withObjectString: true, withNullPrototype: true, withBigInt: true, withDate: true, withTypedArray: true, withSparseArray: true, withUnicodeString: true }),
      (x) => {
        const r = validate(x)
        return !r.ok || verdict(x)
      }), 300)
  })
}

t.test('message content is bounded by the schema itself, even before MAX_CONTENT_CHARS', async (t) => {
  const content = compile(ContentSchema)
  t.equal(content('x'.repeat(1_000_000)).ok, true, '1,000,000 characters: the schema\'s hard bound')
  t.equal(content('x'.repeat(1_000_001)).ok, false)
  t.equal(content('').ok, false, 'empty')
  t.equal(content('line 1\r\nline 2\ttab').ok, true, 'tab, CR and LF are allowed')
  for (const c of ['\u0000', '\u0007', '\u001b', '\u007f', '\u0085', '\u009f', '\ud800', '\udfff']) {
    t.equal(content(`a${c}b`).ok, false, `U+${c.charCodeAt(0).toString(16).padStart(4, '0')} is refused`)
  }
  t.equal(content('😀 emoji, 中文, עברית').ok, true, 'surrogate pairs and any script are fine')
})

t.test('isUserId: 1 to 200 UTF-8 bytes, well-formed, no control characters', async (t) => {
  holds(t, 'agrees with the protocol on strings of arbitrary UTF-16 code units', fc.property(
    fc.oneof(fc.string({ unit: anyCodeUnit, maxLength: 210 }), fc.string({ unit: 'binary', maxLength: 120 }), validUserId, badUserId),
    (s) => isUserId(s) === spec.userId(s)), 2000)
  holds(t, 'refuses any control character or lone surrogate anywhere', fc.property(
    spliced(fc.string({ unit: 'binary', maxLength: 50 }), fc.oneof(controlChar, loneSurrogate, fc.constantFrom('\t', '\n', '\r'))),
    (s) => !isUserId(s)))
  t.equal(MAX_USER_ID_BYTES, 200)
  t.equal(isUserId('x'.repeat(200)), true, '200 ASCII bytes')
  t.equal(isUserId('x'.repeat(201)), false, '201 bytes')
  t.equal(isUserId('€'.repeat(66)), true, '198 bytes in 66 characters')
  t.equal(isUserId('€'.repeat(67)), false, '201 bytes in 67 characters: bytes count, not characters')
  t.equal(isUserId('😀'.repeat(50)), true, '200 bytes of 4-byte characters')
  t.equal(isUserId(''), false, 'empty')
  for (const id of ['#', '*', 'channel:1', 'user:bob', '__proto__', ' ']) t.equal(isUserId(id), true, `${JSON.stringify(id)} is an ordinary id`)
})

t.test('isChatText: well-formed text without control characters other than tab, CR and LF', async (t) => {
  holds(t, 'agrees with the protocol on strings of arbitrary UTF-16 code units', fc.property(
    fc.oneof(fc.string({ unit: anyCodeUnit, maxLength: 100 }), fc.string({ unit: 'binary', maxLength: 100 }), fc.string({ unit: 'binary-ascii', maxLength: 100 })),
    (s) => isChatText(s) === spec.chatText(s, 0, Number.MAX_SAFE_INTEGER)), 2000)
  holds(t, 'refuses any other control character or lone surrogate anywhere', fc.property(
    spliced(fc.string({ unit: 'binary', maxLength: 50 }), fc.oneof(controlChar, loneSurrogate)),
    (s) => !isChatText(s)))
  t.equal(isChatText('\t\r\n'), true)
  t.equal(isChatText('\ud83d\ude00'), true, 'a surrogate pair')
  t.equal(isChatText('\ude00\ud83d'), false, 'the same units in the wrong order')
})
