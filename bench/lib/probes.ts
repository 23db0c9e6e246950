import { join } from 'node:path';
import { REPO_ROOT, waitFor, type Child } from './harness.js';

/**
 * The probes the bench preloads into a measured process (`node --import …`) to read what only the
 * process itself knows, each answering a signal with one line on its stderr.
 */

/** Full GC, then memory (lib/gc-probe.mjs; needs --expose-gc). */
export const GC_PROBE = join(REPO_ROOT, 'bench', 'lib', 'gc-probe.mjs');
/** Event-loop delay since the previous read (lib/loop-probe.mjs). */
export const LOOP_PROBE = join(REPO_ROOT, 'bench', 'lib', 'loop-probe.mjs');

/** Heap numbers a process reports through bench/lib/gc-probe.mjs right after a full GC. */
export interface GcProbe {
  seq: number;
  rss: number;
  heapUsed: number;
  heapTotal: number;
}

/** Event-loop delay in ms over one window (bench/lib/loop-probe.mjs); null figures when no
 *  sample was taken. */
export interface LoopProbe {
  seq: number;
  samples: number;
  p50: number | null;
  p99: number | null;
  max: number | null;
}

/** Sends `signal` and resolves with the line the probe answers with (`TAG {json}` on stderr). */
async function probe<T extends { seq: number }>(child: Child, signal: NodeJS.Signals, tag: string): Promise<T> {
  const pattern = new RegExp(`${tag} \\{[^\\n]*\\}`, 'g');
  const last = () => {
    const lines = child.stderrTail().match(pattern) ?? [];
    return lines.length ? (JSON.parse(lines.at(-1)!.slice(tag.length + 1)) as T) : undefined;
  };
  const before = last()?.seq ?? 0;
  process.kill(child.pid, signal);
  let answer: T | undefined;
  await waitFor(() => (answer = last()) !== undefined && answer.seq > before, {
    timeoutMs: 10_000,
    intervalMs: 5,
    what: `${child.name} to answer ${tag}`,
  });
  return answer!;
}

/** Runs a full GC in `child` (started with --expose-gc --import GC_PROBE) and reads its memory. */
export function gcProbe(child: Child): Promise<GcProbe> {
  return probe<GcProbe>(child, 'SIGUSR2', 'GCPROBE');
}

/** The event-loop delay of `child` (started with --import LOOP_PROBE) since the previous call,
 *  and a new window from now. */
export function loopProbe(child: Child): Promise<LoopProbe> {
  return probe<LoopProbe>(child, 'SIGWINCH', 'LOOPPROBE');
}
