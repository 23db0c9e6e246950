import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

/**
 * Aggregates a V8 .cpuprofile (from `node --cpu-prof`): self time by function and by package,
 * and inclusive time by package (a sample counts once for every package on its stack), as
 * percentages of the busy (non-idle) time.
 *   npx tsx bench/tools/cpuprofile-summary.ts dist-api.cpuprofile [--top 30]
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface Entry {
  name: string;
  ms: number;
  /** Percent of busy time. */
  pct: number;
}

export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  busyMs: number;
  selfByFunction: Entry[];
  selfByPackage: Entry[];
  inclusiveByPackage: Entry[];
  inclusiveByFunction: Entry[];
}

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Which package (or part of this repo, or of node) a function belongs to. */
export function packageOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) return 'node internals';
  const path = url.startsWith('file://') ? fileURLToPath(url) : url;
  const marker = path.lastIndexOf('/node_modules/');
  if (marker >= 0) {
    const rest = path.slice(marker + '/node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : (rest[0] ?? path);
  }
  if (path.startsWith(REPO_ROOT)) return `app ${path.slice(REPO_ROOT.length).replace(/\.(js|ts)$/, '')}`;
  return path;
}

function functionKey(frame: CallFrame): string {
  const where = frame.url ? `${packageOf(frame)}${frame.url.startsWith('node:') ? ` ${frame.url}` : ''}:${frame.lineNumber + 1}` : packageOf(frame);
  return `${frame.functionName || '(anonymous)'}  [${where}]`;
}

export interface SummaryOptions {
  top?: number;
  /** Only samples this many ms after the profile's start… */
  fromMs?: number;
  /** …and before this many (a measured window, leaving out start-up and shutdown). */
  toMs?: number;
}

export function summarizeCpuProfile(profile: CpuProfile, { top = 25, fromMs = 0, toMs = Infinity }: SummaryOptions = {}): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const selfFn = new Map<string, number>();
  const selfPkg = new Map<string, number>();
  const inclPkg = new Map<string, number>();
  const inclFn = new Map<string, number>();
  const add = (map: Map<string, number>, key: string, ms: number) => map.set(key, (map.get(key) ?? 0) + ms);
  let totalMs = 0;
  let idleMs = 0;
  let clockMs = 0;
  profile.samples.forEach((id, i) => {
    const ms = (profile.timeDeltas[i] ?? 0) / 1000;
    clockMs += ms;
    if (clockMs < fromMs || clockMs > toMs) return;
    const node = byId.get(id);
    if (!node) return;
    totalMs += ms;
    if (node.callFrame.functionName === '(idle)') {
      idleMs += ms;
      return;
    }
    add(selfFn, functionKey(node.callFrame), ms);
    add(selfPkg, packageOf(node.callFrame), ms);
    const packages = new Set<string>();
    const functions = new Set<string>();
    for (let current: number | undefined = id; current !== undefined; current = parent.get(current)) {
      const frame = byId.get(current)?.callFrame;
      if (!frame || frame.functionName === '(root)') continue;
      packages.add(packageOf(frame));
      functions.add(functionKey(frame));
    }
    for (const name of packages) add(inclPkg, name, ms);
    for (const name of functions) add(inclFn, name, ms);
  });
  const busyMs = totalMs - idleMs;
  const entries = (map: Map<string, number>, limit: number) =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([name, ms]) => ({ name, ms, pct: (ms / busyMs) * 100 }));
  return {
    totalMs,
    idleMs,
    busyMs,
    selfByFunction: entries(selfFn, top),
    selfByPackage: entries(selfPkg, top),
    inclusiveByPackage: entries(inclPkg, top),
    inclusiveByFunction: entries(inclFn, top),
  };
}

/** `ops`: when given, every entry also shows its CPU µs per operation. */
export function formatProfileSummary(title: string, summary: ProfileSummary, ops?: number): string {
  const perOp = ops ? ` = ${((summary.busyMs * 1000) / ops).toFixed(0)} µs per op over ${ops} ops` : '';
  const lines = [
    `${title}: ${summary.busyMs.toFixed(0)} ms busy of ${summary.totalMs.toFixed(0)} ms sampled (idle ${summary.idleMs.toFixed(0)} ms)${perOp}`,
  ];
  const section = (name: string, entries: Entry[]) => {
    if (entries.length === 0) return;
    lines.push(`  ${name}:`);
    for (const entry of entries) {
      const micros = ops ? `${((entry.ms * 1000) / ops).toFixed(1).padStart(7)} µs/op  ` : '';
      lines.push(`    ${entry.pct.toFixed(1).padStart(5)}%  ${entry.ms.toFixed(0).padStart(7)} ms  ${micros}${entry.name}`);
    }
  };
  section('self time by package', summary.selfByPackage);
  section('inclusive time by package (stack contains it)', summary.inclusiveByPackage);
  section('self time by function', summary.selfByFunction);
  section('inclusive time by function', summary.inclusiveByFunction);
  return lines.join('\n');
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
  for (const file of positionals) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
    process.stdout.write(`${formatProfileSummary(file, summarizeCpuProfile(profile, { top: Number(values.top) }))}\n\n`);
  }
}
