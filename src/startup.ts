/**
 * Start-up checks with one-line answers. After start, connections retry forever;
 * before it, a missing broker or database is almost always a setting, and the user
 * needs one line that says what is wrong and what to do, not a stack trace.
 */
import { createServer } from 'node:net'
import type { Connection } from 'rabbitmq-client'
import { isOpen } from './broker/socket.js'
import { redactUrl } from './log.js'

export class StartupError extends Error {
  readonly code: string
  constructor (code: `APP_${string}`, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'StartupError'
    this.code = code
  }
}

const codeOf = (err: unknown): string => {
  for (let e: unknown = err, i = 0; e !== undefined && e !== null && i < 4; i++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string' && code !== '') return code
    e = (e as { cause?: unknown }).cause
  }
  return ''
}

export function describeBrokerFailure (err: unknown, url: string): string {
  const where = redactUrl(url)
  const code = codeOf(err)
  const vhost = decodeURIComponent(new URL(url).pathname.slice(1)) || '/'
  switch (code) {
    case 'ACCESS_REFUSED':
      return `RabbitMQ refused the user name or password of AMQP_URL (${where}): check the credentials`
    case 'NOT_ALLOWED':
      return `RabbitMQ refused access to vhost "${vhost}" (${where}): create the vhost or grant the user permissions on it`
    case 'ECONNREFUSED':
      return `cannot reach RabbitMQ at ${where} (connection refused): is it running? set AMQP_URL to your broker`
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `cannot resolve the RabbitMQ host of AMQP_URL (${where}): check the host name`
    default:
      return `cannot reach RabbitMQ at ${where} (${code === '' ? 'no answer' : code}): is it running and reachable? set AMQP_URL`
  }
}

/** Resolves once `connection` is up; rejects with a StartupError after `timeoutMs`. */
export function waitForBroker (connection: Connection, url: string, timeoutMs: number): Promise<void> {
  if (isOpen(connection)) return Promise.resolve()
  return new Promise((resolve, reject) => {
    let firstError: unknown
    const onError = (err: unknown) => {
      firstError ??= err
      // Wrong credentials or vhost will not fix themselves: fail now.
      const code = codeOf(err)
      if (code === 'ACCESS_REFUSED' || code === 'NOT_ALLOWED') finish(err)
    }
    const onConnection = () => finish(undefined)
    const timer = setTimeout(() => finish(firstError ?? new Error('timeout')), timeoutMs)
    function finish (err: unknown) {
      clearTimeout(timer)
      connection.off('error', onError)
      connection.off('connection', onConnection)
      if (err === undefined) resolve()
      else reject(new StartupError('APP_BROKER_UNREACHABLE', describeBrokerFailure(err, url), { cause: err }))
    }
    connection.on('error', onError)
    connection.on('connection', onConnection)
  })
}

export function describeDatabaseFailure (err: unknown, url: string): string {
  const where = url.includes('://') ? redactUrl(url) : url
  const code = codeOf(err)
  switch (code) {
    case '28P01':
    case '28000':
      return `PostgreSQL refused the user or password of DATABASE_URL (${where}): check the credentials`
    case '3D000':
      return `the database named in DATABASE_URL does not exist (${where}): create it, e.g. createdb`
    case 'ECONNREFUSED':
      return `cannot reach PostgreSQL at ${where} (connection refused): is it running? set DATABASE_URL`
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `cannot resolve the PostgreSQL host of DATABASE_URL (${where}): check the host name`
    default:
      return `cannot use PostgreSQL at ${where} (${code === '' ? String((err as Error).message ?? err) : code}): is it running and reachable? set DATABASE_URL`
  }
}

/** Fails with a one-line answer if `port` cannot be bound on `host`. */
export async function checkPortFree (port: number, host: string, setting = 'PORT'): Promise<void> {
  if (port === 0) return
  await new Promise<void>((resolve, reject) => {
    const server = createServer()
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(new StartupError('APP_PORT_IN_USE', err.code === 'EADDRINUSE'
        ? `port ${port} is already in use on ${host}: stop the other process or set ${setting}`
        : `cannot listen on ${host}:${port} (${err.code ?? err.message}): set ${setting}${setting === 'PORT' ? ' or FASTIFY_ADDRESS' : ''}`, { cause: err }))
    })
    server.listen(port, host, () => server.close(() => resolve()))
  })
}
