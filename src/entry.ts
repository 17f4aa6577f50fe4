/** Process-level helpers shared by the entrypoints (never imported by library code). */
import { ConfigError, loadConfig, loadDotEnv, type Config, type Role } from './config.js'

/** Loads the configuration or exits with one line naming the bad setting. */
export function configOrExit (role: Role): Config {
  try {
    loadDotEnv()
    return loadConfig(role)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`config error: ${err.message}\n`)
      process.exit(78) // EX_CONFIG
    }
    throw err
  }
}

/** Prints one line and exits non-zero; for start-up failures a user must act on. */
export function fatal (message: string, code = 1): never {
  process.stderr.write(`${message}\n`)
  process.exit(code)
}
