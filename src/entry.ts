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

/**
 * A process started with an IPC channel (by `npm run cluster`) stops gracefully, as on
 * SIGTERM, when its parent goes away without stopping it (SIGKILL, OOM): the children
 * run in their own process groups and would otherwise hold their ports and queues.
 */
export function stopWithParent (): void {
  if (process.channel === undefined || process.channel === null) return
  // Already stopping (the parent sent SIGTERM, then died): a second signal would cut the
  // graceful drain short. These listeners only take note; the process's own handle the signal.
  let signalled = false
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => { signalled = true })
  process.once('disconnect', () => { if (!signalled) process.kill(process.pid, 'SIGTERM') })
  // The channel must not keep a process alive that is done.
  process.channel.unref()
}
