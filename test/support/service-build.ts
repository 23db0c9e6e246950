import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { withTimeout } from './wait.js';

/**
 * The service as the tests run it in child processes: src/ compiled once per test run by
 * test/global-setup.ts with tsconfig.build.json (the same settings as `npm run build`), into a
 * directory of its own so it never fights a developer's `npm run build` over dist/. Starting a
 * compiled entry point takes a fraction of `node --import tsx src/...`, which compiled every
 * module on every start (over 15 s per process on a busy two-core machine).
 *
 * Inside the repository, so the compiled files resolve node_modules as dist/ does. Incremental:
 * a run with unchanged sources only checks the build info.
 */

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const SERVICE_BUILD_DIR = join(REPO_ROOT, '.test-dist');

/** The compiled entry points, by the name the tests use for them. */
export const BUILT_ENTRYPOINTS = {
  api: join(SERVICE_BUILD_DIR, 'api', 'main.js'),
  worker: join(SERVICE_BUILD_DIR, 'worker', 'main.js'),
  /** The API and a worker in one process (`npm start`). */
  both: join(SERVICE_BUILD_DIR, 'main.js'),
} as const;

/** A cold build takes about 5 s on an idle machine; this bounds a starved one. */
const BUILD_TIMEOUT_MS = 180_000;

export async function buildService(): Promise<void> {
  const tsc = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const args = [
    tsc,
    '-p', join(REPO_ROOT, 'tsconfig.build.json'),
    '--outDir', SERVICE_BUILD_DIR,
    '--incremental',
    '--tsBuildInfoFile', join(SERVICE_BUILD_DIR, '.tsbuildinfo'),
  ];
  const child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('exit', resolve);
    child.once('error', reject);
  });
  try {
    const code = await withTimeout(exited, BUILD_TIMEOUT_MS, () => `building the service for the tests took over ${BUILD_TIMEOUT_MS} ms`);
    if (code !== 0) throw new Error(`building the service for the tests failed (tsc exited ${code}):\n${output}`);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}
