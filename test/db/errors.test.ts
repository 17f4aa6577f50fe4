/**
 * Which database errors hold the work (an outage: retry, never dead-letter) and which
 * isolate one message. A TLS or socket failure classed as a refusal dead-letters every
 * good message of a batch: test/worker/sends.test.ts shows it end to end.
 */
import t from 'tap'
import { isTransientDbError } from '../../src/db/errors.js'

const nodeError = (code: string) => Object.assign(new Error(code), { code })
const serverError = (code: string) => Object.assign(new Error(code), { code, severity: 'ERROR' })

t.test('socket, TLS and certificate failures are outages', async (t) => {
  for (const code of ['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'CERT_HAS_EXPIRED', 'ERR_TLS_CERT_ALTNAME_INVALID',
    'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'ERR_SSL_WRONG_VERSION_NUMBER', 'ENETDOWN', 'EADDRNOTAVAIL', 'ECONNABORTED', 'ECONNREFUSED',
    'EAI_AGAIN', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED']) {
    t.ok(isTransientDbError(nodeError(code)), `${code} is transient`)
  }
  t.ok(isTransientDbError(new Error('query failed', { cause: nodeError('CERT_HAS_EXPIRED') })), 'also as the cause of a wrapped error')
})

t.test('a server\'s refusal of one message stays a refusal; so do driver errors about the query', async (t) => {
  for (const code of ['23514', '23505', '22P02', 'P0001']) t.notOk(isTransientDbError(serverError(code)), `${code} from the server isolates the message`)
  for (const code of ['08006', '57014', '55P03', '42P01']) t.ok(isTransientDbError(serverError(code)), `${code} from the server is an outage`)
  for (const code of ['MAX_PARAMETERS_EXCEEDED', 'UNDEFINED_VALUE', 'ERR_INVALID_ARG_TYPE']) t.notOk(isTransientDbError(nodeError(code)), `${code} is not an outage`)
})
