/**
 * Identifier and text formats shared by the gateway (client input, JWT `sub`) and
 * the worker (broker input). Registering the formats here means any schema that
 * uses these ids can be compiled.
 */
import { FormatRegistry, Type } from '@sinclair/typebox'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
// C0 controls except tab, LF and CR; DEL; C1 controls.
const CONTROL_IN_TEXT = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/
const CONTROL_IN_ID = /[\u0000-\u001f\u007f-\u009f]/

/** Longest user id in UTF-8 bytes: `user:` + id must fit an AMQP routing key (255 bytes). */
export const MAX_USER_ID_BYTES = 200

export function isUuid (value: string): boolean {
  return UUID.test(value)
}

/** A user id is any printable, well-formed string of 1 to 200 UTF-8 bytes (the JWT `sub`). */
export function isUserId (value: string): boolean {
  return value.length > 0 &&
    value.length <= MAX_USER_ID_BYTES &&
    value.isWellFormed() &&
    !CONTROL_IN_ID.test(value) &&
    Buffer.byteLength(value) <= MAX_USER_ID_BYTES
}

/** Text people typed: well-formed UTF-16 (PostgreSQL rejects lone surrogates and NUL). */
export function isChatText (value: string): boolean {
  return value.isWellFormed() && !CONTROL_IN_TEXT.test(value)
}

FormatRegistry.Set('uuid', isUuid)
FormatRegistry.Set('user-id', isUserId)
FormatRegistry.Set('chat-text', isChatText)

export const UuidSchema = Type.String({ format: 'uuid', maxLength: 36 })
export const ChannelIdSchema = Type.String({ format: 'uuid', maxLength: 36 })
export const UserIdSchema = Type.String({ format: 'user-id', minLength: 1, maxLength: MAX_USER_ID_BYTES })
