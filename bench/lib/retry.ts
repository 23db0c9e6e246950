import type { BenchContext } from './systems.js';

/**
 * On a machine shared with other work, runs `run` again (up to ctx.retries more times) while the
 * CPU that processes outside the bench used during it exceeds ctx.maxOtherLoadPct, and keeps
 * the least disturbed result; a run that throws is tried again too. Every result carries how
 * disturbed it was, so the report shows it.
 */
export async function leastDisturbed<T extends { otherLoadPct: number }>(ctx: BenchContext, what: string, run: () => Promise<T>): Promise<T> {
  let best: T | undefined;
  for (let attempt = 0; attempt <= ctx.retries; attempt++) {
    let result: T;
    try {
      result = await run();
    } catch (error) {
      // A run that failed (a process killed from outside, a deadline missed) is tried again
      // while tries remain; the last failure is reported.
      if (attempt === ctx.retries || ctx.stopping()) {
        if (best) return best;
        throw error;
      }
      ctx.log(`    ${what}: failed (${error instanceof Error ? error.message.split('\n')[0] : String(error)}); measuring again`);
      continue;
    }
    if (!best || result.otherLoadPct < best.otherLoadPct) best = result;
    if (result.otherLoadPct <= ctx.maxOtherLoadPct) break;
    if (attempt < ctx.retries) {
      ctx.log(`    ${what}: other processes used ${result.otherLoadPct.toFixed(0)}% of a core meanwhile (> ${ctx.maxOtherLoadPct}%); measuring again`);
    }
  }
  return best!;
}
