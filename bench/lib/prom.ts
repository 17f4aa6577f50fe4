/** Reading a counter or gauge from a Prometheus text endpoint (ours: /metrics). */
export async function fetchMetrics (url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) })
  return await res.text()
}

/**
 * Sum of every sample of `name` whose labels include all of `match` (label order and
 * default labels do not matter).
 */
export function metricValue (text: string, name: string, match: Record<string, string> = {}): number {
  let sum = 0
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue
    const rest = line.slice(name.length)
    if (rest[0] !== '{' && rest[0] !== ' ') continue
    const labels = rest[0] === '{' ? rest.slice(1, rest.indexOf('}')) : ''
    if (!Object.entries(match).every(([k, v]) => labels.includes(`${k}="${v}"`))) continue
    const value = Number(line.slice(line.lastIndexOf(' ') + 1))
    if (Number.isFinite(value)) sum += value
  }
  return sum
}

export async function readMetric (url: string, name: string, match: Record<string, string> = {}): Promise<number> {
  return metricValue(await fetchMetrics(url), name, match)
}
