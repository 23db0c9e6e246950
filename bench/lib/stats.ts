/** Small statistics helpers for the bench. */

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/** Linear-interpolated percentile (p in 0..100); NaN for no values. */
export function percentile(values: readonly number[], p: number): number {
  const finite = values.filter((value) => Number.isFinite(value));
  if (finite.length === 0) return Number.NaN;
  const sorted = [...finite].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.ceil(rank);
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (rank - low);
}

/** `items` rotated left by `by`, so each round starts with another target. */
export function rotate<T>(items: readonly T[], by: number): T[] {
  const shift = ((by % items.length) + items.length) % items.length;
  return [...items.slice(shift), ...items.slice(0, shift)];
}

export function fmt(value: number, digits = 0): string {
  if (!Number.isFinite(value)) return 'n/a';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function ratio(a: number, b: number): number {
  return b > 0 && Number.isFinite(a) && Number.isFinite(b) ? a / b : Number.NaN;
}

/**
 * The median of the runs that processes outside the bench did not disturb (other load at most
 * `maxOtherLoadPct`), or of all runs when none is clean; `clean` says how many were used.
 */
export function cleanMedian<T extends { otherLoadPct: number }>(
  runs: readonly T[],
  value: (run: T) => number,
  maxOtherLoadPct: number,
): { value: number; clean: number; total: number } {
  const clean = runs.filter((run) => run.otherLoadPct <= maxOtherLoadPct);
  const used = clean.length > 0 ? clean : runs;
  return { value: median(used.map(value)), clean: clean.length, total: runs.length };
}

/**
 * The median over rounds of a/b measured in the same round, using the rounds where neither run
 * was disturbed (all rounds when none is clean). Robust to the host's speed drifting between
 * rounds, which a ratio of medians is not.
 */
export function roundRatio<T extends { otherLoadPct: number }>(
  a: readonly T[],
  b: readonly T[],
  value: (run: T) => number,
  maxOtherLoadPct: number,
): { value: number; rounds: number[]; clean: number } {
  const rounds = a.map((run, i) => {
    const other = b[i];
    return {
      ratio: ratio(value(run), other ? value(other) : Number.NaN),
      clean: run.otherLoadPct <= maxOtherLoadPct && (other?.otherLoadPct ?? Infinity) <= maxOtherLoadPct,
    };
  });
  const clean = rounds.filter((round) => round.clean);
  const used = clean.length > 0 ? clean : rounds;
  return { value: median(used.map((round) => round.ratio)), rounds: rounds.map((round) => round.ratio), clean: clean.length };
}
