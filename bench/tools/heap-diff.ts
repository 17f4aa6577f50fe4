/**
 * What grew between two V8 heap snapshots (e.g. a gateway before and after N idle
 * sockets: `npm run bench -- idle --heap-snapshot`): self size and count by node
 * type and constructor or closure name, largest growth first, per unit with --per.
 *
 *   node --max-old-space-size=4096 --import tsx bench/tools/heap-diff.ts BEFORE AFTER [--per 19000] [--top 40]
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

interface Snapshot { snapshot: { meta: { node_fields: string[], node_types: [string[]] } }, nodes: number[], strings: string[] }

function tally (file: string): Map<string, { size: number, count: number }> {
  const s = JSON.parse(readFileSync(file, 'utf8')) as Snapshot
  const fields = s.snapshot.meta.node_fields
  const types = s.snapshot.meta.node_types[0]
  const width = fields.length
  const fType = fields.indexOf('type')
  const fName = fields.indexOf('name')
  const fSize = fields.indexOf('self_size')
  const out = new Map<string, { size: number, count: number }>()
  for (let i = 0; i < s.nodes.length; i += width) {
    const type = types[s.nodes[i + fType]!] ?? '?'
    // Objects and closures by name; strings, code, arrays and the rest by type only.
    const name = type === 'object' || type === 'closure' ? s.strings[s.nodes[i + fName]!] ?? '?' : ''
    const key = name === '' ? type : `${type} ${name}`
    const t = out.get(key) ?? { size: 0, count: 0 }
    t.size += s.nodes[i + fSize]!
    t.count++
    out.set(key, t)
  }
  return out
}

const { positionals, values } = parseArgs({ allowPositionals: true, options: { per: { type: 'string', default: '1' }, top: { type: 'string', default: '40' } } })
const [a, b] = positionals
if (a === undefined || b === undefined) throw new Error('usage: heap-diff BEFORE AFTER [--per N] [--top N]')
const before = tally(a)
const after = tally(b)
const per = Number(values.per)
const rows = [...after].map(([k, v]) => ({ k, size: v.size - (before.get(k)?.size ?? 0), count: v.count - (before.get(k)?.count ?? 0) }))
  .sort((x, y) => y.size - x.size)
const total = rows.reduce((t, r) => t + r.size, 0)
process.stdout.write(`growth ${(total / 1024 / 1024).toFixed(1)} MB${per > 1 ? `, ${(total / per).toFixed(0)} B per unit (÷ ${per})` : ''}\n`)
for (const r of rows.slice(0, Number(values.top))) {
  process.stdout.write(`${String(Math.round(r.size / per)).padStart(8)} B ${(r.count / per).toFixed(2).padStart(7)} ×  ${r.k}\n`)
}
