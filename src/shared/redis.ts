import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { Logger } from './logger.js';

/** A single Redis or a Redis Cluster: both speak the commands and scripts this service uses. */
export type RedisClient = Redis | Cluster;

/**
 * `producer`: the API. Fails fast while Redis is away (no offline queue, a command timeout),
 * so a request answers 503 at once instead of hanging.
 * `consumer`: workers. Waits through outages (BullMQ requires `maxRetriesPerRequest: null`).
 * `subscriber`: a process's pub/sub connection (shared/subscriber.ts). Waits through outages and
 * subscribes again after them; on a cluster, sharded channels get one connection per master.
 */
export type RedisRole = 'producer' | 'consumer' | 'subscriber';

export interface RedisConnectionOptions {
  url: string;
  role: RedisRole;
  commandTimeoutMs?: number;
  connectionName?: string;
}

export function createRedis({ url, role, commandTimeoutMs, connectionName }: RedisConnectionOptions): RedisClient {
  const roleOptions: RedisOptions =
    role === 'producer'
      ? { enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: commandTimeoutMs }
      : { maxRetriesPerRequest: null };
  // Reconnect forever with a capped backoff: an outage must end with the process resuming on
  // its own, never with a process that gave up.
  const common: RedisOptions = {
    ...roleOptions,
    connectionName,
    retryStrategy: (times) => Math.min(times * 100, 2000),
  };

  const urls = url.split(',').map((part) => part.trim()).filter(Boolean);
  if (urls.length > 1) {
    const nodes = urls.map((nodeUrl) => {
      const parsed = new URL(nodeUrl);
      return { host: parsed.hostname, port: Number(parsed.port || 6379) };
    });
    const first = new URL(urls[0]!);
    const clusterOptions: ClusterOptions = {
      enableOfflineQueue: role !== 'producer',
      shardedSubscribers: role === 'subscriber',
      clusterRetryStrategy: (times) => Math.min(times * 100, 2000),
      // Every read from the master of its slot (ioredis's default, pinned on purpose): a worker
      // checks an operation's status before calling the processor, and a lagging replica could
      // answer `inprogress` for an operation that is already terminal.
      scaleReads: 'master',
      redisOptions: {
        ...common,
        username: first.username || undefined,
        password: first.password ? decodeURIComponent(first.password) : undefined,
        tls: first.protocol === 'rediss:' ? {} : undefined,
      },
    };
    return new Cluster(nodes, clusterOptions);
  }
  return new Redis(urls[0] ?? 'redis://127.0.0.1:6379', common);
}

/** REDIS_URL as it may be logged: each URL without its user name and password. */
export function redisUrlForLogs(url: string): string {
  return url
    .split(',')
    .map((part) => {
      try {
        const parsed = new URL(part.trim());
        parsed.username = '';
        parsed.password = '';
        return parsed.href.replace(/\/$/, '');
      } catch {
        return '(an unparseable URL)';
      }
    })
    .join(',');
}

/**
 * Logs a client's connection errors and resolves once it is ready. Until it has been ready once,
 * the first failure says what is waited for and where that comes from (REDIS_URL, without
 * credentials), and the retries after it are quiet (debug); once it has been ready, every
 * connection error is a warning: an outage.
 */
export async function connectRedis(client: RedisClient, url: string, log: Pick<Logger, 'warn' | 'info' | 'debug'>): Promise<void> {
  let connected = client.status === 'ready';
  let told = false;
  client.on('error', (error: Error) => {
    if (connected) {
      log.warn({ err: error.message }, 'redis connection error');
    } else if (!told) {
      told = true;
      const where = redisUrlForLogs(url);
      log.warn({ redis: where, err: error.message }, `waiting for Redis at ${where} (REDIS_URL): ${error.message}; retrying quietly until it answers`);
    } else {
      log.debug({ err: error.message }, 'redis still not answering');
    }
  });
  await waitUntilReady(client);
  connected = true;
  if (told) log.info({ redis: redisUrlForLogs(url) }, 'connected to Redis');
}

/** Resolves once the client is ready to take commands (ioredis keeps retrying meanwhile). */
export async function waitUntilReady(client: RedisClient): Promise<void> {
  if (client.status === 'ready') return;
  await new Promise<void>((resolve) => client.once('ready', () => resolve()));
}

/**
 * BullMQ and the store need Redis to never evict keys: an evicted job or record is a lost
 * operation. Warns (managed Redis may forbid CONFIG; then it says it could not check).
 */
export async function warnUnlessNoEviction(client: RedisClient, log: { warn(obj: object, msg: string): void }): Promise<void> {
  // On a cluster a keyless command goes to one node chosen at random: ask every master, since
  // any of them may hold operations and jobs.
  const targets: Redis[] = client instanceof Cluster ? client.nodes('master') : [client];
  for (const target of targets) {
    const node = `${target.options.host}:${target.options.port}`;
    try {
      const reply = (await target.call('CONFIG', 'GET', 'maxmemory-policy')) as string[];
      const policy = reply[1];
      if (policy !== 'noeviction') {
        log.warn({ policy, node }, `Redis maxmemory-policy is ${policy}; set it to noeviction, or Redis may evict operations and jobs`);
      }
    } catch (error) {
      log.warn({ err: error, node }, 'could not read Redis maxmemory-policy; make sure it is noeviction');
    }
  }
}
