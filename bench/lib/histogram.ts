/**
 * Latency histograms (HdrHistogram, microseconds, 3 significant digits). Load
 * processes record locally and ship the compressed encoding; the coordinator adds
 * them up, so percentiles are exact over all processes (not averages of percentiles).
 */
import * as hdr from 'hdr-histogram-js'

export type Histogram = hdr.Histogram

export const newHistogram = (): Histogram => hdr.build({ bitBucketSize: 32, numberOfSignificantValueDigits: 3, lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, autoResize: true })

export const encodeHistogram = (h: Histogram): string => hdr.encodeIntoCompressedBase64(h)

export function mergeEncoded (encoded: Array<string | undefined>): Histogram {
  const total = newHistogram()
  for (const e of encoded) if (e !== undefined && e !== '') total.add(hdr.decodeFromCompressedBase64(e, 32))
  return total
}

export interface LatencySummary {
  count: number
  p50Ms: number
  p95Ms: number
  p99Ms: number
  maxMs: number
  meanMs: number
}

const ms = (us: number) => Math.round(us / 10) / 100

export function summarize (h: Histogram): LatencySummary {
  if (h.totalCount === 0) return { count: 0, p50Ms: 0, p95Ms: 0, p99Ms: 0, maxMs: 0, meanMs: 0 }
  return {
    count: h.totalCount,
    p50Ms: ms(h.getValueAtPercentile(50)),
    p95Ms: ms(h.getValueAtPercentile(95)),
    p99Ms: ms(h.getValueAtPercentile(99)),
    maxMs: ms(h.maxValue),
    meanMs: ms(h.mean)
  }
}

/** Microseconds on CLOCK_MONOTONIC: one clock for every process on this machine. */
export const nowUs = (): number => Number(process.hrtime.bigint() / 1000n)
