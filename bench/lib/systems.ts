import type { Redis } from 'ioredis';
import { NAIVE_COMPLETED_KEY, naiveOperationKey } from '../baselines/naive.js';
import { RAW_COMPLETED_KEY } from '../baselines/raw-bullmq.js';
import { freePort } from '../../scripts/lib/free-port.js';
import { answersOk } from '../../scripts/lib/http-ok.js';
import { createKeys } from '../../src/shared/keys.js';
import { waitFor, type Child, type Harness } from './harness.js';
import { JWT_SECRET, TENANT_ID } from './load.js';

/**
 * The systems under test, each started as real processes on 127.0.0.1:
 *   service  the API (api/main.js of the build) and one worker (worker/main.js, built-in processor)
 *   naive    bench/baselines/naive.ts api + worker
 *   bare     bench/baselines/bare-hono.ts (HTTP only)
 *   raw      bench/baselines/raw-bullmq.ts worker (jobs are added by the bench itself)
 */
export type TargetKind = 'service' | 'naive' | 'bare' | 'raw';

export const SERVICE_PREFIX = 'cops';
export const serviceKeys = createKeys(SERVICE_PREFIX);

export interface BenchContext {
  harness: Harness;
  redisUrl: string;
  /** The bench's own client, for polling and INFO. */
  redis: Redis;
  redisPid: number;
  token: string;
  /** Node arguments that run the service's API and worker (built JS, or sources through tsx). */
  serviceEntry: { api: string[]; worker: string[] };
  /** Extra environment for the service's processes only (`--env KEY=VALUE`), for experiments. */
  serviceEnv: Record<string, string>;
  /** With --tracing, the OTEL_* environment of the traced service (not of a --compare ref). */
  tracingEnv: Record<string, string>;
  log: (line: string) => void;
  /** Runs disturbed by more than this much foreign CPU (percent of a core) are repeated… */
  maxOtherLoadPct: number;
  /** …at most this many times (see leastDisturbed). */
  retries: number;
  /** True once a signal stops the session: nothing is tried again then. */
  stopping(): boolean;
}

export interface StartOptions {
  api?: boolean;
  worker?: boolean;
  /** Extra node flags (such as --cpu-prof) per process. */
  apiNodeArgs?: string[];
  workerNodeArgs?: string[];
  env?: Record<string, string>;
  /** For `service`: run this build instead of ctx.serviceEntry (another revision)… */
  entry?: BenchContext['serviceEntry'];
  /** …named so in process names and logs (`service` otherwise). */
  label?: string;
  /** For `service`: its REDIS_PREFIX (SERVICE_PREFIX otherwise), so that two services can share
   *  one Redis with a queue and records each. */
  prefix?: string;
}

export interface System {
  kind: TargetKind;
  api?: Child;
  worker?: Child;
  /** Base URL of the API (empty for `raw`). */
  baseUrl: string;
  postUrl(connectionId: string): string;
  /** Operations that reached a terminal status (for the service: in that connection). */
  terminal(connectionId: string): Promise<number>;
  /** The stored status of one operation, read straight from Redis. */
  status(connectionId: string, operationId: string): Promise<string | null>;
  stop(): Promise<void>;
}

export async function startSystem(ctx: BenchContext, kind: TargetKind, options: StartOptions = {}): Promise<System> {
  const { harness } = ctx;
  const wantApi = kind !== 'raw' && options.api !== false;
  const wantWorker = (kind === 'service' || kind === 'naive' || kind === 'raw') && options.worker !== false;
  const port = await freePort();
  // The service worker's health server answers /readyz once it consumes (revisions without one,
  // or LOG_LEVEL above info, are told apart by the 'worker started' line or by it).
  const healthPort = await freePort();
  const env = {
    REDIS_URL: ctx.redisUrl,
    PORT: String(port),
    HOST: '127.0.0.1',
    NODE_ENV: 'production',
    ...options.env,
  };
  const serviceEnv = {
    ...env,
    AUTH_JWT_SECRET: JWT_SECRET,
    LOG_LEVEL: 'info',
    REDIS_PREFIX: options.prefix ?? SERVICE_PREFIX,
    WORKER_HEALTH_PORT: String(healthPort),
    ...ctx.serviceEnv,
    ...(options.entry ? {} : ctx.tracingEnv),
    ...options.env,
  };

  let api: Child | undefined;
  let worker: Child | undefined;
  const apiArgs = options.apiNodeArgs ?? [];
  const entry = options.entry ?? ctx.serviceEntry;
  const label = options.label ?? 'service';
  const workerArgs = options.workerNodeArgs ?? [];
  if (wantWorker) {
    worker =
      kind === 'service'
        ? harness.spawnNode(`${label}-worker`, [...workerArgs, ...entry.worker], serviceEnv)
        : harness.spawnNode(`${kind}-worker`, [...workerArgs, '--import', 'tsx', `bench/baselines/${kind === 'naive' ? 'naive.ts' : 'raw-bullmq.ts'}`, 'worker'], env);
  }
  if (wantApi) {
    api =
      kind === 'service'
        ? harness.spawnNode(`${label}-api`, [...apiArgs, ...entry.api], serviceEnv)
        : kind === 'naive'
          ? harness.spawnNode('naive-api', [...apiArgs, '--import', 'tsx', 'bench/baselines/naive.ts', 'api'], env)
          : harness.spawnNode('bare-api', [...apiArgs, '--import', 'tsx', 'bench/baselines/bare-hono.ts'], env);
  }
  const baseUrl = api ? `http://127.0.0.1:${port}` : '';
  const stop = async () => {
    await Promise.all([api?.stop(), worker?.stop()]);
  };

  try {
    if (api) {
      const readyUrl = `${baseUrl}${kind === 'service' ? '/readyz' : '/healthz'}`;
      const child = api;
      await waitFor(
        async () => {
          if (!child.running) throw new Error(`${child.name} exited before it was ready\n${child.describe()}`);
          return answersOk(readyUrl);
        },
        { timeoutMs: 30_000, what: `${child.name} on ${readyUrl}`, context: () => child.describe() },
      );
    }
    if (worker) {
      const child = worker;
      const healthUrl = `http://127.0.0.1:${healthPort}/readyz`;
      await waitFor(
        async () => {
          if (!child.running) throw new Error(`${child.name} exited before it started\n${child.describe()}`);
          if (/"msg":"worker started"/.test(child.logText())) return true;
          if (kind !== 'service') return false;
          return answersOk(healthUrl);
        },
        { timeoutMs: 30_000, what: `${child.name} to log 'worker started' or answer ${healthUrl}`, context: () => child.describe() },
      );
    }
  } catch (error) {
    await stop();
    throw error;
  }

  const keys = options.prefix ? createKeys(options.prefix) : serviceKeys;
  const ref = (connectionId: string) => ({ tenantId: TENANT_ID, connectionId });
  const counterKey = kind === 'naive' ? NAIVE_COMPLETED_KEY : RAW_COMPLETED_KEY;
  return {
    kind,
    ...(api ? { api } : {}),
    ...(worker ? { worker } : {}),
    baseUrl,
    postUrl: (connectionId) => `${baseUrl}/v1.0/external/connections/${connectionId}/operations`,
    async terminal(connectionId) {
      if (kind === 'service') {
        const replies = await ctx.redis
          .pipeline()
          .zcard(keys.statusIndex(ref(connectionId), 'completed'))
          .zcard(keys.statusIndex(ref(connectionId), 'failed'))
          .exec();
        return (replies ?? []).reduce((sum, [, value]) => sum + Number(value ?? 0), 0);
      }
      return Number((await ctx.redis.get(counterKey)) ?? 0);
    },
    async status(connectionId, operationId) {
      const key =
        kind === 'service' ? keys.operation({ ...ref(connectionId), operationId }) : naiveOperationKey(operationId);
      return ctx.redis.hget(key, 's');
    },
    stop,
  };
}
