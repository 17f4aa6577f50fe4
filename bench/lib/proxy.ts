/**
 * A TCP proxy between gateways and RabbitMQ, in the harness, so the bench can cut a
 * gateway's broker connections (as a network failure would) and add latency (as a
 * gateway in a far region would see) without touching the shared broker.
 * `delayMs` is one way: a 25 ms delay gives 50 ms of added round-trip time.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'
import { once } from 'node:events'
import { onCleanup } from './cleanup.js'

export class TcpProxy {
  readonly #target: { host: string, port: number }
  readonly #pairs = new Set<[Socket, Socket]>()
  #server: Server | undefined
  delayMs: number
  /** While true, new connections are closed at once (the broker is unreachable). */
  refusing = false
  port = 0

  constructor (target: { host: string, port: number }, delayMs = 0) {
    this.#target = target
    this.delayMs = delayMs
  }

  async listen (): Promise<number> {
    const server = createServer((client) => this.#accept(client))
    this.#server = server
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const address = server.address()
    if (address === null || typeof address === 'string') throw new Error('no port')
    this.port = address.port
    onCleanup('close proxy', () => this.close())
    return this.port
  }

  get connections (): number { return this.#pairs.size }

  /** Destroys every proxied connection, both ends: the gateway sees a dead broker link. */
  cut (): number {
    const n = this.#pairs.size
    for (const [a, b] of this.#pairs) {
      a.destroy()
      b.destroy()
    }
    this.#pairs.clear()
    return n
  }

  close (): Promise<void> {
    this.cut()
    const server = this.#server
    this.#server = undefined
    if (server === undefined) return Promise.resolve()
    return new Promise((resolve) => server.close(() => resolve()))
  }

  #accept (client: Socket): void {
    if (this.refusing) {
      client.destroy()
      return
    }
    const upstream = connect(this.#target.port, this.#target.host)
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    const pair: [Socket, Socket] = [client, upstream]
    this.#pairs.add(pair)
    const end = () => {
      this.#pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
    this.#forward(client, upstream)
    this.#forward(upstream, client)
  }

  #forward (from: Socket, to: Socket): void {
    from.on('data', (chunk: Buffer) => {
      const delay = this.delayMs
      if (delay <= 0) {
        if (!to.destroyed) to.write(chunk)
        return
      }
      // Timers of equal delay fire in insertion order, so the byte stream stays in order.
      setTimeout(() => { if (!to.destroyed) to.write(chunk) }, delay)
    })
  }
}
