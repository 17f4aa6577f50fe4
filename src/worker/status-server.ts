/**
 * The worker's small HTTP endpoint: /health (the process answers), /ready (broker
 * and database usable, not stopping) and /metrics (Prometheus text).
 */
import { createServer, type Server } from 'node:http'
import type { Worker } from './worker.js'

export function startStatusServer (worker: Worker, port: number, host = '0.0.0.0'): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET') {
      res.writeHead(405).end()
      return
    }
    if (path === '/health') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: true, serverId: worker.status().serverId, uptimeSeconds: Math.round(process.uptime()) }))
      return
    }
    if (path === '/ready') {
      const status = worker.status()
      res.writeHead(status.ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(status))
      return
    }
    if (path === '/metrics') {
      worker.metrics.registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': worker.metrics.registry.contentType }).end(text)
      }, () => res.writeHead(500).end())
      return
    }
    res.writeHead(404).end()
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve(server)
    })
  })
}
