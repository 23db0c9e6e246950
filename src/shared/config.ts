import { z } from 'zod';

/**
 * Every environment variable the service reads, parsed once at the edge of each process.
 * A bad value stops the process with a message that names the variable (see `loadConfig`).
 */

const positiveInt = z.coerce.number().int().positive();
const nonNegativeInt = z.coerce.number().int().nonnegative();
const optionalString = z
  .string()
  .optional()
  .transform((value) => (value === '' ? undefined : value));
const booleanString = z
  .enum(['true', 'false', '1', '0', ''])
  .default('false')
  .transform((value) => value === 'true' || value === '1');

const DAY_SECONDS = 24 * 60 * 60;

export const configSchema = z.object({
  /** API listen port and address. */
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  HOST: z.string().min(1).default('0.0.0.0'),
  /** How long a request's headers and body may take to arrive before Node answers 408 and
   *  closes the connection (a stalled or trickling upload). */
  HTTP_REQUEST_TIMEOUT_MS: positiveInt.default(30_000),
  /** How long an idle keep-alive connection stays open: longer than the idle timeout of a load
   *  balancer in front (60 s on AWS ALB), so the balancer closes first. */
  HTTP_KEEP_ALIVE_TIMEOUT_MS: positiveInt.default(65_000),

  /** How often an operation's event stream sends a keep-alive comment (at most 15 s). */
  STREAM_KEEP_ALIVE_MS: positiveInt.max(15_000).default(15_000),

  /** Redis URL; a Redis Cluster is given as a comma-separated list of node URLs. */
  REDIS_URL: z
    .string()
    .default('redis://127.0.0.1:6379')
    .refine(
      (value) => value.split(',').every((url) => /^rediss?:\/\//.test(url.trim())),
      'must be redis:// or rediss:// URLs, comma-separated for a cluster',
    ),
  /** First segment of every Redis key this service writes (store and BullMQ), so that several
   *  deployments or test runs can share one Redis. Letters, digits, `-` and `_` only. */
  REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,32}$/, 'must be 1-32 letters, digits, - or _')
    .default('cops'),
  /** How long an API request waits for Redis before answering 503. */
  REDIS_COMMAND_TIMEOUT_MS: positiveInt.default(500),

  /** Token validation: HS256 secret and/or a JWKS URL for RS256/ES256. */
  AUTH_JWT_SECRET: optionalString,
  AUTH_JWKS_URL: optionalString.pipe(z.url().optional()),
  AUTH_AUDIENCE: optionalString,
  AUTH_ISSUER: optionalString,
  /** Seconds a token is still accepted past its `exp` (and before its `nbf`), for clocks that
   *  disagree a little. */
  AUTH_CLOCK_TOLERANCE_SECONDS: nonNegativeInt.max(300).default(30),

  /** Requests per second each tenant may make, shared by all API instances; unset = no limit. */
  RATE_LIMIT_PER_TENANT: positiveInt.optional(),

  /** Processing: an HTTP endpoint (with an optional HMAC secret) or a JS/TS module. */
  PROCESSOR_URL: optionalString.pipe(z.url().optional()),
  PROCESSOR_SECRET: optionalString,
  PROCESSOR_MODULE: optionalString,
  /** How long the HTTP processor waits for an answer before the attempt counts as failed. */
  PROCESSOR_TIMEOUT_MS: positiveInt.default(30_000),

  /** Attempts in total per operation, and the first backoff delay (doubled each retry). */
  OPERATION_ATTEMPTS: positiveInt.max(100).default(5),
  OPERATION_BACKOFF_MS: nonNegativeInt.default(1000),
  /** How long a terminal operation stays readable. */
  OPERATION_RETENTION_SECONDS: positiveInt.default(7 * DAY_SECONDS),

  /** Queues the operations are spread over (each its own Redis Cluster slot, so load spreads
   *  over the cluster's masters); workers consume every shard. Keep it the same everywhere. */
  QUEUE_SHARDS: positiveInt.max(64).default(1),
  /** Worker processes serve /healthz (is it still consuming?) and /readyz on this port when set. */
  WORKER_HEALTH_PORT: z.coerce.number().int().min(0).max(65535).optional(),

  /** Processor calls in flight per worker process (see README, Performance). */
  WORKER_CONCURRENCY: positiveInt.max(1000).default(100),
  /** BullMQ job lock duration and stalled-job check interval: a job whose worker died is
   *  picked up again after at most about lock + interval. */
  WORKER_LOCK_DURATION_MS: positiveInt.default(30_000),
  WORKER_STALLED_INTERVAL_MS: positiveInt.default(30_000),
  /** How often a worker looks for inprogress operations whose job is missing, and how old
   *  such an operation must be before it is re-enqueued. */
  RECONCILE_INTERVAL_MS: positiveInt.default(15_000),
  RECONCILE_AFTER_MS: positiveInt.default(30_000),
  /** How long SIGTERM waits for in-flight requests and jobs before exiting anyway. */
  SHUTDOWN_TIMEOUT_MS: positiveInt.default(25_000),

  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** `pretty` is for development only (needs the pino-pretty dev dependency). */
  LOG_FORMAT: z.enum(['json', 'pretty']).default('json'),

  /** When set, GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`. */
  METRICS_TOKEN: optionalString,
  /** Bull Board at /admin/queues: served only when both are set, behind basic auth; read-only
   *  unless ADMIN_READ_ONLY=false. */
  ADMIN_USER: optionalString,
  ADMIN_PASSWORD: optionalString,
  ADMIN_READ_ONLY: z
    .enum(['true', 'false', '1', '0', ''])
    .default('true')
    .transform((value) => value !== 'false' && value !== '0'),

  /** How absolute URLs (Location, @odata.nextLink) are built. */
  PUBLIC_BASE_URL: optionalString.pipe(z.url().optional()),
  TRUST_PROXY: booleanString,
}).superRefine((config, context) => {
  // One without the other would start without the dashboard and say nothing about it.
  if (config.ADMIN_USER && !config.ADMIN_PASSWORD) {
    context.addIssue({ code: 'custom', path: ['ADMIN_PASSWORD'], message: 'ADMIN_USER is set without ADMIN_PASSWORD; set both to serve /admin/queues, or neither' });
  }
  if (config.ADMIN_PASSWORD && !config.ADMIN_USER) {
    context.addIssue({ code: 'custom', path: ['ADMIN_USER'], message: 'ADMIN_PASSWORD is set without ADMIN_USER; set both to serve /admin/queues, or neither' });
  }
});

export type Config = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Parses the environment; throws a ConfigError naming every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const parsed = configSchema.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(`Invalid configuration:\n  ${problems.join('\n  ')}`);
  }
  return parsed.data;
}
