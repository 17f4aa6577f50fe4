/** `npm run db:migrate`: applies migrations/ to DATABASE_URL (or the embedded database in DATA_DIR) and exits. */
import { configOrExit, fatal } from '../entry.js'
import { redactUrl } from '../log.js'
import { describeDatabaseFailure } from '../startup.js'
import { openEmbeddedDatabase } from './client.js'
import { runMigrations } from './migrate.js'

const config = configOrExit('migrate')
if (config.DATABASE_URL === '') {
  try {
    const db = await openEmbeddedDatabase(config.DATA_DIR)
    await db.close()
    process.stdout.write(`migrations applied to the embedded database in ${config.DATA_DIR}\n`)
  } catch (err) {
    fatal(`db:migrate failed on the embedded database in ${config.DATA_DIR}: ${(err as Error).message}; is a worker using it?`)
  }
} else {
  try {
    await runMigrations(config.DATABASE_URL)
    process.stdout.write(`migrations applied to ${redactUrl(config.DATABASE_URL)}\n`)
  } catch (err) {
    // drizzle wraps the driver's error ("Failed query: CREATE SCHEMA …"); the cause says what is wrong.
    fatal(`db:migrate failed: ${describeDatabaseFailure(err, config.DATABASE_URL)}`.replace(/\s+/g, ' '))
  }
}
