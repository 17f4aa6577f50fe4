/**
 * Compiled validators. A validator never throws: it returns the typed value or a
 * one-line reason that is safe to send back to a client.
 */
import type { Static, TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import './ids.js' // registers the formats used by the schemas

export type Validated<T> = { ok: true, value: T } | { ok: false, reason: string }

export function compile<S extends TSchema> (schema: S): (input: unknown) => Validated<Static<S>> {
  const checker = TypeCompiler.Compile(schema)
  return (input) => {
    if (checker.Check(input)) return { ok: true, value: input }
    const first = checker.Errors(input).First()
    const path = first?.path === '' || first === undefined ? 'payload' : first.path.slice(1).replace(/\//g, '.')
    return { ok: false, reason: `${path}: ${first?.message ?? 'invalid'}` }
  }
}
