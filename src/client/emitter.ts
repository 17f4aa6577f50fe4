/**
 * A tiny typed event emitter that runs in Node and browsers alike (node:events
 * does not exist in browsers; socket.io-client's emitter is not typed for us).
 */
// Listener signatures vary per event; `any[]` is the usual bound for such maps
// (`unknown[]` would reject every listener with typed parameters).
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type EventMap<E> = { [K in keyof E]: (...args: any[]) => void }

export class TypedEmitter<E extends EventMap<E>> {
  readonly #listeners = new Map<keyof E, Set<E[keyof E]>>()

  on<K extends keyof E> (event: K, listener: E[K]): () => void {
    let set = this.#listeners.get(event)
    if (set === undefined) this.#listeners.set(event, set = new Set())
    set.add(listener)
    return () => this.off(event, listener)
  }

  off<K extends keyof E> (event: K, listener: E[K]): void {
    this.#listeners.get(event)?.delete(listener)
  }

  protected emit<K extends keyof E> (event: K, ...args: Parameters<E[K]>): void {
    const set = this.#listeners.get(event)
    if (set === undefined) return
    for (const listener of [...set]) {
      try {
        listener(...args)
      } catch (err) {
        // An application bug must not corrupt the SDK's state half-way through a
        // delivery; rethrow it outside our call stack, where it is reported as usual.
        setTimeout(() => { throw err }, 0)
      }
    }
  }
}
