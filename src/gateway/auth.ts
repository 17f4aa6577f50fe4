/**
 * Handshake authentication: an HS256 JWT in `auth.token` whose `sub` is the user id.
 * `alg: none`, other algorithms, bad signatures, expired or not-yet-valid tokens and
 * a missing or malformed `sub` are all refused the same way: UNAUTHORIZED.
 */
import { createVerifier } from 'fast-jwt'
import type { Config } from '../config.js'
import { isUserId } from '../contracts/ids.js'
import { ClientError } from '../errors.js'

export interface Identity {
  userId: string
  /** Expiry in seconds since epoch, if the token has one. */
  exp?: number
}

export type TokenVerifier = (token: unknown) => Identity

export function createTokenVerifier (config: Pick<Config, 'JWT_SECRET' | 'JWT_ISSUER' | 'JWT_AUDIENCE'>): TokenVerifier {
  const verify = createVerifier({
    key: config.JWT_SECRET,
    algorithms: ['HS256'],
    // fast-jwt checks iss/aud only when the token has them: require them when configured.
    requiredClaims: ['sub', ...(config.JWT_ISSUER !== '' ? ['iss'] : []), ...(config.JWT_AUDIENCE !== '' ? ['aud'] : [])],
    clockTolerance: 5,
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
    return { userId: claims.sub, ...(typeof claims.exp === 'number' ? { exp: claims.exp } : {}) }
  }
}
