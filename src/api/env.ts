import type { Hono, MiddlewareHandler } from 'hono';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { ConnectionStore } from '../shared/connection-store.js';
import type { Metrics } from '../shared/metrics.js';
import type { OperationQueue } from '../shared/queue.js';
import type { OperationStore } from '../shared/store.js';
import type { Authenticator, Principal } from './auth.js';
import type { OperationCreator } from './create-batcher.js';
import type { OperationWatch } from './operation-watch.js';

/** What every request handler may read from its context. */
export interface AppEnv {
  Variables: {
    requestId: string;
    clientRequestId: string | undefined;
    principal: Principal;
  };
}

/** What the API app is built from (api/server.ts wires the real ones; tests wire their own). */
export interface AppDeps {
  store: OperationStore;
  creates: OperationCreator;
  /** Connections, their schemas, and the operations that provision and delete them. */
  connections: ConnectionStore;
  /** Where a schema or delete operation gets its job. */
  queue: Pick<OperationQueue, 'enqueue'>;
  /** Follows operations for the requests that wait for them and the event streams. */
  watch: OperationWatch;
  auth: Authenticator;
  config: Pick<Config, 'PUBLIC_BASE_URL' | 'TRUST_PROXY' | 'METRICS_TOKEN' | 'STREAM_KEEP_ALIVE_MS'>;
  log: Logger;
  /** Whether the process can serve requests now (Redis answers). */
  ready: () => Promise<boolean>;
  /** Runs after authentication on every operation route (the per-tenant rate limit). */
  rateLimit?: MiddlewareHandler<AppEnv>;
  /** Served at /metrics when given. */
  metrics?: Metrics;
  /** The Bull Board routes (with their own basic auth), served at /admin/queues when given. */
  admin?: Hono;
}
