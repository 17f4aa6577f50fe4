/** What every scenario gets from the command line and the run. */
import { join } from 'node:path'
import { ROOT } from './processes.js'

export interface RunContext {
  runId: string
  /** Logs and CPU profiles of this run's processes. */
  logDir: string
  resultsDir: string
  /** Reduced scale and durations: a smoke test of the scenario, not a measurement. */
  quick: boolean
  cpuProfile: boolean
  /** --name value options, as given. */
  opts: Record<string, string | boolean | undefined>
}

export function makeContext (scenario: string, opts: RunContext['opts']): RunContext {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-')
  const runId = `bench_${scenario}_${stamp}_${Math.random().toString(36).slice(2, 6)}`
  const resultsDir = join(ROOT, 'bench', 'results')
  return { runId, logDir: join(resultsDir, 'logs', runId), resultsDir, quick: opts.quick === true, cpuProfile: opts['cpu-prof'] === true, opts }
}

/** A numeric option, with separate defaults for full and quick runs. */
export function num (ctx: RunContext, name: string, full: number, quick = full): number {
  const v = ctx.opts[name]
  if (typeof v === 'string' && v !== '') {
    const n = Number(v)
    if (!Number.isFinite(n)) throw new Error(`--${name} must be a number`)
    return n
  }
  return ctx.quick ? quick : full
}

export function numList (ctx: RunContext, name: string, full: number[], quick = full): number[] {
  const v = ctx.opts[name]
  if (typeof v === 'string' && v !== '') return v.split(',').map((s) => Number(s.trim())).filter((n) => Number.isFinite(n))
  return ctx.quick ? quick : full
}

/** Space-separated flags for `node` itself (e.g. --gateway-node-args="--max-semi-space-size=32"). */
export function nodeArgsOption (ctx: RunContext, name: string): string[] {
  const v = ctx.opts[name]
  return typeof v === 'string' ? v.split(' ').filter((a) => a !== '') : []
}

/** KEY=VALUE,KEY=VALUE → env overrides (e.g. --gateway-env BIND_CHANNELS=64). */
export function envOption (ctx: RunContext, name: string): Record<string, string> {
  const v = ctx.opts[name]
  const env: Record<string, string> = {}
  if (typeof v !== 'string' || v === '') return env
  for (const pair of v.split(',')) {
    const i = pair.indexOf('=')
    if (i > 0) env[pair.slice(0, i).trim()] = pair.slice(i + 1).trim()
  }
  return env
}
