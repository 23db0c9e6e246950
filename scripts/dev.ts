/**
 * `npm run dev`: the whole stack on a laptop in one command, for someone who just cloned the repo.
 *
 * 1. Redis: REDIS_URL (default redis://127.0.0.1:6379) when it answers; otherwise a throwaway
 *    `redis-server` on a free port, in a temporary directory, stopped and removed on exit. Without
 *    a redis-server binary it says how to get one and exits 1.
 * 2. Auth: AUTH_JWT_SECRET from the shell or .env, or a random one for this run; prints a
 *    ready-to-paste token (ExternalConnection.ReadWrite.All) and curl commands to try the API.
 * 3. Keys: a REDIS_PREFIX of this run's own (`dev-<random>`), so a dev stack never joins the
 *    queue of another instance on the same Redis (whose workers would take its jobs, and its
 *    processor decide them); on a Redis it did not start, the run's keys are deleted on exit.
 *    REDIS_PREFIX from the shell is used as it is, and its keys stay.
 * 4. Runs the API and a worker in one process (src/main.ts) under `tsx watch`, so edits restart
 *    them, with pretty logs (LOG_FORMAT=pretty unless set).
 *
 * Configuration: the shell's environment, then .env in the working directory (as the service
 * reads it); every variable of src/shared/config.ts works. HOST, PORT, LOG_FORMAT,
 * SHUTDOWN_TIMEOUT_MS and REDIS_PREFIX are dev's own choice unless the shell sets them: .env
 * (copied from .env.example) holds deployment values for them (0.0.0.0, 3000, json, 25 s, a
 * shared prefix), which are the wrong ones for a dev stack.
 *
 * Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP are forwarded once to `tsx watch`, which relays
 * them to the service; a second one makes tsx kill the service at once. The children run in
 * process groups of their own, so a terminal's Ctrl-C reaches the service exactly once (through
 * this script) and the throwaway redis-server outlives the service's shutdown, which still needs it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseEnv } from 'node:util';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import { ConfigError, loadConfig, type Config } from '../src/shared/config.js';
import { RedisServerNotFound, startRedisServer, type RedisServer } from './lib/redis-server.js';
import { answersOk } from './lib/http-ok.js';
import { redisAnswers } from './redis-answers.js';

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSX_CLI = createRequire(import.meta.url).resolve('tsx/cli');
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
const DEV_TENANT = '11111111-1111-4111-8111-111111111111';
const DEV_SCOPE = 'ExternalConnection.ReadWrite.All';
const DEV_CONNECTION = 'devconnection';
const TOKEN_LIFETIME = '12h';
/** tsx watch SIGKILLs a service that has not exited 5 s after a restart or a signal. */
const DEV_SHUTDOWN_TIMEOUT_MS = '4000';
const READY_DEADLINE_MS = 60_000;

const REDIS_INSTALL_HELP = `No Redis answers and no redis-server is installed. Get one of:
  Debian/Ubuntu:  sudo apt-get install redis-server
  macOS:          brew install redis
  Docker:         docker run -p 6379:6379 redis:7
then run \`npm run dev\` again (or set REDIS_URL to a Redis you have).`;

let redisServer: RedisServer | undefined;
let service: ChildProcess | undefined;
let stopping = false;
/** This run's own keys, deleted on exit: REDIS_URL and REDIS_PREFIX, unless the shell chose the prefix. */
let ownKeys: { redisUrl: string; prefix: string } | undefined;

function say(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/** A port the OS says is free right now on `host`, or undefined when `port` is taken. */
async function listenable(port: number, host: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, host, () => {
      const address = server.address();
      const chosen = typeof address === 'object' && address ? address.port : undefined;
      server.close(() => resolve(chosen));
    });
  });
}

function localBaseUrl(config: Config): string {
  const wildcard = ['0.0.0.0', '::', '127.0.0.1', 'localhost'].includes(config.HOST);
  const host = wildcard ? '127.0.0.1' : config.HOST.includes(':') ? `[${config.HOST}]` : config.HOST;
  return `http://${host}:${config.PORT}`;
}

async function devToken(config: Config, secret: string): Promise<string> {
  let token = new SignJWT({ tid: DEV_TENANT, scp: DEV_SCOPE })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime(TOKEN_LIFETIME);
  if (config.AUTH_AUDIENCE) token = token.setAudience(config.AUTH_AUDIENCE);
  if (config.AUTH_ISSUER) token = token.setIssuer(config.AUTH_ISSUER);
  return token.sign(new TextEncoder().encode(secret));
}

async function waitUntilReady(base: string): Promise<void> {
  const deadline = Date.now() + READY_DEADLINE_MS;
  while (!stopping && service && service.exitCode === null) {
    if (await answersOk(`${base}/readyz`)) {
      say(`\n[dev] ready: ${base} (Ctrl-C stops everything)\n`);
      return;
    }
    if (Date.now() > deadline) {
      say(`[dev] the API did not answer ${base}/readyz within ${READY_DEADLINE_MS / 1000} s; see the logs above`);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** The variables of ./.env, or none when there is no such file. Not put into process.env: the
 *  caller decides what wins. */
function readEnvFile(): Record<string, string> {
  let text: string;
  try {
    text = readFileSync('.env', 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw error;
  }
  return parseEnv(text) as Record<string, string>;
}

/** Deletes this run's keys (best effort: a cluster's other nodes are not scanned). */
async function deleteOwnKeys(): Promise<void> {
  if (!ownKeys) return;
  const { redisUrl, prefix } = ownKeys;
  ownKeys = undefined;
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  redis.on('error', () => {});
  try {
    await redis.connect();
    let deleted = 0;
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) deleted += await redis.unlink(...keys);
    } while (cursor !== '0');
    say(`[dev] deleted this run's ${deleted} keys (REDIS_PREFIX=${prefix})`);
  } catch (error) {
    say(`[dev] could not delete this run's keys (REDIS_PREFIX=${prefix}): ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    redis.disconnect();
  }
}

async function cleanupAndExit(code: number): Promise<never> {
  await deleteOwnKeys();
  if (redisServer) {
    const { pid } = redisServer;
    await redisServer.destroy();
    say(`[dev] stopped the throwaway redis-server (pid ${pid})`);
    redisServer = undefined;
  }
  process.exit(code);
}

/** A signal this soon after the first is the same Ctrl-C arriving twice (`npm run dev` puts npm,
 *  sh and tsx in the terminal's process group, and tsx relays what it gets), not a second press. */
const DUPLICATE_SIGNAL_MS = 1000;
let firstSignalAt = 0;

function onSignal(signal: NodeJS.Signals): void {
  const now = Date.now();
  if (stopping && now - firstSignalAt < DUPLICATE_SIGNAL_MS) return;
  if (!stopping) firstSignalAt = now;
  if (service && service.exitCode === null && service.signalCode === null) {
    if (stopping) say(`[dev] ${signal} again: stopping at once`);
    stopping = true;
    // tsx watch ignores SIGHUP: forward a hangup (terminal closed) as SIGTERM.
    service.kill(signal === 'SIGHUP' ? 'SIGTERM' : signal);
    return;
  }
  // Before the service starts (or after it stopped): main() and the exit handler clean up.
  stopping = true;
}

async function main(): Promise<void> {
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => onSignal(signal));
  // Last resort when this script exits any other way (an exception): leave no orphans.
  process.on('exit', () => {
    if (service?.pid && service.exitCode === null && service.signalCode === null) {
      try {
        process.kill(-service.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    redisServer?.killNow();
  });

  const shell: Record<string, string | undefined> = { ...process.env };
  const fromFile = readEnvFile();
  const env: Record<string, string | undefined> = { ...fromFile, ...shell };
  // Dev's own choices below win over .env; the shell wins over dev.
  for (const name of ['HOST', 'PORT', 'LOG_FORMAT', 'SHUTDOWN_TIMEOUT_MS', 'REDIS_PREFIX']) env[name] = shell[name];
  const envFileLine = Object.keys(fromFile).length > 0 ? `./.env (${Object.keys(fromFile).length} variables; your shell's win)` : 'your shell (no ./.env)';

  const requestedRedis = env.REDIS_URL || DEFAULT_REDIS_URL;
  const firstNode = requestedRedis.split(',')[0]?.trim() ?? requestedRedis;
  let redisLine: string;
  if (await redisAnswers(firstNode)) {
    env.REDIS_URL = requestedRedis;
    redisLine = `${requestedRedis} (answered)`;
  } else {
    say(`[dev] no Redis answers at ${firstNode}; starting a throwaway redis-server`);
    try {
      redisServer = await startRedisServer([], { detached: true });
    } catch (error) {
      if (!(error instanceof RedisServerNotFound)) throw error;
      process.stderr.write(`${REDIS_INSTALL_HELP}\n`);
      process.exit(1);
    }
    env.REDIS_URL = redisServer.url;
    redisLine = `${redisServer.url} (throwaway redis-server, pid ${redisServer.pid}; stopped and deleted on exit)`;
  }
  if (stopping) return cleanupAndExit(0);

  const generatedSecret = !env.AUTH_JWT_SECRET;
  const secret = env.AUTH_JWT_SECRET || randomBytes(32).toString('base64url');
  env.AUTH_JWT_SECRET = secret;
  env.LOG_FORMAT ||= 'pretty';
  env.HOST ||= '127.0.0.1';
  env.SHUTDOWN_TIMEOUT_MS ||= DEV_SHUTDOWN_TIMEOUT_MS;
  const prefixFromShell = Boolean(env.REDIS_PREFIX);
  env.REDIS_PREFIX ||= `dev-${randomBytes(4).toString('hex')}`;
  let portLine = '';
  if (!env.PORT) {
    const free = (await listenable(3000, env.HOST)) ?? (await listenable(0, env.HOST));
    if (free !== 3000) portLine = ` (3000 is taken; set PORT to choose)`;
    env.PORT = String(free ?? 3000);
  }

  if (stopping) return cleanupAndExit(0);
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`[dev] ${error.message}\n`);
    return cleanupAndExit(1);
  }

  // On a Redis of others, this run's keys go with it. (Not on a throwaway Redis, deleted anyway,
  // nor on a cluster, whose keys one node's SCAN does not list.)
  const deletesKeys = !prefixFromShell && !redisServer && !requestedRedis.includes(',');
  if (deletesKeys) ownKeys = { redisUrl: firstNode, prefix: config.REDIS_PREFIX };
  const keysLine = prefixFromShell
    ? '(from your shell; its keys stay)'
    : `(this run's own: no other instance on this Redis takes its jobs${deletesKeys ? '; its keys are deleted on exit' : ''})`;
  const base = localBaseUrl(config);
  const token = await devToken(config, secret);
  const id = `try-${randomBytes(3).toString('hex')}`;
  const operations = `${base}/v1.0/external/connections/${DEV_CONNECTION}/operations`;
  say(`
[dev] connection-operations dev stack
  Redis   ${redisLine}
  Keys    REDIS_PREFIX=${config.REDIS_PREFIX} ${keysLine}
  Config  ${envFileLine}
  API     ${base}${portLine}, API reference at ${base}/docs
  Auth    ${generatedSecret ? 'AUTH_JWT_SECRET generated for this run (export it to keep tokens valid across runs):' : `AUTH_JWT_SECRET from ${shell.AUTH_JWT_SECRET ? 'your shell' : './.env'}`}
${generatedSecret ? `          export AUTH_JWT_SECRET=${secret}\n` : ''}
A token for tenant ${DEV_TENANT}, scope ${DEV_SCOPE}, valid ${TOKEN_LIFETIME} (more with \`npm run token\`):

export TOKEN=${token}

Create an operation, then poll it until it is completed:

curl -si -X POST ${operations} -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"id":"${id}"}'
curl -s ${operations}/${id} -H "Authorization: Bearer $TOKEN"

[dev] starting the API and a worker (src/main.ts) under tsx watch: saving a file under src/ restarts them
`);

  if (stopping) return cleanupAndExit(0);
  service = spawn(
    process.execPath,
    [TSX_CLI, 'watch', '--clear-screen=false', '--tsconfig', join(REPO_ROOT, 'tsconfig.json'), join(REPO_ROOT, 'src', 'main.ts')],
    // Own process group (see the header); no stdin, which a background group may not read.
    { env, stdio: ['ignore', 'inherit', 'inherit'], detached: true },
  );
  say(`[dev] tsx watch runs as pid ${service.pid}`);
  service.once('exit', (code, signal) => {
    say(`[dev] the service stopped (${signal ?? `exit code ${code}`})`);
    void cleanupAndExit(code ?? 1);
  });
  await waitUntilReady(base);
}

main().catch(async (error: unknown) => {
  process.stderr.write(`[dev] ${error instanceof Error ? error.message : String(error)}\n`);
  await cleanupAndExit(1);
});
