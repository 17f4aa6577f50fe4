/**
 * SIGTERM while the broker refuses connections or black-holes them (a frozen proxy):
 * gateway and worker still stop, exit 0 and log warnings, not an unhandled rejection.
 */
import t from 'tap'
import { createDatabase, createVhost, AMQP_PORT } from '../helpers/services.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { sleep, spawnGateway, spawnWorker } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)

for (const mode of ['refused', 'frozen'] as const) {
  t.test(`gateway SIGTERM with the broker ${mode}`, async (t) => {
    const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
    const g = await spawnGateway(t, { amqpUrl: viaProxy(amqpUrl, proxy), databaseUrl })
    if (mode === 'refused') { proxy.refuse(true); proxy.cut() } else proxy.freeze(true)
    await sleep(1000)
    const at = Date.now()
    g.child.kill('SIGTERM')
    const code = await g.exited
    t.equal(code, 0, `exit 0 (exit ${code} after ${Date.now() - at} ms)`, code === 0 ? {} : { output: g.output().slice(-2000) })
  })
  t.test(`worker SIGTERM with the broker ${mode}`, async (t) => {
    const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
    const w = await spawnWorker(t, { amqpUrl: viaProxy(amqpUrl, proxy), databaseUrl, prefix: 'w' + mode })
    if (mode === 'refused') { proxy.refuse(true); proxy.cut() } else proxy.freeze(true)
    await sleep(1000)
    const at = Date.now()
    w.child.kill('SIGTERM')
    const code = await w.exited
    t.equal(code, 0, `exit 0 (exit ${code} after ${Date.now() - at} ms)`, code === 0 ? {} : { output: w.output().slice(-2000) })
  })
}
