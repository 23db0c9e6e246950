import { randomUUID } from 'node:crypto';
import { Hono, type MiddlewareHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { scrapeAllowed, type Metrics } from '../shared/metrics.js';
import type { OperationStore } from '../shared/store.js';
import type { Authenticator, Principal } from './auth.js';
import type { Creates } from './create-batcher.js';
import { GraphError, graphErrorResponse, serviceUnavailable } from './errors.js';
import { ADMIN_BASE_PATH } from './admin.js';
import { openApiRoutes } from './openapi.js';
import { operationRoutes } from './operations.js';
import { hasRequestIds } from './respond.js';

export interface AppDeps {
  store: OperationStore;
  creates: Creates;
  auth: Authenticator;
  config: Pick<Config, 'PUBLIC_BASE_URL' | 'TRUST_PROXY' | 'METRICS_TOKEN'>;
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

export interface AppEnv {
  Variables: {
    requestId: string;
    clientRequestId: string | undefined;
    principal: Principal;
  };
}

/** Every route is served at the root and under these, so a Graph SDK pointed at
 *  `http://host:port/v1.0` works unchanged. */
const VERSION_PREFIXES = ['', '/v1.0', '/beta'];
/** The v1.0 path family and the beta one. */
const PATH_FAMILIES = ['/external/connections', '/connections'];
const CLIENT_REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

export function createApp(deps: AppDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.use(requestIds(deps.log, deps.metrics));

  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  if (deps.metrics) app.get('/metrics', metricsEndpoint(deps.metrics, deps.config.METRICS_TOKEN));
  app.route('/', openApiRoutes(VERSION_PREFIXES.flatMap((version) => PATH_FAMILIES.map((family) => `${version}${family}`))));
  if (deps.admin) app.route(ADMIN_BASE_PATH, deps.admin);
  app.get('/readyz', async (c) => {
    if (await deps.ready()) return c.json({ status: 'ready' });
    throw serviceUnavailable('Redis is not answering.');
  });

  const operations = operationRoutes(deps);
  for (const version of VERSION_PREFIXES) {
    for (const family of PATH_FAMILIES) {
      const base = `${version}${family}`;
      app.use(`${base}/*`, authenticate(deps.auth));
      if (deps.rateLimit) app.use(`${base}/*`, deps.rateLimit);
      app.route(base, operations);
    }
  }

  app.notFound((c) => {
    // A known path with another method is 405, as Graph answers, not an unknown route. (Found
    // here rather than with app.all() routes: those made Hono fall back from its RegExpRouter
    // to the slower TrieRouter for every request.)
    const allow = allowedMethods(c.req.path);
    const error = allow
      ? new GraphError(405, 'methodNotAllowed', `${c.req.method} is not supported on this resource; use ${allow}.`, { Allow: allow })
      : new GraphError(404, 'notFound', `No route matches ${c.req.method} ${c.req.path}.`);
    return graphErrorResponse(c, error);
  });
  app.onError((error, c) => {
    // Hono's own middleware (basic auth on /admin/queues) throws HTTPException: same Graph
    // body, with its status and challenge header.
    if (error instanceof HTTPException) {
      const challenge = error.getResponse().headers.get('www-authenticate');
      const status = error.status as ContentfulStatusCode;
      const code = status === 401 ? 'unauthenticated' : status === 413 ? 'requestEntityTooLarge' : 'badRequest';
      return graphErrorResponse(c, new GraphError(status, code, error.message || 'The request was refused.', challenge ? { 'WWW-Authenticate': challenge } : {}));
    }
    if (error instanceof GraphError) {
      if (error.status >= 500) deps.log.warn({ err: error.cause ?? error, requestId: c.get('requestId') }, error.message);
      return graphErrorResponse(c, error);
    }
    deps.log.error({ err: error, requestId: c.get('requestId') }, 'unhandled error');
    return graphErrorResponse(c, new GraphError(500, 'generalException', 'An unexpected error occurred; the request-id identifies it in the logs.'));
  });
  return app;
}

/** Gives every response a `request-id`, echoes `client-request-id`, logs one line per request
 *  and records its duration by route template. */
function requestIds(log: Logger, metrics: Metrics | undefined): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const started = performance.now();
    const requestId = randomUUID();
    const clientRequestId = c.req.header('client-request-id');
    c.set('requestId', requestId);
    const echoed = clientRequestId && CLIENT_REQUEST_ID.test(clientRequestId) ? clientRequestId : undefined;
    c.set('clientRequestId', echoed);
    await next();
    // jsonResponse() answers carry the ids already (set here before next(), every response would
    // pay for a fetch Headers object); the others (docs, metrics, the dashboard) get them now.
    if (!hasRequestIds(c.res)) {
      c.header('request-id', requestId);
      if (echoed) c.header('client-request-id', echoed);
    }
    const seconds = (performance.now() - started) / 1000;
    const route = c.req.routePath;
    log.info({ requestId, method: c.req.method, route, status: c.res.status, durationMs: Math.round(seconds * 100_000) / 100 }, 'request');
    metrics?.httpDuration.observe({ method: c.req.method, route, status: c.res.status }, seconds);
  };
}

function authenticate(auth: Authenticator): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const principal = await auth.authenticate(c.req.header('authorization'));
    if (!principal.canRead) {
      throw new GraphError(403, 'accessDenied', 'The token grants no ExternalConnection permission.');
    }
    c.set('principal', principal);
    await next();
  };
}

function metricsEndpoint(metrics: Metrics, token: string | undefined): MiddlewareHandler<AppEnv> {
  return async (c) => {
    if (!scrapeAllowed(c.req.header('authorization'), token)) {
      throw new GraphError(401, 'InvalidAuthenticationToken', 'GET /metrics needs Authorization: Bearer <METRICS_TOKEN>.', {
        'WWW-Authenticate': 'Bearer realm="metrics"',
      });
    }
    return c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType });
  };
}

const OPERATIONS_PATH = /^(?:\/v1\.0|\/beta)?(?:\/external)?\/connections\/[^/]+\/operations(\/(?:\$ref|%24ref)|\/[^/]+)?$/;

/** The methods a known operations path accepts, or undefined for an unknown path. */
function allowedMethods(path: string): string | undefined {
  const match = OPERATIONS_PATH.exec(path);
  if (!match) return undefined;
  if (!match[1]) return 'GET, POST';
  return /^\/(\$ref|%24ref)$/.test(match[1]) ? 'POST' : 'GET';
}
