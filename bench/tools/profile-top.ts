/**
 * Summarizes a V8 .cpuprofile (from --cpu-prof): the functions with the most self
 * time, and the packages/files they live in. Used to say where a process spends its CPU.
 *
 *   node --import tsx bench/tools/profile-top.ts FILE.cpuprofile [--top 25] [--timeline] [--window FROM,TO]
 *
 * --timeline prints the busy share of every second, to find a load phase; --window
 * keeps only the samples between FROM and TO seconds after the profile started.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

interface Node { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, hitCount?: number, children?: number[] }
interface Profile { nodes: Node[], startTime: number, endTime: number, samples: number[], timeDeltas: number[] }

const { positionals, values } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' }, timeline: { type: 'boolean', default: false }, window: { type: 'string' } } })
const top = Number(values.top)
const [fromS, toS] = values.window === undefined ? [0, Infinity] : values.window.split(',').map(Number) as [number, number]
for (const file of positionals) {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile
  const byId = new Map(p.nodes.map((n) => [n.id, n]))
  const idleIds = new Set(p.nodes.filter((n) => n.callFrame.functionName === '(idle)').map((n) => n.id))
  const selfUs = new Map<number, number>()
  const perSecond: Array<{ busy: number, all: number }> = []
  let at = 0
  p.samples.forEach((id, i) => {
    const dt = p.timeDeltas[i] ?? 0
    at += dt
    const second = Math.floor(at / 1e6)
    const slot = (perSecond[second] ??= { busy: 0, all: 0 })
    slot.all += dt
    if (!idleIds.has(id)) slot.busy += dt
    if (at / 1e6 >= fromS && at / 1e6 < toS) selfUs.set(id, (selfUs.get(id) ?? 0) + dt)
  })
  if (values.timeline) {
    process.stdout.write(`\n${file}\n  busy % per second since the profile started:\n`)
    perSecond.forEach((s, i) => process.stdout.write(`    ${String(i).padStart(4)} s ${(100 * s.busy / Math.max(1, s.all)).toFixed(0).padStart(3)} %\n`))
  }
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0)
  const busy = total - [...idleIds].reduce((a, id) => a + (selfUs.get(id) ?? 0), 0)
  const fn = new Map<string, number>()
  const pkg = new Map<string, number>()
  for (const [id, us] of selfUs) {
    const n = byId.get(id)!
    if (idleIds.has(id)) continue
    const url = n.callFrame.url.replace(/^file:\/\//, '')
    const where = url === '' ? '(native)' : (/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1] ?? url.replace(/.*\/(dist|src|bench)\//, '$1/'))
    const key = `${n.callFrame.functionName || '(anonymous)'}  ${where}${url === '' ? '' : `:${n.callFrame.lineNumber + 1}`}`
    fn.set(key, (fn.get(key) ?? 0) + us)
    pkg.set(where, (pkg.get(where) ?? 0) + us)
  }
  const pct = (us: number) => `${(100 * us / busy).toFixed(1).padStart(5)} %`
  process.stdout.write(`\n${file}\n  wall ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s${values.window === undefined ? '' : `, window ${fromS}–${toS} s`}, busy ${(busy / 1e6).toFixed(1)} s (${(100 * busy / total).toFixed(0)} % of samples)\n  by package or file (self time, % of busy):\n`)
  for (const [k, us] of [...pkg].sort((a, b) => b[1] - a[1]).slice(0, 15)) process.stdout.write(`    ${pct(us)}  ${k}\n`)
  process.stdout.write('  top functions (self time):\n')
  for (const [k, us] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`    ${pct(us)}  ${k}\n`)
}
