import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, relative } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { signToken, TEST_SECRET, uniquePrefix } from './support/context.js';
import { RunningProcess, serviceEnv, waitUntilReady, type ExitInfo } from './support/processes.js';
import { composeService, loadCompose, loadDockerfile, readRepoFile, REPO_ROOT } from './support/deployment.js';
import { dockerIgnored, envOf, execForm, healthcheckOf, instructionsOf, type Stage } from './support/dockerfile.js';
import { freePort } from '../scripts/lib/free-port.js';
import { pollUntil } from './support/wait.js';
import { logMessage } from './support/log-messages.js';

/**
 * The image, built without Docker: each stage of the Dockerfile is performed in a directory of
 * its own standing for the container's filesystem (WORKDIR, COPY from the build context or from
 * another stage, RUN), then the result runs as compose and the image's CMD would run it, from
 * another working directory, against the suite's Redis. What this proves: the build context
 * (.dockerignore applied) holds what the Dockerfile copies, dist/ builds from it, the production
 * dependencies alone run every role (a .ts PROCESSOR_MODULE included), the health checks pass,
 * and SIGTERM ends the processes with exit code 0.
 *
 * Both installs are real `npm ci` runs from the lockfile, with `--prefer-offline` (npm's cache;
 * on a cold cache they download from the npm registry: the full one about 190 MB). The only step
 * skipped is `npm cache clean` (it would empty the developer's cache). Any other RUN step makes
 * the test fail until it learns it. The USER switch cannot be checked without Docker.
 */

const execFileAsync = promisify(execFile);
const BUILD_TIMEOUT_MS = 240_000;
const CLEANUP_TIMEOUT_MS = 120_000;
const PROCESS_DEADLINE_MS = 20_000;
const CONNECTION_ID = 'dockerbuild';

const dockerfile = loadDockerfile();
const dockerignore = readRepoFile('.dockerignore');
const compose = loadCompose();
const finalStage: Stage = dockerfile.stages.at(-1)!;

let buildRoot: string;
/** The final stage's WORKDIR on this machine: where the image's `dist/` and `node_modules/` are. */
let appDir: string;
/** The working directory of the processes: not the app directory, with the .ts processor. */
let elsewhere: string;
let token: string;
const running: RunningProcess[] = [];

/** The environment for npm in the build directories: without the npm_* variables an enclosing
 *  `npm test` exports (npm_config_local_prefix names the repo), keeping the cache and config files. */
function npmEnv(): NodeJS.ProcessEnv {
  const keep = /^npm_config_(cache|userconfig|globalconfig|cafile|registry)$/i;
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name) || keep.test(name)));
  return { ...env, npm_config_update_notifier: 'false' };
}

/** One RUN step, as the Dockerfile writes it, performed in `cwd` (see the header). */
async function performRun(step: string, cwd: string): Promise<void> {
  const words = step.trim().split(/\s+/);
  if (words[0] !== 'npm') throw new Error(`the test does not know how to perform RUN ${step}`);
  const npm = (args: string[]) =>
    execFileAsync('npm', args, { cwd, env: npmEnv(), maxBuffer: 16 * 1024 * 1024 }).catch(
      (error: Error & { stdout?: string; stderr?: string }) => {
        throw new Error(`RUN ${step} failed in ${cwd}: ${error.message}\n${error.stdout ?? ''}\n${error.stderr ?? ''}`);
      },
    );
  if (words[1] === 'ci') {
    await npm([...words.slice(1), '--prefer-offline']);
  } else if (words[1] === 'run' && words[2] === 'build' && words.length === 3) {
    await npm(['run', 'build']);
  } else if (words[1] === 'cache' && words[2] === 'clean') {
    // Nothing to clean without image layers; running it would empty the developer's npm cache.
  } else {
    throw new Error(`the test does not know how to perform RUN ${step}`);
  }
}

/** Performs one stage in `root` (its `/`); `stageRoots` maps earlier stage names to their roots. */
async function performStage(stage: Stage, root: string, stageRoots: Map<string, string>): Promise<string> {
  let workdir = '/';
  const onHost = (path: string) => join(root, posix.resolve(workdir, path));
  mkdirSync(root, { recursive: true });
  for (const { keyword, args } of stage.instructions) {
    switch (keyword) {
      case 'WORKDIR':
        workdir = posix.resolve(workdir, args);
        mkdirSync(onHost('.'), { recursive: true });
        break;
      case 'COPY': {
        const words = args.split(/\s+/);
        const flags = words.filter((word) => word.startsWith('--'));
        const paths = words.filter((word) => !word.startsWith('--'));
        const from = flags.find((flag) => flag.startsWith('--from='))?.slice('--from='.length);
        const unknown = flags.filter((flag) => !flag.startsWith('--from='));
        if (unknown.length > 0) throw new Error(`the test does not know COPY ${unknown.join(' ')}`);
        const sourceRoot = from === undefined ? REPO_ROOT : stageRoots.get(from);
        if (sourceRoot === undefined) throw new Error(`COPY --from=${from}: no such stage`);
        const destination = paths.at(-1)!;
        const sourcePaths = paths.slice(0, -1);
        // From the build context, what .dockerignore leaves out is not there to copy.
        const inContext = (path: string) => from !== undefined || !dockerIgnored(dockerignore, relative(REPO_ROOT, path));
        for (const source of sourcePaths) {
          if (!inContext(join(sourceRoot, source))) throw new Error(`COPY ${source}: not in the build context (.dockerignore leaves it out)`);
        }
        const copy = (source: string, target: string) => cpSync(join(sourceRoot, source), target, { recursive: true, filter: inContext });
        if (sourcePaths.length > 1 || destination.endsWith('/')) {
          mkdirSync(onHost(destination), { recursive: true });
          for (const source of sourcePaths) copy(source, join(onHost(destination), basename(source)));
        } else {
          mkdirSync(dirname(onHost(destination)), { recursive: true });
          copy(sourcePaths[0]!, onHost(destination));
        }
        break;
      }
      case 'RUN':
        for (const step of args.split('&&')) await performRun(step, onHost('.'));
        break;
      case 'ENV':
      case 'USER':
      case 'EXPOSE':
      case 'HEALTHCHECK':
      case 'STOPSIGNAL':
      case 'CMD':
      case 'LABEL':
      case 'ARG':
        break; // read where they matter: by the tests below and test/compose.test.ts
      default:
        throw new Error(`the test does not know how to perform ${keyword} ${args}`);
    }
  }
  return onHost('.');
}

/** Starts `command` (`["node", "dist/..."]`, relative to the WORKDIR) as the image would, but
 *  from another working directory, with the image's ENV plus `env`. */
function startFromImage(name: string, command: string[], env: Record<string, string>): RunningProcess {
  const [executable, ...args] = command;
  expect(executable, `${name} runs node`).toBe('node');
  const child = new RunningProcess(
    name,
    process.execPath,
    args.map((arg) => (arg.startsWith('dist/') ? join(appDir, arg) : arg)),
    { cwd: elsewhere, env: serviceEnv({ ...envOf(finalStage), ...env }) },
  );
  running.push(child);
  return child;
}

/** Runs a health check command (`["node", "-e", "..."]`) the way Docker would run it inside the
 *  container, where the service's environment is the container's. */
async function runHealthcheck(command: string[], env: Record<string, string>): Promise<ExitInfo> {
  const check = startFromImage('health check', command, env);
  return check.waitForExit(10_000);
}

async function createOperation(port: number, id: string): Promise<void> {
  const response = await fetch(`http://127.0.0.1:${port}/v1.0/external/connections/${CONNECTION_ID}/operations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id }),
  });
  expect(response.status, await response.clone().text()).toBe(201);
}

async function terminalOperation(port: number, id: string, context: () => string): Promise<Record<string, unknown>> {
  return pollUntil(
    async () => {
      const response = await fetch(`http://127.0.0.1:${port}/v1.0/external/connections/${CONNECTION_ID}/operations/${id}`, {
        headers: { authorization: `Bearer ${token}` },
      });
      const body = (await response.json()) as Record<string, unknown>;
      return body.status === 'completed' || body.status === 'failed' ? body : undefined;
    },
    { timeoutMs: PROCESS_DEADLINE_MS, intervalMs: 100, what: `operation ${id} to finish`, context },
  );
}

/** Environment every process of a test shares: the suite's Redis under a key prefix of its own. */
function testEnv(): Record<string, string> {
  return {
    REDIS_URL: inject('redisUrl'),
    REDIS_PREFIX: uniquePrefix(),
    AUTH_JWT_SECRET: TEST_SECRET,
    HOST: '127.0.0.1',
    OPERATION_BACKOFF_MS: '50',
    SHUTDOWN_TIMEOUT_MS: '5000',
    LOG_LEVEL: 'info',
  };
}

beforeAll(async () => {
  buildRoot = mkdtempSync(join(tmpdir(), 'cops-docker-'));
  const stageRoots = new Map<string, string>();
  for (const [index, stage] of dockerfile.stages.entries()) {
    const name = stage.name ?? `stage${index}`;
    const workdir = await performStage(stage, join(buildRoot, name), stageRoots);
    stageRoots.set(name, join(buildRoot, name));
    appDir = workdir;
  }
  elsewhere = join(buildRoot, 'elsewhere');
  mkdirSync(elsewhere);
  // Type annotations make this a module plain node cannot load: the worker needs tsx for it.
  writeFileSync(
    join(elsewhere, 'processor.ts'),
    `interface Input { operation: { id: string } }
export default async function processOperation(input: Input): Promise<void> {
  if (input.operation.id.startsWith('fail-')) {
    const errorDetail: { errorCode: string; message: string; details: unknown[] } = { errorCode: 'refusedByTest', message: 'the test processor refuses fail- ids', details: [] };
    throw Object.assign(new Error(errorDetail.message), { errorDetail });
  }
}
`,
  );
  token = await signToken();
}, BUILD_TIMEOUT_MS);

afterEach(async () => {
  await Promise.all(running.splice(0).map((child) => child.kill()));
});

// The build holds a whole production node_modules: removing it takes seconds on an idle machine
// and more than the default hook timeout on a busy one (seen in a full run beside two other test
// runs). Asynchronous, so that a slow removal reports as this hook's timeout, not a stalled run.
afterAll(async () => {
  if (buildRoot) await rm(buildRoot, { recursive: true, force: true });
}, CLEANUP_TIMEOUT_MS);

describe('the Docker image, built by performing the Dockerfile without Docker', () => {
  it('holds every production dependency and none of the development-only ones, and nothing outside it can stand in', () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    const lock = JSON.parse(readFileSync(join(REPO_ROOT, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { dev?: boolean }>;
    };
    for (const name of Object.keys(pkg.dependencies)) expect(existsSync(join(appDir, 'node_modules', name)), name).toBe(true);
    // A dev dependency that a production package also needs (typescript, an optional peer of
    // valibot) is not dev-only: the lockfile says which are.
    const devOnly = Object.keys(pkg.devDependencies).filter((name) => lock.packages[`node_modules/${name}`]?.dev === true);
    expect(devOnly).toEqual(expect.arrayContaining(['pino-pretty', 'vitest']));
    for (const name of devOnly) expect(existsSync(join(appDir, 'node_modules', name)), name).toBe(false);
    expect(existsSync(join(appDir, 'dist', 'main.js'))).toBe(true);
    // Node resolves packages from the file's directory upwards: no node_modules above the app
    // may hide a missing production dependency.
    for (let dir = dirname(appDir); dir !== dirname(dir); dir = dirname(dir)) {
      expect(existsSync(join(dir, 'node_modules')), `${dir}/node_modules`).toBe(false);
    }
  });

  it('leaves local secrets and host-built files out of the build context', () => {
    for (const path of ['.env', '.env.production', 'node_modules', 'node_modules/x/index.js', 'dist', '.test-dist', '.git']) {
      expect(dockerIgnored(dockerignore, path), path).toBe(true);
    }
  });

  it("runs compose's api and worker commands from another directory: a .ts processor module decides, both health checks pass, SIGTERM exits 0", async () => {
    const env = testEnv();
    const apiPort = await freePort();
    const api = startFromImage('api', composeService(compose, 'api').command!, {
      ...composeService(compose, 'api').environment,
      ...env,
      PORT: String(apiPort),
    });
    const workerHealthPort = await freePort();
    const worker = startFromImage('worker', composeService(compose, 'worker').command!, {
      ...composeService(compose, 'worker').environment,
      ...env,
      WORKER_HEALTH_PORT: String(workerHealthPort),
      PROCESSOR_MODULE: './processor.ts',
    });
    const context = () => `${api.output()}\n${worker.output()}`;
    await waitUntilReady(api, `http://127.0.0.1:${apiPort}/readyz`, PROCESS_DEADLINE_MS);
    await worker.waitForLog((line) => line.msg === logMessage('worker started'), PROCESS_DEADLINE_MS, 'worker started');

    await createOperation(apiPort, 'ok-1');
    await createOperation(apiPort, 'fail-1');
    expect(await terminalOperation(apiPort, 'ok-1', context)).toMatchObject({ status: 'completed', error: null });
    expect(await terminalOperation(apiPort, 'fail-1', context)).toMatchObject({
      status: 'failed',
      error: { errorCode: 'refusedByTest', message: 'the test processor refuses fail- ids' },
    });

    const apiCheck = composeService(compose, 'api').healthcheck!.test;
    expect(apiCheck[0]).toBe('CMD');
    expect(await runHealthcheck(apiCheck.slice(1), { PORT: String(apiPort) }), 'api health check, API up').toEqual({ code: 0, signal: null });
    const closedPort = await freePort();
    expect(await runHealthcheck(apiCheck.slice(1), { PORT: String(closedPort) }), 'api health check, nothing listening').toEqual({ code: 1, signal: null });
    const workerCheck = composeService(compose, 'worker').healthcheck!.test;
    expect(workerCheck[0]).toBe('CMD');
    expect(await runHealthcheck(workerCheck.slice(1), { WORKER_HEALTH_PORT: String(workerHealthPort) }), 'worker health check, worker up').toEqual({
      code: 0,
      signal: null,
    });
    expect(await runHealthcheck(workerCheck.slice(1), { WORKER_HEALTH_PORT: String(closedPort) }), 'worker health check, nothing listening').toEqual({
      code: 1,
      signal: null,
    });

    api.signal('SIGTERM');
    worker.signal('SIGTERM');
    expect(await api.waitForExit(PROCESS_DEADLINE_MS), api.output()).toEqual({ code: 0, signal: null });
    expect(await worker.waitForExit(PROCESS_DEADLINE_MS), worker.output()).toEqual({ code: 0, signal: null });
    expect(api.stdout + worker.stdout).not.toMatch(/"level":(50|60)/);
  });

  it("runs the image's default command as the API and a worker in one process, serves /docs from the image, passes its health check and exits 0 on SIGTERM", async () => {
    const cmd = instructionsOf(finalStage, 'CMD').at(-1);
    const command = cmd && execForm(cmd.args);
    expect(command).toBeDefined();
    const port = await freePort();
    const service = startFromImage('image CMD', command!, { ...testEnv(), PORT: String(port) });
    await waitUntilReady(service, `http://127.0.0.1:${port}/readyz`, PROCESS_DEADLINE_MS);

    await createOperation(port, 'default-1');
    expect(await terminalOperation(port, 'default-1', () => service.output())).toMatchObject({ status: 'completed' });

    for (const path of ['/docs', '/docs/assets/swagger-ui.css', '/openapi.json']) {
      const response = await fetch(`http://127.0.0.1:${port}${path}`);
      await response.body?.cancel();
      expect(response.status, path).toBe(200);
    }

    const healthcheck = healthcheckOf(finalStage)!.command;
    expect(await runHealthcheck(healthcheck, { PORT: String(port) }), 'image health check, service up').toEqual({ code: 0, signal: null });
    expect(await runHealthcheck(healthcheck, { PORT: String(await freePort()) }), 'image health check, nothing listening').toEqual({
      code: 1,
      signal: null,
    });

    service.signal('SIGTERM');
    expect(await service.waitForExit(PROCESS_DEADLINE_MS), service.output()).toEqual({ code: 0, signal: null });
  });
});
