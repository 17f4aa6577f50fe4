/**
 * The benchmark harness: `npm run bench -- <scenario> [--quick] [--name value …]`.
 * Starts the system as real processes on the local RabbitMQ and PostgreSQL (in a
 * vhost and a database of the run's own), drives it from load processes, prints a
 * table and writes bench/results/<scenario>-<time>.json. Everything it creates is
 * removed at the end, on failure and on Ctrl-C. See docs/BENCHMARKS.md.
 */
import { execFileSync } from 'node:child_process'
import { cpus, totalmem, release } from 'node:os'
import { cleanupAll, installSignalHandlers } from './lib/cleanup.js'
import { makeContext, type RunContext } from './lib/context.js'
import { printResult, writeJson, type ScenarioResult } from './lib/report.js'
import { serviceVersions, useBroker } from './lib/services.js'
import { loadAverage } from './lib/usage.js'
import { getSystemRoot, setSystemRoot, sleep } from './lib/processes.js'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { dm } from './scenarios/dm.js'
import { group } from './scenarios/group.js'
import { idle } from './scenarios/idle.js'
import { peer } from './scenarios/peer.js'
import { storm } from './scenarios/storm.js'
import { worker } from './scenarios/worker.js'

const scenarios: Record<string, (ctx: RunContext) => Promise<ScenarioResult>> = { dm, group, idle, storm, worker, peer }

const USAGE = `usage: npm run bench -- <${Object.keys(scenarios).join('|')}> [--quick] [--cpu-prof] [--option value …]
  --quick          small scale and short phases: a smoke test, not a measurement
  --cpu-prof       run gateways and workers with node --cpu-prof (profiles in the run's log folder)
  --agents N       load processes (default per scenario)
  --gateway-env K=V,K=V   extra gateway environment (e.g. BIND_CHANNELS=64)
  --worker-env K=V,K=V    extra worker environment (e.g. WORKER_BATCH_MAX=1000)
  --system-root DIR       start gateways and workers from DIR (a built checkout, e.g. with a proposed patch)
  --amqp-port P           use the RabbitMQ node on 127.0.0.1:P (5672) …
  --rabbitmqctl CMD       … managed by CMD, a command that runs that node's rabbitmqctl (rabbitmqctl)
  --wait-quiet [LOAD]     first wait (up to 10 min) until the 1-minute load average is below LOAD (default 1.0):
                          the machine is shared, and other work on it skews every figure
Scenario options are listed in docs/BENCHMARKS.md.`

/** `--flag` (quick, cpu-prof, help), `--name value` and `--name=value`; the first bare word is the scenario. */
function parseArgs (argv: string[]): { positionals: string[], values: RunContext['opts'] } {
  const flags = new Set(['quick', 'cpu-prof', 'help', 'heap-snapshot'])
  const positionals: string[] = []
  const values: RunContext['opts'] = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (!a.startsWith('--')) { positionals.push(a); continue }
    const eq = a.indexOf('=')
    if (eq > 0) { values[a.slice(2, eq)] = a.slice(eq + 1); continue }
    const key = a.slice(2)
    const next = argv[i + 1]
    if (flags.has(key) || next === undefined || next.startsWith('--')) values[key] = true
    else { values[key] = next; i++ }
  }
  return { positionals, values }
}

const { positionals, values } = parseArgs(process.argv.slice(2))
const name = positionals[0]
const scenario = name === undefined ? undefined : scenarios[name]
if (scenario === undefined || values.help === true) {
  process.stderr.write(`${USAGE}\n`)
  process.exit(name === undefined || values.help === true ? 0 : 2)
}

installSignalHandlers()
const ctx = makeContext(name!, values)
if (typeof values['system-root'] === 'string') setSystemRoot(resolve(values['system-root']))
if (typeof values['amqp-port'] === 'string') useBroker({ port: Number(values['amqp-port']) })
if (typeof values.rabbitmqctl === 'string') useBroker({ rabbitmqctl: values.rabbitmqctl })
if (values['wait-quiet'] !== undefined) {
  const limit = typeof values['wait-quiet'] === 'string' ? Number(values['wait-quiet']) : 1.0
  const load1 = () => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0])
  const until = Date.now() + 600_000
  while (load1() >= limit && Date.now() < until) {
    process.stdout.write(`\rwaiting for a quiet machine: load average ${load1().toFixed(2)} ≥ ${limit}   `)
    await sleep(5000)
  }
  process.stdout.write('\n')
}
const started = new Date()
const machine = {
  nproc: cpus().length,
  cpu: cpus()[0]?.model ?? 'unknown',
  memoryGiB: Math.round(totalmem() / 2 ** 30 * 10) / 10,
  kernel: release(),
  openFilesLimit: (() => { try { return execFileSync('sh', ['-c', 'ulimit -n']).toString().trim() } catch { return 'unknown' } })(),
  loadAverageAtStart: loadAverage(),
  ...(await serviceVersions())
}
process.stdout.write(`bench ${name}${ctx.quick ? ' (quick)' : ''}: run ${ctx.runId}; load average ${machine.loadAverageAtStart}; logs in ${ctx.logDir}\n`)

let code = 0
try {
  const result = await scenario!(ctx)
  const finished = new Date()
  printResult(result)
  const file = writeJson(ctx.resultsDir, `${name}${ctx.quick ? '-quick' : ''}-${ctx.runId.split('_')[2]}.json`, {
    ...result,
    runId: ctx.runId,
    command: `npm run bench -- ${process.argv.slice(2).join(' ')}`,
    quick: ctx.quick,
    systemRoot: getSystemRoot(),
    startedAt: started.toISOString(),
    finishedAt: finished.toISOString(),
    loadAverageAtEnd: loadAverage(),
    machine
  })
  process.stdout.write(`\nload average at end ${loadAverage()}; results written to ${file}\n`)
} catch (err) {
  process.stderr.write(`\nbench ${name} failed: ${(err as Error).stack ?? String(err)}\nlogs: ${ctx.logDir}\n`)
  code = 1
} finally {
  await cleanupAll()
}
process.exit(code)
