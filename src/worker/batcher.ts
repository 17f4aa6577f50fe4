/**
 * Groups items into batches: a batch closes when it holds `max` items or `waitMs`
 * after its first item, and at most `concurrency` batches run at once. Items added
 * while all slots are busy wait for the next batch, so memory is bounded by the
 * consumer's prefetch.
 */
export interface BatcherOptions<T> {
  max: number
  waitMs: number
  concurrency: number
  run: (items: T[]) => Promise<void>
  onError: (err: unknown, items: T[]) => void
}

export class Batcher<T> {
  readonly #opts: BatcherOptions<T>
  #buffer: T[] = []
  #timer: NodeJS.Timeout | undefined
  #running = 0
  #runningItems = 0
  readonly #idle: Array<() => void> = []

  constructor (opts: BatcherOptions<T>) {
    this.#opts = opts
  }

  add (item: T): void {
    this.#buffer.push(item)
    if (this.#buffer.length >= this.#opts.max) this.#flush()
    else this.#timer ??= setTimeout(() => { this.#timer = undefined; this.#flush() }, this.#opts.waitMs)
  }

  get running (): number { return this.#running }
  /** Items in the batches running now. */
  get runningItems (): number { return this.#runningItems }
  get buffered (): number { return this.#buffer.length }

  /** Resolves once nothing is buffered or running. */
  async drain (): Promise<void> {
    this.#flush()
    while (this.#running > 0 || this.#buffer.length > 0) {
      await new Promise<void>((resolve) => this.#idle.push(resolve))
    }
  }

  /** Removes and returns the items not yet handed to `run`. */
  takeBuffered (): T[] {
    clearTimeout(this.#timer)
    this.#timer = undefined
    const items = this.#buffer
    this.#buffer = []
    return items
  }

  #flush (): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer)
      this.#timer = undefined
    }
    while (this.#buffer.length > 0 && this.#running < this.#opts.concurrency) {
      const items = this.#buffer.splice(0, this.#opts.max)
      this.#running++
      this.#runningItems += items.length
      this.#opts.run(items)
        .catch((err: unknown) => this.#opts.onError(err, items))
        .finally(() => {
          this.#running--
          this.#runningItems -= items.length
          if (this.#buffer.length > 0) this.#flush()
          // drain() re-checks on every completion
          for (const resolve of this.#idle.splice(0)) resolve()
        })
    }
  }
}
