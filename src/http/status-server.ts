/**
 * A minimal HTTP listener for probes and metrics on a port of its own (the worker's
 * /health, /ready, /metrics; the gateway's /metrics when METRICS_PORT is set), so
 * they stay off a public port. Plain node:http: no framework for three GET routes.
 */
import { createServer, type Server } from 'node:http'

export interface StatusReply { status: number, contentType: string, body: string }
export type StatusRoutes = Record<string, () => StatusReply | Promise<StatusReply>>

export const json = (status: number, value: unknown): StatusReply =>
  ({ status, contentType: 'application/json; charset=utf-8', body: JSON.stringify(value) })

/** Listens on `port` (0 = any free port); resolves once listening. */
export function startStatusServer (port: number, host: string, routes: StatusRoutes): Promise<Server> {
  const server = createServer((req, res) => {
    const route = req.method === 'GET' ? routes[(req.url ?? '/').split('?')[0] ?? '/'] : undefined
    if (route === undefined) {
      res.writeHead(req.method === 'GET' ? 404 : 405).end()
      return
    }
    Promise.resolve().then(route).then(
      (r) => res.writeHead(r.status, { 'content-type': r.contentType }).end(r.body),
      () => res.writeHead(500).end()
    )
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve(server)
    })
  })
}
