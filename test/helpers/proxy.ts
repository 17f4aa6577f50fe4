/**
 * A TCP proxy between one process and a real service, to fail the network for that
 * process alone: cut its connections, refuse new ones, freeze traffic without
 * closing (a black hole, as when a machine vanishes), stall what the service sends
 * (a slow consumer), or add latency.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TLSSocket } from 'node:tls'
import type { Test } from 'tap'

export class TcpProxy {
  readonly #target: { host: string, port: number }
  readonly #pairs = new Set<[Socket, Socket]>()
  #server: Server | undefined
  #refusing = false
  #frozen = false
  #delayMs = 0
  port = 0

  constructor (target: { host: string, port: number }) {
    this.#target = target
  }

  async start (): Promise<number> {
    this.#server = createServer((client) => this.#accept(client))
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve))
    const address = this.#server.address()
    if (address === null || typeof address === 'string') throw new Error('no port')
    this.port = address.port
    return this.port
  }

  #accept (client: Socket): void {
    if (this.#refusing) {
      client.destroy()
      return
    }
    const upstream = connect(this.#target.port, this.#target.host)
    const pair: [Socket, Socket] = [client, upstream]
    this.#pairs.add(pair)
    const forward = (from: Socket, to: Socket) => from.on('data', (chunk: Buffer) => {
      if (this.#frozen) return
      // Same delay for every chunk, and timers of equal delay run in order: no reordering.
      if (this.#delayMs > 0) setTimeout(() => { if (!to.destroyed) to.write(chunk) }, this.#delayMs)
      else to.write(chunk)
    })
    forward(client, upstream)
    forward(upstream, client)
    // A frozen link is a black hole: one side closing tells the other nothing.
    const end = (side: Socket) => () => {
      if (this.#frozen) {
        side.destroy()
        return
      }
      this.#pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    client.on('close', end(client)).on('error', end(client))
    upstream.on('close', end(upstream)).on('error', end(upstream))
  }

  /** Destroys every proxied connection now (both ends see a reset). */
  cut (): void {
    for (const [a, b] of this.#pairs) {
      a.destroy()
      b.destroy()
    }
    this.#pairs.clear()
  }

  /** While on, new connections are closed as soon as they open. */
  refuse (on: boolean): void {
    this.#refusing = on
  }

  /** While on, bytes are swallowed in both directions and nothing is closed. */
  freeze (on: boolean): void {
    this.#frozen = on
  }

  /**
   * While on, nothing is read from the service: its writes back up in the TCP buffers
   * and then in the service itself (a consumer too slow to keep up), while the
   * process's own writes still go through.
   */
  stall (on: boolean): void {
    for (const [, upstream] of this.#pairs) {
      if (on) upstream.pause()
      else upstream.resume()
    }
  }

  /** Holds every chunk this long in each direction (a far broker: 25 ms is 50 ms of round trip). */
  delay (ms: number): void {
    this.#delayMs = ms
  }

  get connections (): number {
    return this.#pairs.size
  }

  async close (): Promise<void> {
    this.cut()
    await new Promise<void>((resolve) => this.#server?.close(() => resolve()) ?? resolve())
  }
}

export async function startProxy (t: Test, target: { host: string, port: number }): Promise<TcpProxy> {
  const proxy = new TcpProxy(target)
  await proxy.start()
  t.teardown(() => proxy.close())
  return proxy
}

/** The same URL, pointed at the proxy. */
export function viaProxy (url: string, proxy: TcpProxy): string {
  const u = new URL(url)
  u.hostname = '127.0.0.1'
  u.port = String(proxy.port)
  return u.toString()
}

/**
 * PostgreSQL behind a TLS-terminating proxy with a self-signed certificate for
 * `localhost`: `sslmode=require` works through it, `verify-full` fails as with an
 * expired or replaced server certificate. Returns its port; closed at teardown.
 */
export async function startPostgresTlsProxy (t: Test, target = { host: '127.0.0.1', port: 5432 }): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' })
  const key = readFileSync(join(dir, 'key.pem'))
  const cert = readFileSync(join(dir, 'cert.pem'))
  const sockets = new Set<Socket>()
  const track = (s: Socket) => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
    return s
  }
  const server = createServer((client) => {
    track(client).on('error', () => {})
    // The client's SSLRequest: say yes, then speak TLS on the same socket.
    client.once('data', () => {
      client.write('S')
      const secure = new TLSSocket(client, { isServer: true, key, cert })
      const upstream = track(connect(target.port, target.host))
      secure.pipe(upstream).pipe(secure)
      secure.on('error', () => upstream.destroy())
      upstream.on('error', () => secure.destroy())
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}
