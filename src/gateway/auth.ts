/**
 * Handshake authentication: an HS256 JWT in `auth.token` whose `sub` is the user id and
 * which carries `exp` (a socket lives as long as its token; one without an expiry would
 * never be ended). `alg: none`, other algorithms, bad signatures, expired or
 * not-yet-valid tokens and a missing or malformed `sub` or `exp` are all refused the same
 * way: UNAUTHORIZED.
 */
import { createVerifier } from 'fast-jwt'
import type { Config } from '../config.js'
import { isUserId } from '../contracts/ids.js'
import { ClientError } from '../errors.js'

export interface Identity {
  userId: string
  /** Expiry in seconds since epoch, if the token has one. */
  exp: number
}

/** Issuer clocks ahead of ours by up to this much are accepted (`nbf`, `iat`). fast-jwt counts milliseconds. */
const CLOCK_TOLERANCE_MS = 5000

export type TokenVerifier = (token: unknown) => Identity

export function createTokenVerifier (config: Pick<Config, 'JWT_SECRET' | 'JWT_ISSUER' | 'JWT_AUDIENCE'>): TokenVerifier {
  const verify = createVerifier({
    key: config.JWT_SECRET,
    algorithms: ['HS256'],
    // fast-jwt checks iss/aud only when the token has them: require them when configured.
    requiredClaims: ['sub', 'exp', ...(config.JWT_ISSUER !== '' ? ['iss'] : []), ...(config.JWT_AUDIENCE !== '' ? ['aud'] : [])],
    clockTolerance: CLOCK_TOLERANCE_MS,
    cache: 10_000,
    ...(config.JWT_ISSUER !== '' ? { allowedIss: config.JWT_ISSUER } : {}),
    ...(config.JWT_AUDIENCE !== '' ? { allowedAud: config.JWT_AUDIENCE } : {})
  })
  return (token) => {
    if (typeof token !== 'string' || token.length === 0 || token.length > 8192) throw new ClientError('UNAUTHORIZED', 'missing token')
    let claims: { sub?: unknown, exp?: unknown }
    try {
      claims = verify(token) as { sub?: unknown, exp?: unknown }
    } catch (cause) {
      throw new ClientError('UNAUTHORIZED', 'invalid token', { cause })
    }
    if (typeof claims.sub !== 'string' || !isUserId(claims.sub)) throw new ClientError('UNAUTHORIZED', 'token has no valid sub')
    // No tolerance on this side: the sweep ends a socket at `exp`, so a token accepted
    // past it would be cut at once.
    if (typeof claims.exp !== 'number' || claims.exp * 1000 <= Date.now()) throw new ClientError('UNAUTHORIZED', 'token expired')
    return { userId: claims.sub, exp: claims.exp }
  }
}
