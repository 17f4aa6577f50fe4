/**
 * The system under test as real processes, started the way users start them:
 * gateways through the fastify CLI on dist/, the worker from dist/, peer servers
 * from bench/peer. Each runs in its own process group with its output in a log file
 * (never a pipe the harness must drain), and is stopped at cleanup.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, openSync, closeSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { onCleanup, trackPid, untrackPid } from './cleanup.js'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
/**
 * Where gateways and workers are started from (its dist/ and node_modules/): this
 * checkout unless --system-root names another, e.g. a copy with a proposed patch built.
 */
let systemRoot = ROOT
export function setSystemRoot (dir: string): void { systemRoot = dir }
export function getSystemRoot (): string { return systemRoot }
export const JWT_SECRET = 'bench-secret-0123456789abcdef0123'

export interface Proc {
  name: string
  pid: number
  child: ChildProcess
  /** Base URL of its HTTP endpoint (/ready, /metrics). */
  url: string
  log: string
  exited: Promise<number | null>
  stop: () => Promise<void>
}

export interface ProcessOptions {
  /** Where logs (and CPU profiles) go. */
  logDir: string
  /** node --cpu-prof into logDir/prof. */
  cpuProfile?: boolean
  /** Flags for node itself, for those NODE_OPTIONS refuses (e.g. --optimize-for-size). */
  nodeArgs?: string[]
  /**
   * node --heapsnapshot-signal=SIGWINCH: `kill -WINCH` writes a heap snapshot into
   * logDir. (SIGUSR2 ends a gateway started by the fastify CLI; SIGWINCH does not.)
   */
  heapSnapshots?: boolean
}

export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  server.close()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export async function waitUntil (check: () => boolean | Promise<boolean>, timeoutMs: number, what: string, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(everyMs)
  }
}

export async function httpOk (url: string, timeoutMs = 2000): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) })
    await res.arrayBuffer()
    return res.status === 200
  } catch {
    return false
  }
}

function start (name: string, args: string[], env: Record<string, string>, url: string, opts: ProcessOptions, cwd = systemRoot): Proc {
  mkdirSync(opts.logDir, { recursive: true })
  const log = join(opts.logDir, `${name}.log`)
  const fd = openSync(log, 'a')
  const nodeArgs = [...(opts.nodeArgs ?? []), ...(opts.cpuProfile === true ? ['--cpu-prof', '--cpu-prof-dir', join(opts.logDir, 'prof'), '--cpu-prof-name', `${name}.cpuprofile`] : [])]
  if (opts.heapSnapshots === true) nodeArgs.push('--heapsnapshot-signal=SIGWINCH', `--diagnostic-dir=${opts.logDir}`)
  const child = spawn(process.execPath, [...nodeArgs, ...args], {
    cwd,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', fd, fd],
    detached: true
  })
  closeSync(fd)
  if (child.pid === undefined) throw new Error(`could not start ${name}`)
  const pid = child.pid
  trackPid(pid)
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => { untrackPid(pid); resolve(code) }))
  let stopping: Promise<void> | undefined
  const stop = () => {
    stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const forced = setTimeout(() => { try { process.kill(-pid, 'SIGKILL') } catch { /* gone */ } }, 20_000)
      await exited
      clearTimeout(forced)
    })()
    return stopping
  }
  onCleanup(`stop ${name}`, stop)
  return { name, pid, child, url, log, exited, stop }
}

async function waitReady (proc: Proc, path: string, timeoutMs: number): Promise<void> {
  await waitUntil(async () => {
    if (proc.child.exitCode !== null) throw new Error(`${proc.name} exited (${proc.child.exitCode}); see ${proc.log}`)
    return await httpOk(`${proc.url}${path}`)
  }, timeoutMs, `${proc.name} ready`, 100)
}

export interface SystemEnv {
  amqpUrl: string
  databaseUrl: string
  prefix: string
}

/** Gateway defaults for load: the per-socket rate limit raised, logs quiet. */
export function gatewayEnv (sys: SystemEnv, extra: Record<string, string> = {}): Record<string, string> {
  return {
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    AMQP_URL: sys.amqpUrl,
    BROKER_PREFIX: sys.prefix,
    JWT_SECRET,
    SOCKET_RATE_PER_SEC: '100000',
    SOCKET_RATE_BURST: '100000',
    // Stopped by the harness: no drain, and a short grace (a gateway refuses a drain window the grace cannot hold).
    DRAIN_WINDOW_MS: '0',
    FASTIFY_CLOSE_GRACE_DELAY: '5000',
    ...extra
  }
}

export async function startGateway (name: string, sys: SystemEnv, opts: ProcessOptions, extra: Record<string, string> = {}, waitFor = true): Promise<Proc & { port: number }> {
  const port = await freePort()
  const proc = start(name, [`${systemRoot}/node_modules/fastify-cli/cli.js`, 'start', '-l', extra.LOG_LEVEL ?? 'warn', '-a', '127.0.0.1', '-o', 'dist/src/app.js'],
    gatewayEnv(sys, { PORT: String(port), SERVER_ID: name, ...extra }), `http://127.0.0.1:${port}`, opts)
  if (waitFor) await waitReady(proc, '/ready', 30_000)
  return { ...proc, port }
}

export async function startWorker (name: string, sys: SystemEnv, opts: ProcessOptions, extra: Record<string, string> = {}, waitFor = true): Promise<Proc> {
  const port = await freePort()
  const proc = start(name, ['dist/src/worker/main.js'], {
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    AMQP_URL: sys.amqpUrl,
    DATABASE_URL: sys.databaseUrl,
    BROKER_PREFIX: sys.prefix,
    WORKER_PORT: String(port),
    SERVER_ID: name,
    ...extra
  }, `http://127.0.0.1:${port}`, opts)
  if (waitFor) await waitReady(proc, '/ready', 30_000)
  return proc
}

/** A plain Socket.IO server with the Redis adapter (bench/peer/server.ts), run through tsx. */
export async function startPeer (name: string, opts: ProcessOptions, env: Record<string, string>): Promise<Proc & { port: number }> {
  const port = await freePort()
  const proc = start(name, ['--import', 'tsx', 'bench/peer/server.ts'], { PORT: String(port), JWT_SECRET, SERVER_ID: name, ...env }, `http://127.0.0.1:${port}`, opts, ROOT)
  await waitReady(proc, '/ready', 30_000)
  return { ...proc, port }
}
