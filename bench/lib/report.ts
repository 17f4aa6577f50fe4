/** The printed table, the targets verdict, and the JSON file of a run. */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { UsageReport } from './usage.js'

export type Cell = string | number | boolean | null | undefined
export type Row = Record<string, Cell>

export interface TargetCheck {
  name: string
  target: string
  measured: string
  /** null when the run could not decide (e.g. a quick run at reduced scale). */
  met: boolean | null
}

export interface ScenarioResult {
  scenario: string
  title: string
  rows: Row[]
  targets: TargetCheck[]
  usage: Array<{ phase: string } & UsageReport>
  notes: string[]
  details?: unknown
}

const fmt = (v: Cell): string => {
  if (v === undefined || v === null) return ''
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) return String(v)
    if (Number.isInteger(v)) return v.toLocaleString('en-US')
    return Math.abs(v) >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(2)
  }
  return String(v)
}

export function table (rows: Row[]): string {
  if (rows.length === 0) return '(no rows)\n'
  const cols: string[] = []
  for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k)
  const cells = rows.map((r) => cols.map((c) => fmt(r[c])))
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)))
  const line = (vals: string[]) => '| ' + vals.map((v, i) => v.padEnd(widths[i]!)).join(' | ') + ' |'
  return [line(cols), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...cells.map(line)].join('\n') + '\n'
}

/** One row per phase, one column per process: "cores (RSS MB)". */
export function usageRows (usage: ScenarioResult['usage']): Row[] {
  return usage.map((u) => {
    const row: Row = { phase: u.phase, 's': Math.round(u.windowSeconds * 10) / 10 }
    for (const g of u.groups) row[g.name] = `${g.cores.toFixed(2)} (${Math.round(g.rssMb)})`
    row.machine = u.machineBusyCores.toFixed(2)
    row.loadavg = u.loadAverage
    return row
  })
}

export function printResult (r: ScenarioResult): void {
  const out = process.stdout
  out.write(`\n== ${r.title} ==\n`)
  out.write(table(r.rows))
  if (r.usage.length > 0) {
    out.write('\nCPU in cores (RSS MB) per process over each phase; machine = busy cores of 2, everything included; services count other users of them too:\n')
    out.write(table(usageRows(r.usage)))
  }
  if (r.targets.length > 0) {
    out.write('\nTargets:\n')
    for (const t of r.targets) out.write(`  [${t.met === null ? '  ?  ' : t.met ? ' MET ' : 'MISSED'}] ${t.name}: target ${t.target}, measured ${t.measured}\n`)
  }
  for (const n of r.notes) out.write(`  note: ${n}\n`)
}

export function writeJson (dir: string, name: string, data: unknown): string {
  mkdirSync(dir, { recursive: true })
  const file = join(dir, name)
  writeFileSync(file, JSON.stringify(data, null, 2) + '\n')
  return file
}

/** One line, rewritten in place on a terminal, a plain line every few seconds otherwise. */
export function progress (text: string): void {
  if (process.stdout.isTTY) process.stdout.write(`\r\x1b[2K${text}`)
  else process.stdout.write(`${text}\n`)
}

export function progressEnd (): void {
  if (process.stdout.isTTY) process.stdout.write('\n')
}
