/**
 * Everything a run creates (processes, vhost, database, proxies) registers its undo
 * here. Undo runs in reverse order on normal completion, on failure and on Ctrl-C,
 * so a run never leaves a vhost, a database or a process behind. A second Ctrl-C
 * skips the graceful steps but still kills the children.
 */
type Undo = { what: string, run: () => Promise<void> | void }

const stack: Undo[] = []
/** Synchronous last resort for `process.on('exit')`: pids to SIGKILL. */
const livePids = new Set<number>()
let running: Promise<void> | undefined

export function onCleanup (what: string, run: () => Promise<void> | void): void {
  stack.push({ what, run })
}

export function trackPid (pid: number): void { livePids.add(pid) }
export function untrackPid (pid: number): void { livePids.delete(pid) }

/** Runs every registered undo once, newest first; errors are reported, not thrown. */
export function cleanupAll (): Promise<void> {
  running ??= (async () => {
    while (stack.length > 0) {
      const undo = stack.pop()!
      try {
        await undo.run()
      } catch (err) {
        process.stderr.write(`cleanup: ${undo.what} failed: ${(err as Error).message}\n`)
      }
    }
  })()
  return running
}

function killAll (): void {
  for (const pid of livePids) {
    // Children run in their own process group (detached), so kill the group.
    try { process.kill(-pid, 'SIGKILL') } catch { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
  }
  livePids.clear()
}

let signals = 0
export function installSignalHandlers (): void {
  const onSignal = (signal: NodeJS.Signals) => {
    signals++
    if (signals > 1) {
      process.stderr.write(`\n${signal} again: killing children and exiting without full cleanup\n`)
      killAll()
      process.exit(130)
    }
    process.stderr.write(`\n${signal}: stopping the run and cleaning up (again to force)\n`)
    void cleanupAll().finally(() => process.exit(130))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('exit', killAll)
}
