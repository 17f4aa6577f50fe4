/**
 * Starting gateways and workers for tests: in this process (fast, inspectable) or as
 * real separate processes from dist/ (what users run).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { buildApp } from '../../src/app.js'
import { loadConfig, type Config } from '../../src/config.js'
import { silentLogger } from '../../src/log.js'
import { startWorker, type Worker } from '../../src/worker/worker.js'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const JWT_SECRET = 'test-secret-0123456789abcdef'

export interface Env { amqpUrl: string, databaseUrl: string, prefix?: string }

/** Configuration for a test gateway or worker, through the same loader production uses. */
export function testConfig (role: 'gateway' | 'worker', env: Env, extra: Record<string, string> = {}): Config {
  return loadConfig(role, {
    NODE_ENV: 'test',
    LOG_LEVEL: 'warn',
    AMQP_URL: env.amqpUrl,
    DATABASE_URL: env.databaseUrl,
    BROKER_PREFIX: env.prefix ?? 'chat',
    JWT_SECRET,
    UNBIND_GRACE_MS: '0',
    AMQP_HEARTBEAT_S: '5',
    DRAIN_WINDOW_MS: '0',
    WORKER_PORT: '0',
    ...extra
  })
}

export async function startTestGateway (t: Test, env: Env, extra: Record<string, string> = {}): Promise<{ app: FastifyInstance, url: string, config: Config }> {
  const config = testConfig('gateway', env, extra)
  const app = await buildApp(config, { logger: false, defaultMetrics: false })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  const url = `http://127.0.0.1:${address.port}`
  await waitUntil(() => app.gatewayReady(), 15_000, 'gateway ready')
  return { app, url, config }
}

export async function startTestWorker (t: Test, env: Env, extra: Record<string, string> = {}): Promise<Worker> {
  const worker = startWorker({ config: testConfig('worker', env, extra), log: silentLogger, defaultMetrics: false })
  t.teardown(() => worker.close())
  await waitUntil(() => worker.status().ready, 15_000, 'worker ready')
  return worker
}

export async function waitUntil (check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  server.close()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

export interface Proc { child: ChildProcess, output: () => string, exited: Promise<number | null> }

/** Runs a built entrypoint (dist/) as a separate process; killed at teardown. */
export function spawnProcess (t: Test, command: string, args: string[], env: Record<string, string>): Proc {
  const child = spawn(command, args, { cwd: ROOT, env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout?.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { out += d.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
  })
  return { child, output: () => out, exited }
}

function baseEnv (env: Env, extra: Record<string, string>): Record<string, string> {
  return {
    NODE_ENV: 'test',
    LOG_LEVEL: 'warn',
    AMQP_URL: env.amqpUrl,
    DATABASE_URL: env.databaseUrl,
    BROKER_PREFIX: env.prefix ?? 'chat',
    JWT_SECRET,
    UNBIND_GRACE_MS: '0',
    AMQP_HEARTBEAT_S: '5',
    DRAIN_WINDOW_MS: '0',
    ...extra
  }
}

/** A gateway started exactly as `npm start` does: the fastify CLI on the compiled app. */
export async function spawnGateway (t: Test, env: Env, extra: Record<string, string> = {}): Promise<Proc & { url: string, port: number }> {
  const port = await freePort()
  const proc = spawnProcess(t, process.execPath, [`${ROOT}/node_modules/fastify-cli/cli.js`, 'start', '-l', 'warn', '-a', '127.0.0.1', '-o', 'dist/src/app.js'], { FASTIFY_CLOSE_GRACE_DELAY: '15000', ...baseEnv(env, extra), PORT: String(port) })
  const url = `http://127.0.0.1:${port}`
  await waitUntil(async () => {
    if (proc.child.exitCode !== null) throw new Error(`gateway exited: ${proc.output()}`)
    try { return (await fetch(`${url}/ready`)).status === 200 } catch { return false }
  }, 45_000, 'spawned gateway ready')
  return { ...proc, url, port }
}

/** A worker started exactly as `npm run worker` does. */
export async function spawnWorker (t: Test, env: Env, extra: Record<string, string> = {}): Promise<Proc & { statusUrl: string }> {
  const port = await freePort()
  const proc = spawnProcess(t, process.execPath, ['dist/src/worker/main.js'], { ...baseEnv(env, extra), WORKER_PORT: String(port) })
  const statusUrl = `http://127.0.0.1:${port}`
  await waitUntil(async () => {
    if (proc.child.exitCode !== null) throw new Error(`worker exited: ${proc.output()}`)
    try { return (await fetch(`${statusUrl}/ready`)).status === 200 } catch { return false }
  }, 45_000, 'spawned worker ready') // an embedded database starts slowly on a busy machine
  return { ...proc, statusUrl }
}
