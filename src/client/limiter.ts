/**
 * At most `max` calls run at once; the others wait their turn, in order. The gateway
 * refuses a user's reads past USER_REQUESTS_WAITING (8 by default) with RATE_LIMITED,
 * so a catch-up over many channels must not send them all at once.
 */
export function limitConcurrency (max: number): <T>(call: () => Promise<T>) => Promise<T> {
  let running = 0
  const waiting: Array<() => void> = []
  return async <T>(call: () => Promise<T>): Promise<T> => {
    if (running < max) running++
    else await new Promise<void>((resolve) => waiting.push(resolve))
    try {
      return await call()
    } finally {
      // The slot passes straight to the next in line, so `running` stays as it is.
      const next = waiting.shift()
      if (next !== undefined) next()
      else running--
    }
  }
}
