import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { Redis } from 'ioredis';
import { startRedisServer, type RedisServer } from '../../scripts/lib/redis-server.js';
import { Harness, REPO_ROOT } from './harness.js';
import { benchToken } from './load.js';
import { startOtlpSink } from './otlp-sink.js';
import type { BenchContext } from './systems.js';

/**
 * What every bench command shares (`npm run bench` and the tools in bench/tools/): the service
 * built apart from the shared dist/ (or run from src/, or a committed revision), a fresh
 * redis-server on a free port, a header that says what ran where, the results written to
 * bench/results/, and every process it started stopped on the way out (normal end, error,
 * Ctrl-C, SIGTERM). All traffic stays on 127.0.0.1.
 */

export const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');

/** The flags every bench command takes, for node:util parseArgs. */
export const SESSION_FLAGS = {
  src: { type: 'boolean', default: false },
  ref: { type: 'string' },
  env: { type: 'string', multiple: true },
  'max-other-load': { type: 'string', default: '25' },
  retries: { type: 'string' },
  'no-build': { type: 'boolean', default: false },
  'keep-logs': { type: 'boolean', default: false },
  tracing: { type: 'boolean', default: false },
  aof: { type: 'string', default: 'everysec' },
  help: { type: 'boolean', default: false },
} as const satisfies ParseArgsConfig['options'];

export const SESSION_USAGE = `  --ref REV            bench a committed revision (git archive REV, built apart) instead of
                       the work tree
  --src                run the service from src/ through tsx instead of building it
  --no-build           reuse the last build in bench/results/dist
  --max-other-load P   repeat a run when processes outside the bench used more than P% of a
                       core meanwhile (default 25; shared machines)
  --retries N          at most N repeats per run for that (default 2; 1 with --quick)
  --env KEY=VALUE      extra environment for the service's processes (repeatable), e.g.
                       --env LOG_LEVEL=warn to see what logging costs
  --keep-logs          keep the children's logs (their directory is printed)
  --tracing            the service traces every request and operation (sampler always_on) and
                       exports to an OTLP sink in the bench's process; a --compare ref runs
                       untraced, so 'service / ref' with --compare HEAD is what tracing costs
  --aof MODE           the bench's Redis persistence: everysec (default: appendonly yes,
                       appendfsync everysec, as docker-compose.yml runs it and the operations
                       guide recommends), always, or no (appendonly no: memory only)
  --help`;

/** The session's own flag values, as parseArgs gives them. */
export interface SessionValues {
  src: boolean;
  ref?: string | undefined;
  env?: string[] | undefined;
  'max-other-load': string;
  retries?: string | undefined;
  'no-build': boolean;
  'keep-logs': boolean;
  tracing: boolean;
  aof: string;
}

/** Parses a command's own flags and the session's; prints `usage` and exits on --help. */
export function parseFlags<const Options extends NonNullable<ParseArgsConfig['options']>>(options: Options, usage: string) {
  const config = { options: { ...options, ...SESSION_FLAGS } };
  const { values } = parseArgs<typeof config>(config);
  if ((values as { help?: boolean }).help) {
    process.stdout.write(`${usage}\n${SESSION_USAGE}\n`);
    process.exit(0);
  }
  return values;
}

export function intFlag(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed <= 0) {
    process.stderr.write(`--${name} must be a positive whole number, not '${value}'\n`);
    process.exit(2);
  }
  return parsed;
}

/** A comma-separated list of positive whole numbers, ascending and without repeats. */
export function intListFlag(name: string, value: string): number[] {
  const list = [...new Set(value.split(',').map((item) => intFlag(name, item.trim(), 0)))];
  return list.sort((a, b) => a - b);
}

export interface SessionOptions {
  /** Results go to bench/results/<results>.txt (everything logged) and .json (what the run returns). */
  results: string;
  /** Repeats per disturbed run when --retries is not given. */
  defaultRetries: number;
}

/**
 * Runs `run` in a session and exits: 0 when it returned, 1 when it threw, 130 on a signal.
 * The JSON written is the session's header (times, commit, machine, settings) plus what `run` returns.
 */
export function runSession(values: SessionValues, options: SessionOptions, run: (ctx: BenchContext) => Promise<Record<string, unknown>>): void {
  const output: string[] = [];
  const log = (line: string) => {
    output.push(line);
    process.stdout.write(`${line}\n`);
  };
  const maxOtherLoadPct = intFlag('max-other-load', values['max-other-load'], 25);
  const retries = values.retries === '0' ? 0 : intFlag('retries', values.retries, options.defaultRetries);
  const serviceEnv = envFlag('env', values.env);
  const serviceFrom = values.src ? 'src' : values.ref ? `git ${values.ref}` : 'work tree';

  const harness = new Harness();
  harness.keepLogs = values['keep-logs'];
  let redisServer: RedisServer | undefined;
  let stopping = false;
  const shutdown = async (code: number): Promise<never> => {
    if (!stopping) {
      stopping = true;
      await harness.cleanup().catch(() => harness.killAllNow());
      await redisServer?.destroy();
    }
    process.exit(code);
  };
  process.on('exit', () => {
    harness.killAllNow();
    redisServer?.killNow();
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: stopping every process the bench started\n`);
      if (stopping) harness.killAllNow();
      void shutdown(130);
    });
  }

  const main = async () => {
    const startedAt = new Date();
    const serviceEntry = buildService(values, serviceFrom);
    redisServer = await startRedisServer(aofArgs(values.aof));
    // Started by scripts/lib/redis-server.ts, not through the harness: without this, its CPU
    // (about 40% of a core in an accept run) counted as other sessions' load.
    const server = redisServer;
    harness.countAsOwn(() => server.pid);
    const redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    harness.onCleanup(() => redis.disconnect());
    const redisVersion = /^redis_version:(\S+)/m.exec(await redis.info('server'))?.[1] ?? '?';
    const sink = values.tracing ? await startOtlpSink() : undefined;
    if (sink) harness.onCleanup(() => sink.close());
    const ctx: BenchContext = {
      harness,
      redisUrl: redisServer.url,
      redis,
      redisPid: redisServer.pid!,
      token: await benchToken(),
      serviceEntry,
      serviceEnv,
      tracingEnv: sink ? { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_TRACES_SAMPLER: 'always_on' } : {},
      log,
      maxOtherLoadPct,
      retries,
      stopping: () => stopping,
    };
    const commit = gitDescription(values.ref);
    const machine = `${cpus().length} CPU (${cpus()[0]?.model.trim() ?? '?'}), node ${process.version}, redis ${redisVersion}`;
    const envNote = Object.keys(serviceEnv).length ? `  service env ${JSON.stringify(serviceEnv)}` : '';
    log(`bench ${startedAt.toISOString()}  commit ${commit}  service from ${serviceFrom}${envNote}`);
    log(`machine: ${machine}; everything (load generator, API, worker, Redis) shares these cores`);
    log(`redis: ${values.aof === 'no' ? 'appendonly no (memory only)' : `appendonly yes, appendfsync ${values.aof}`}, on ${redisServer.dir}`);
    log(
      `load average at start: ${loadavg().map((value) => value.toFixed(2)).join(' ')}; runs disturbed by more than ${maxOtherLoadPct}%` +
        ` of a core of foreign CPU are repeated up to ${retries} time(s), the least disturbed kept`,
    );

    if (sink) log(`tracing: the service exports every span to the bench's OTLP sink at ${sink.url}; a --compare ref runs untraced`);

    const result = await run(ctx);
    if (sink) {
      const { exports, bytes } = sink.received();
      log(`tracing: the sink received ${exports} exports, ${(bytes / 1e6).toFixed(1)} MB`);
    }

    mkdirSync(RESULTS_DIR, { recursive: true });
    const json = {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      commit,
      machine,
      settings: { serviceFrom, serviceEnv, maxOtherLoadPct, retries, aof: values.aof },
      ...result,
    };
    const base = join(RESULTS_DIR, options.results);
    writeFileSync(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
    writeFileSync(`${base}.txt`, `${output.join('\n')}\n`);
    log(`\nwritten: bench/results/${options.results}.json, bench/results/${options.results}.txt${harness.keepLogs ? `; logs in ${harness.dir}` : ''}`);
  };

  main().then(
    () => shutdown(0),
    (error: unknown) => {
      if (stopping) return; // interrupted: the signal handler is already cleaning up
      process.stderr.write(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      void shutdown(1);
    },
  );
}

/** The KEY=VALUE pairs of a repeatable flag as an environment; exits 2 on a pair without a key. */
export function envFlag(name: string, pairs: string[] | undefined): Record<string, string> {
  return Object.fromEntries(
    (pairs ?? []).map((pair) => {
      const at = pair.indexOf('=');
      if (at <= 0) {
        process.stderr.write(`--${name} takes KEY=VALUE, not '${pair}'\n`);
        process.exit(2);
      }
      return [pair.slice(0, at), pair.slice(at + 1)];
    }),
  );
}

/**
 * Builds the committed revision `rev` to run beside the work tree's build in one session
 * (`npm run bench --compare`, `bench/tools/ab.ts --b-ref`): under node_modules like --ref's
 * build, in a directory of this process's own (another session's bench may be building or
 * running its own revision meanwhile), removed at the end. `rev` is described with its commit.
 */
export function buildComparedRevision(ctx: BenchContext, rev: string): { rev: string; entry: BenchContext['serviceEntry'] } {
  const root = join(REPO_ROOT, 'node_modules', '.cache', `cops-bench-compare-${process.pid}`);
  ctx.harness.onCleanup(() => rmSync(root, { recursive: true, force: true }));
  const commit = execFileSync('git', ['rev-parse', '--short', rev], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
  return { rev: commit.startsWith(rev) ? commit : `${rev} (${commit})`, entry: buildRevision(rev, root) };
}

/** The bench Redis's persistence flags for --aof. */
function aofArgs(mode: string): string[] {
  if (mode === 'no') return ['--appendonly', 'no'];
  if (mode === 'everysec' || mode === 'always') return ['--appendonly', 'yes', '--appendfsync', mode];
  throw new Error(`--aof must be everysec, always or no, not '${mode}'`);
}

function gitDescription(ref: string | undefined): string {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', ref ?? 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    if (ref) return `${commit} (--ref ${ref})`;
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim() !== '';
    return `${commit}${dirty ? ' (work tree has changes)' : ''}`;
  } catch {
    return 'unknown';
  }
}

/**
 * Builds the service apart from the shared dist/ (others may be running or rebuilding it), into
 * bench/results/dist, refusing a tree that does not compile (--noEmitOnError). With --ref, a
 * committed revision is exported with `git archive` (read-only) and built the same way
 * (buildRevision).
 */
function buildService(values: SessionValues, serviceFrom: string): BenchContext['serviceEntry'] {
  if (values.src) return { api: ['--import', 'tsx', 'src/api/main.ts'], worker: ['--import', 'tsx', 'src/worker/main.ts'] };
  if (values.ref) return buildRevision(values.ref, join(REPO_ROOT, 'node_modules', '.cache', 'cops-bench-ref'));
  return build(REPO_ROOT, serviceFrom, values['no-build']);
}

/**
 * Exports a committed revision with `git archive` (read-only) into `root`, which it empties
 * first, and builds it there like the work tree. `root` belongs under node_modules: outside
 * tsconfig's `include` (the exported .ts files must not join the project's typecheck), and where
 * the build resolves the installed packages.
 */
export function buildRevision(rev: string, root: string): BenchContext['serviceEntry'] {
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  const archive = spawnSync('git', ['archive', '--format=tar', rev, 'src', 'tsconfig.json', 'tsconfig.build.json'], {
    cwd: REPO_ROOT,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (archive.status !== 0) throw new Error(`git archive ${rev} failed: ${archive.stderr.toString()}`);
  const untar = spawnSync('tar', ['-x', '-C', root], { input: archive.stdout });
  if (untar.status !== 0) throw new Error(`tar failed: ${untar.stderr.toString()}`);
  return build(root, `git ${rev}`, false);
}

function build(root: string, serviceFrom: string, noBuild: boolean): BenchContext['serviceEntry'] {
  const outDir = join(root === REPO_ROOT ? RESULTS_DIR : root, 'dist');
  if (!noBuild) {
    process.stdout.write(`building ${serviceFrom} into ${outDir.slice(REPO_ROOT.length)}\n`);
    const args = ['-p', join(root, 'tsconfig.build.json'), '--outDir', outDir, '--noEmitOnError', '--sourceMap', 'false'];
    const built =
      root === REPO_ROOT
        ? spawnSync('npm', ['run', 'build', '--silent', '--', ...args.slice(2)], { cwd: REPO_ROOT, stdio: 'inherit' })
        : spawnSync(process.execPath, [join(REPO_ROOT, 'node_modules/typescript/bin/tsc'), ...args], { cwd: REPO_ROOT, stdio: 'inherit' });
    if (built.status !== 0) throw new Error('the build failed; fix it, bench a committed revision with --ref HEAD, or use --src');
  }
  return { api: [join(outDir, 'api/main.js')], worker: [join(outDir, 'worker/main.js')] };
}
