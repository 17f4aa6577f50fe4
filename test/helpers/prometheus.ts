/**
 * A strict reader of the Prometheus text exposition format (0.0.4), enough to prove
 * that /metrics parses and to read samples. Throws on any malformed line.
 */
export interface Sample { name: string, labels: Record<string, string>, value: number }

// Special values in any case, as Prometheus reads them (Go's ParseFloat): prom-client
// writes NaN as "Nan", which a gauge whose value is unknown shows.
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.eE+-]+|[nN][aA][nN]|[+-][iI][nN][fF])( -?[0-9]+)?$/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y

export function parsePrometheus (text: string): { samples: Sample[], types: Map<string, string> } {
  const samples: Sample[] = []
  const types = new Map<string, string>()
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '') continue
    if (line.startsWith('# HELP ')) continue
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ')
      if (name === undefined || type === undefined || !['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(type)) throw new Error(`line ${i + 1}: bad TYPE: ${line}`)
      types.set(name, type)
      continue
    }
    if (line.startsWith('#')) continue
    const m = SAMPLE.exec(line)
    if (m === null) throw new Error(`line ${i + 1}: not a sample: ${line}`)
    const labels: Record<string, string> = {}
    const body = m[3] ?? ''
    LABEL.lastIndex = 0
    while (LABEL.lastIndex < body.length) {
      const l = LABEL.exec(body)
      if (l === null) throw new Error(`line ${i + 1}: bad labels: ${body}`)
      labels[l[1]!] = l[2]!
    }
    samples.push({ name: m[1]!, labels, value: specialValue(m[4]!) ?? Number(m[4]) })
  }
  return { samples, types }
}

export function sampleValue (samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value
}

function specialValue (text: string): number | undefined {
  const lower = text.toLowerCase()
  return lower === 'nan' ? Number.NaN : lower === '+inf' ? Infinity : lower === '-inf' ? -Infinity : undefined
}
