/**
 * idle: as many idle sockets as one gateway process holds (its open-files limit is
 * 20,000), RSS per socket, and the CPU of heartbeats while nothing else happens.
 */
import { readdirSync } from 'node:fs'
import { LoadPool } from '../load/pool.js'
import type { RunContext } from '../lib/context.js'
import { envOption, num } from '../lib/context.js'
import { httpOk, sleep, waitUntil } from '../lib/processes.js'
import { readMetric } from '../lib/prom.js'
import { progress, progressEnd, type ScenarioResult } from '../lib/report.js'
import { createSystem, usageGroups } from '../lib/system.js'
import { readProc, UsageWindow } from '../lib/usage.js'

const openFiles = (pid: number) => { try { return readdirSync(`/proc/${pid}/fd`).length } catch { return 0 } }

export async function idle (ctx: RunContext): Promise<ScenarioResult> {
  const sockets = num(ctx, 'sockets', 19_000, 1000)
  const idleMs = num(ctx, 'idle', 60, 10) * 1000
  // --heap-snapshot: the gateway writes a heap snapshot before and after the sockets;
  // bench/tools/heap-diff.ts then says what one socket costs, by constructor.
  const snapshots = ctx.opts['heap-snapshot'] === true
  const sys = await createSystem(ctx, { gateways: 1, gatewayEnv: envOption(ctx, 'gateway-env'), workerEnv: envOption(ctx, 'worker-env'), heapSnapshots: snapshots })
  const gw = sys.gateways[0]!
  // Several load processes: each socket.io-client socket costs ~20 KB and one file descriptor.
  const pool = LoadPool.start(num(ctx, 'agents', Math.max(1, Math.ceil(sockets / 7000))))
  await sleep(2000)
  const heap = () => readMetric(`${gw.url}/metrics`, 'chat_gateway_nodejs_heap_size_used_bytes')
  const base = { rssKb: readProc(gw.pid)?.rssKb ?? 0, heap: await heap(), fds: openFiles(gw.pid) }
  const snapshot = async () => {
    if (!snapshots) return
    const count = () => readdirSync(ctx.logDir).filter((f) => f.endsWith('.heapsnapshot')).length
    const before = count()
    process.kill(gw.pid, 'SIGWINCH')
    // The gateway writes it synchronously; the file appears at once and grows until done.
    for (let i = 0; i < 240 && count() <= before; i++) await sleep(250)
    await waitUntil(async () => httpOk(`${gw.url}/health`, 1000), 120_000, 'gateway after heap snapshot', 500)
  }
  await snapshot()

  pool.add(Array.from({ length: sockets }, (_, i) => ({ userId: `idle${i}`, url: gw.url })))
  const connecting = pool.connect({ concurrency: 400, timeoutMs: 60_000 })
  let done = false
  void connecting.finally(() => { done = true })
  while (!done) {
    await sleep(1000)
    const s = await pool.stats()
    progress(`connecting: ready ${s.ready}/${sockets}, failed ${s.connectFailed}, gateway RSS ${Math.round((readProc(gw.pid)?.rssKb ?? 0) / 1024)} MB, fds ${openFiles(gw.pid)}`)
  }
  progressEnd()
  const conn = await connecting
  const afterConnect = await pool.stats()
  await sleep(5000)

  const usage = new UsageWindow(usageGroups({ gateways: [gw], worker: sys.worker, loadPids: pool.pids })).start()
  const t0 = performance.now()
  // RSS once a second over the idle window: one reading lands anywhere in V8's GC cycle
  // (12–17 KB per socket in five runs of the same code), so the range is what is reported.
  const idleRssKb: number[] = []
  while (performance.now() - t0 < idleMs) {
    await sleep(1000)
    const rss = readProc(gw.pid)?.rssKb ?? 0
    idleRssKb.push(rss)
    progress(`idle: ${((performance.now() - t0) / 1000).toFixed(0)}/${idleMs / 1000} s, gateway RSS ${Math.round(rss / 1024)} MB`)
  }
  progressEnd()
  const idleUsage = usage.stop()
  await snapshot()
  const end = await pool.stats()
  const held = end.connected
  const rssKb = readProc(gw.pid)?.rssKb ?? 0
  const heapEnd = await heap()
  const perSocketKb = held > 0 ? (rssKb - base.rssKb) / held : 0
  const perSocket = (kb: number) => held > 0 ? Math.round((kb - base.rssKb) / held * 10) / 10 : 0
  const idleSorted = [...idleRssKb].sort((a, b) => a - b)
  const idleKb = { min: perSocket(idleSorted[0] ?? 0), median: perSocket(idleSorted[Math.floor(idleSorted.length / 2)] ?? 0), max: perSocket(idleSorted.at(-1) ?? 0) }
  const heapPerSocketKb = held > 0 ? (heapEnd - base.heap) / 1024 / held : 0
  const gwUsage = idleUsage.groups.find((g) => g.name === gw.name)!
  const loadUsage = idleUsage.groups.find((g) => g.name === 'load')!
  await pool.disconnect()

  return {
    scenario: 'idle',
    title: `idle: ${sockets} sockets offered to one gateway, idle for ${idleMs / 1000} s`,
    rows: [{
      'sockets held': held,
      ready: afterConnect.ready,
      'connect failed': afterConnect.connectFailed,
      'connect s': Math.round(conn.durationMs / 100) / 10,
      'disconnects while idle': end.disconnects - afterConnect.disconnects,
      'gateway fds': openFiles(gw.pid),
      'RSS before MB': Math.round(base.rssKb / 1024),
      'RSS after MB': Math.round(rssKb / 1024),
      'RSS KB/socket': Math.round(perSocketKb * 10) / 10,
      'idle RSS KB/socket min/med/max': `${idleKb.min} / ${idleKb.median} / ${idleKb.max}`,
      'heap KB/socket': Math.round(heapPerSocketKb * 10) / 10,
      'heartbeat cores': Math.round(gwUsage.cores * 1000) / 1000,
      'client KB/socket': held > 0 ? Math.round(loadUsage.rssMb * 1024 / held * 10) / 10 : 0
    }],
    targets: [{
      name: 'idle sockets in one gateway process at ≤ 15 KB RSS each',
      target: '≥ 15,000 at ≤ 15 KB',
      measured: `${held} at ${idleKb.max} KB RSS/socket at most over the idle window (median ${idleKb.median}, least ${idleKb.min}; ${perSocketKb.toFixed(1)} at the end, ${heapPerSocketKb.toFixed(1)} KB heap), heartbeat CPU ${(gwUsage.cores * 100).toFixed(1)} % of a core`,
      met: ctx.quick ? null : held >= 15_000 && idleKb.max <= 15
    }],
    usage: [{ phase: 'idle', ...idleUsage }],
    notes: [
      'RSS per socket = (gateway RSS with the sockets − RSS before any socket) / sockets held, read once a second over the idle window (the target is judged on the highest reading); pingInterval 25 s',
      `the per-process open-files limit is 20,000, so one gateway cannot hold more than about 19,9xx sockets`
    ],
    details: { base, rssKb, idleRssKb, heapEnd, afterConnect, end, connectMs: conn.durationMs }
  }
}
