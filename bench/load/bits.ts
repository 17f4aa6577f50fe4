/** A growable bitset: which numbers of one sender a socket has seen, to count repeats exactly. */
export class Bits {
  #bytes = new Uint8Array(64)
  count = 0

  /** Sets bit n; returns false if it was already set (a duplicate). */
  set (n: number): boolean {
    const i = n >>> 3
    if (i >= this.#bytes.length) {
      const bigger = new Uint8Array(Math.max(i + 1, this.#bytes.length * 2))
      bigger.set(this.#bytes)
      this.#bytes = bigger
    }
    const mask = 1 << (n & 7)
    if ((this.#bytes[i]! & mask) !== 0) return false
    this.#bytes[i] = this.#bytes[i]! | mask
    this.count++
    return true
  }
}
