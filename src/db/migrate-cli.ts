/** `npm run db:migrate`: applies migrations/ to DATABASE_URL and exits. */
import { configOrExit, fatal } from '../entry.js'
import { redactUrl } from '../log.js'
import { runMigrations } from './migrate.js'

const config = configOrExit('migrate')
try {
  await runMigrations(config.DATABASE_URL)
  process.stdout.write(`migrations applied to ${redactUrl(config.DATABASE_URL)}\n`)
} catch (err) {
  const e = err as { code?: string, message?: string }
  fatal(`db:migrate failed on ${redactUrl(config.DATABASE_URL)}: ${e.code ?? ''} ${e.message ?? String(err)}`.replace(/\s+/g, ' '))
}
