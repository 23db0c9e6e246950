/**
 * The suite's two ways of waiting with a deadline: `withTimeout` for something that says when it
 * is done (a promise), `pollUntil` for something the test must ask again and again. Every wait in
 * test/support goes through one of them, so a timeout always names what it waited for.
 */

/** Resolves or rejects as `promise` does, or rejects with `message()` once `timeoutMs` passes. */
export async function withTimeout<T>(promise: Promise<T>, timeoutMs: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message())), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export interface PollOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** Completes "timed out waiting for …". */
  what: string;
  /** Appended to the timeout message (process output, last observed state). */
  context?: () => string | Promise<string>;
}

/** Calls `check` until it returns something other than false/undefined, or the deadline passes.
 *  An error thrown by `check` ends the wait at once. */
export async function pollUntil<T>(check: () => Promise<T | false | undefined> | T | false | undefined, options: PollOptions): Promise<T> {
  const { timeoutMs, intervalMs = 50, what, context } = options;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== false && value !== undefined) return value;
    if (Date.now() > deadline) {
      const extra = context ? `\n${await context()}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${extra}`);
    }
    await sleep(intervalMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
