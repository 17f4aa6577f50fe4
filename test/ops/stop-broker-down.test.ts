/**
 * SIGTERM while the broker refuses connections or black-holes them (a frozen proxy):
 * gateway and worker still stop, exit 0 and log warnings, not an unhandled rejection.
 */
import t, { type Test } from 'tap'
import { createDatabase, createVhost, AMQP_PORT } from '../helpers/services.js'
import { startProxy, viaProxy } from '../helpers/proxy.js'
import { sleep, spawnGateway, spawnWorker } from '../helpers/system.js'

const { url: amqpUrl } = await createVhost(t)
const databaseUrl = await createDatabase(t)

const spawn = {
  gateway: (t: Test, url: string) => spawnGateway(t, { amqpUrl: url, databaseUrl }),
  worker: (t: Test, url: string) => spawnWorker(t, { amqpUrl: url, databaseUrl, prefix: `w${Math.random().toString(36).slice(2, 8)}` })
}

for (const mode of ['refused', 'frozen'] as const) {
  for (const role of ['gateway', 'worker'] as const) {
    t.test(`${role} SIGTERM with the broker ${mode}`, async (t) => {
      const proxy = await startProxy(t, { host: '127.0.0.1', port: AMQP_PORT })
      const p = await spawn[role](t, viaProxy(amqpUrl, proxy))
      if (mode === 'refused') { proxy.refuse(true); proxy.cut() } else proxy.freeze(true)
      await sleep(1000)
      const at = Date.now()
      p.child.kill('SIGTERM')
      const code = await p.exited
      t.equal(code, 0, `exit 0 (exit ${code} after ${Date.now() - at} ms)`, code === 0 ? {} : { output: p.output().slice(-2000) })
    })
  }
}
