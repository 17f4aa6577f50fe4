/**
 * storm: N users, each in K of C shared channels, connect at once to one gateway.
 * Then the gateway's broker connections are cut in a TCP proxy of the harness (a
 * network failure, as the gateway sees it): time until /ready is 200 again and the
 * broker holds every binding. Again with added round-trip time in the proxy, as a
 * gateway in a far region would see. The keys outlive the cut on the gateway's route;
 * `expired` keeps the broker unreachable past the route's lease (ROUTE_LEASE_MS, 5 s
 * here unless --gateway-env sets it), so every key is bound again, as on a first start.
 */
import { LoadPool } from '../load/pool.js'
import type { RunContext } from '../lib/context.js'
import { envOption, num } from '../lib/context.js'
import { summarize } from '../lib/histogram.js'
import { sleep } from '../lib/processes.js'
import { readMetric } from '../lib/prom.js'
import { progress, progressEnd, type Row, type ScenarioResult } from '../lib/report.js'
import { countBindings } from '../lib/services.js'
import { createGroups, createSystem, usageGroups } from '../lib/system.js'
import { listenOverflows, UsageWindow } from '../lib/usage.js'

interface ReadyBody { ready: boolean, missingKeys: number, boundUserKeys: number, boundChannelKeys: number, bindOperationsPending: number }

/**
 * How long past the lease the broker stays unreachable in the `expired` cut: time for
 * the broker to delete the expired route's 11,000 bindings, as it will have done
 * before a gateway comes back after a real outage of minutes.
 */
const PAST_LEASE_MS = 8000

async function readyState (url: string): Promise<{ status: number, body: ReadyBody | undefined }> {
  try {
    const res = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(2000) })
    return { status: res.status, body: await res.json() as ReadyBody }
  } catch {
    return { status: 0, body: undefined }
  }
}

export async function storm (ctx: RunContext): Promise<ScenarioResult> {
  const users = num(ctx, 'users', 10_000, 1000)
  const perUser = num(ctx, 'channels-per-user', 5)
  const channels = num(ctx, 'channels', 1000, 100)
  // Handshakes in flight at once. All N at once overflows the gateway's accept queue
  // (Node's default backlog is 511): the kernel drops SYNs and clients retry after
  // 1, 3, 7, 15… s. --connect-concurrency N measures that case.
  const concurrency = num(ctx, 'connect-concurrency', 1000, 1000)
  const cutsWanted = String(ctx.opts.cuts ?? 'loopback,far,expired').split(',')
  const cutKinds = [
    ...(cutsWanted.includes('loopback') ? [{ delay: 0, refuseMs: 0 }] : []),
    ...(cutsWanted.includes('far') ? [{ delay: num(ctx, 'rtt', 50) / 2, refuseMs: 0 }] : [])
  ]
  const gatewayEnv = { ROUTE_LEASE_MS: '5000', ...envOption(ctx, 'gateway-env') }
  const leaseMs = Number(gatewayEnv.ROUTE_LEASE_MS)
  if (cutsWanted.includes('expired')) cutKinds.push({ delay: 0, refuseMs: leaseMs + PAST_LEASE_MS })
  const sys = await createSystem(ctx, { gateways: 1, proxy: true, gatewayEnv, workerEnv: envOption(ctx, 'worker-env') })
  const gw = sys.gateways[0]!
  const proxy = sys.proxy!
  const exchange = `${sys.env.prefix}.outgoing`

  // User i belongs to channels i, i+s, i+2s… (mod C): K distinct channels, about N·K/C members each.
  const stride = Math.max(1, Math.floor(channels / perUser))
  const ids = Array.from({ length: users }, (_, i) => `s${i}`)
  const groups: string[][] = Array.from({ length: channels }, () => [])
  ids.forEach((u, i) => { for (let j = 0; j < perUser; j++) groups[(i + j * stride) % channels]!.push(u) })
  await createGroups(sys.sql, groups, 'storm')

  const pool = LoadPool.start(num(ctx, 'agents', 2))
  pool.add(ids.map((userId) => ({ userId, url: gw.url })))
  const bindMetric = () => readMetric(`${gw.url}/metrics`, 'chat_gateway_bind_operations_total', { op: 'bind' })
  const binds0 = await bindMetric()
  const overflows0 = listenOverflows()
  const usage = new UsageWindow(usageGroups({ gateways: [gw], worker: sys.worker, loadPids: pool.pids })).start()
  let connected = false
  const connecting = pool.connect({ concurrency, timeoutMs: 120_000 }).finally(() => { connected = true })
  while (!connected) {
    await sleep(500)
    const s = await pool.stats()
    progress(`connect storm: ${s.ready}/${users} ready, ${s.connectFailed} failed`)
  }
  progressEnd()
  const conn = await connecting
  const connectUsage = usage.stop()
  const afterConnect = await pool.report()
  const connectBinds = await bindMetric() - binds0
  const overflows = listenOverflows() - overflows0
  await sleep(1000)
  const expectedBindings = users + channels
  const brokerAfterConnect = await countBindings(sys.vhost, exchange)

  const rows: Row[] = [{
    phase: 'connect storm',
    'rtt ms': 0,
    users,
    ready: afterConnect.stats.ready,
    failed: afterConnect.stats.connectFailed,
    'in flight': concurrency,
    'time to all ready s': Math.round(conn.durationMs / 10) / 100,
    'SYNs dropped': overflows,
    'ready p50 ms': summarize(afterConnect.ready).p50Ms,
    'ready p99 ms': summarize(afterConnect.ready).p99Ms,
    'bind ops': connectBinds,
    'binds/user': Math.round(connectBinds / users * 1000) / 1000,
    'broker bindings': `${brokerAfterConnect}/${expectedBindings}`,
    'gateway CPU ms/user': Math.round((connectUsage.groups.find((g) => g.name === gw.name)?.cpuSeconds ?? 0) * 1e5 / users) / 100,
    'worker CPU ms/user': Math.round((connectUsage.groups.find((g) => g.name === sys.worker?.name)?.cpuSeconds ?? 0) * 1e5 / users) / 100
  }]
  const cuts: Array<{ rttMs: number, expired: boolean, seconds: number, binds: number, broker: number, readyAgain: boolean }> = []
  for (const { delay, refuseMs } of cutKinds) {
    proxy.delayMs = delay
    const b0 = await bindMetric()
    let cutAt = performance.now()
    const n = proxy.cut()
    if (refuseMs > 0) {
      // Unreachable past the lease: the broker deletes the route and every key with it.
      proxy.refusing = true
      while (performance.now() - cutAt < refuseMs) {
        proxy.cut()
        progress(`cut, broker unreachable for ${(refuseMs / 1000).toFixed(1)} s (lease ${leaseMs / 1000} s): ${((performance.now() - cutAt) / 1000).toFixed(1)} s`)
        await sleep(100)
      }
      proxy.refusing = false
      // Measured from the moment the broker is reachable again.
      cutAt = performance.now()
    }
    let sawUnready = refuseMs > 0
    let readyAt: number | undefined
    let last: ReadyBody | undefined
    while (performance.now() - cutAt < 180_000) {
      const r = await readyState(gw.url)
      if (r.body !== undefined) last = r.body
      if (r.status !== 200) sawUnready = true
      // Green again only counts after it went red: the cut must have been noticed.
      if (r.status === 200 && (sawUnready || performance.now() - cutAt > 3000)) { readyAt = performance.now(); break }
      progress(`cut (rtt +${delay * 2} ms, ${n} connections${refuseMs > 0 ? ', lease expired' : ''}): ${((performance.now() - cutAt) / 1000).toFixed(1)} s, ready ${r.status}, missing ${last?.missingKeys ?? '?'}, pending ${last?.bindOperationsPending ?? '?'}`)
      await sleep(20)
    }
    progressEnd()
    const seconds = readyAt === undefined ? Infinity : (readyAt - cutAt) / 1000
    const binds = await bindMetric() - b0
    const broker = await countBindings(sys.vhost, exchange)
    const s = await pool.stats()
    cuts.push({ rttMs: delay * 2, expired: refuseMs > 0, seconds, binds, broker, readyAgain: readyAt !== undefined })
    rows.push({
      phase: refuseMs > 0 ? 'cut past the lease: reachable → ready' : 'broker cut → ready',
      'rtt ms': delay * 2,
      users,
      ready: s.ready,
      'time to all ready s': Math.round(seconds * 100) / 100,
      'bind ops': binds,
      'binds/user': Math.round(binds / users * 1000) / 1000,
      'broker bindings': `${broker}/${expectedBindings}`,
      'saw unready': sawUnready
    })
  }
  await pool.disconnect()
  proxy.delayMs = 0

  const local = cuts.find((c) => c.rttMs === 0 && !c.expired)
  const far = cuts.find((c) => c.rttMs > 0 && !c.expired)
  const full = !ctx.quick && users >= 10_000 && perUser >= 5
  return {
    scenario: 'storm',
    title: `storm: ${users} users × ${perUser} of ${channels} shared channels on one gateway (its AMQP through the harness's proxy)`,
    rows,
    targets: [
      { name: 'bind operations per user on connect (channels shared)', target: '≤ 2', measured: `${(connectBinds / users).toFixed(3)}`, met: ctx.quick ? null : connectBinds / users <= 2 },
      { name: 're-bound after a broker connection cut, loopback', target: '≤ 3 s', measured: `${local?.seconds.toFixed(2)} s, broker bindings ${local?.broker}/${expectedBindings}`, met: full ? (local?.seconds ?? Infinity) <= 3 && local?.broker === expectedBindings : null },
      { name: `re-bound after a cut at +${far?.rttMs} ms RTT`, target: '≤ 20 s at 50 ms', measured: `${far?.seconds.toFixed(2)} s, broker bindings ${far?.broker}/${expectedBindings}`, met: full && far?.rttMs === 50 ? far.seconds <= 20 && far.broker === expectedBindings : null }
    ],
    usage: [{ phase: 'connect storm', ...connectUsage }],
    notes: [
      `connect errors: ${JSON.stringify(afterConnect.stats.errors)}; SYNs dropped = the kernel's ListenOverflows counter over the connect (machine-wide)`,
      `each channel has about ${Math.round(users * perUser / channels)} members; the ideal is ${expectedBindings} bindings (one per user, one per channel)`,
      'the cut destroys both of the gateway\'s AMQP connections in the proxy; its queue dies with them, its keys stay on its route, and one binding attaches the new queue',
      `"cut past the lease": the proxy refuses the broker for ROUTE_LEASE_MS (${leaseMs} ms) + ${PAST_LEASE_MS / 1000} s, the broker deletes the route with every key, and every key is bound again (time counted from when the broker is reachable again)`
    ],
    details: { users, perUser, channels, concurrency, overflows, errors: afterConnect.stats.errors, connectMs: conn.durationMs, connectBinds, brokerAfterConnect, cuts, ready: summarize(afterConnect.ready) }
  }
}
