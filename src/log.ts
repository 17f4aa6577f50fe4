/** The logging surface plain modules need; fastify's logger and pino both satisfy it. */
import { pino, type BaseLogger } from 'pino'

export type Logger = Pick<BaseLogger, 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'>

export function createLogger (name: string, level: string): Logger {
  return pino({ name, level })
}

export const silentLogger: Logger = pino({ level: 'silent' })

/** Redacts the password of an AMQP or PostgreSQL URL for logs and error messages. */
export function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return '(unparseable URL)'
  }
}
