import type { HttpBindings } from '@hono/node-server';
import { httpInstrumentationMiddleware } from '@hono/otel';
import { Hono, type MiddlewareHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { tracingOn } from '../shared/tracing.js';
import { ADMIN_BASE_PATH } from './admin.js';
import type { Authenticator } from './auth.js';
import { batchRoutes } from './batch.js';
import { CONNECTION_ROUTES } from './connection-routes.js';
import { connectionRoutes } from './connections.js';
import type { AppDeps, AppEnv } from './env.js';
import { GraphError, graphErrorOfHttpException, graphErrorResponse } from './errors.js';
import { observeRequests } from './observe-requests.js';
import { openApiRoutes } from './openapi.js';
import { OPERATION_ROUTES } from './operation-routes.js';
import { operationRoutes } from './operations.js';
import { operatorRoutes } from './operator-routes.js';

/** The Graph routes (connections and their operations) are served at the root and under these,
 *  so a Graph SDK pointed at `http://host:port/v1.0` works unchanged. */
const VERSION_PREFIXES = ['', '/v1.0', '/beta'];
/** The v1.0 path family and the beta one. */
const PATH_FAMILIES = ['/external/connections', '/connections'];
const GRAPH_BASES = VERSION_PREFIXES.flatMap((version) => PATH_FAMILIES.map((family) => `${version}${family}`));

export function createApp(deps: AppDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  // With tracing on, each request is a server span (continuing a W3C traceparent it carries),
  // outermost so that the request's log line names it. No header is recorded: not
  // Authorization, nor any other.
  if (tracingOn()) app.use(httpInstrumentationMiddleware({ captureRequestHeaders: [], captureResponseHeaders: [], captureActiveRequests: false }));
  app.use(observeRequests(deps.log, deps.metrics));
  app.route('/', operatorRoutes(deps));
  app.route('/', openApiRoutes());
  if (deps.admin) app.mount(ADMIN_BASE_PATH, deps.admin.fetch);

  const connections = connectionRoutes(deps);
  const operations = operationRoutes(deps);
  for (const base of GRAPH_BASES) {
    // `${base}/*` matches the base itself too (the connection list and create).
    app.use(`${base}/*`, authenticate(deps.auth));
    if (deps.rateLimit) app.use(`${base}/*`, deps.rateLimit);
    app.route(base, connections);
    app.route(base, operations);
  }

  // A batch's requests run through this same app (batch.ts).
  app.route('/', batchRoutes({ auth: deps.auth, dispatch: async (request) => app.fetch(request) }));

  app.notFound((c) => {
    // A known path with another method is 405, as Graph answers, not an unknown route. Answered
    // here rather than by app.all() routes, which would make Hono give up its RegExpRouter for
    // the slower TrieRouter on every request.
    const allow = allowedMethods(c.req.path);
    const error = allow
      ? new GraphError(405, 'methodNotAllowed', `${c.req.method} is not supported on this resource; use ${allow}.`, { Allow: allow })
      : new GraphError(404, 'notFound', `No route matches ${c.req.method} ${c.req.path}.`);
    return graphErrorResponse(c, error);
  });
  app.onError((error, c) => {
    // The client hung up (or Node cut off its stalled upload with a 408) before the body was
    // read: its doing, not a fault. Recorded as 499 (nginx's "client closed request"), at debug.
    if (clientWentAway(c.env)) {
      deps.log.debug({ err: error.message, requestId: c.get('requestId') }, 'client closed request');
      return new Response(null, { status: 499 });
    }
    // Hono's own middleware (basic auth on /admin/queues, the request validators) throws
    // HTTPException: the same Graph body, with its status and challenge header.
    if (error instanceof HTTPException) {
      const challenge = error.getResponse().headers.get('www-authenticate');
      return graphErrorResponse(c, graphErrorOfHttpException(error, c.req.header('content-type'), challenge));
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

/** Whether the request's connection closed before its body had arrived (served by
 *  @hono/node-server, c.env holds the Node request; under app.request it holds nothing). */
function clientWentAway(env: unknown): boolean {
  const incoming = (env as Partial<HttpBindings> | undefined)?.incoming;
  return incoming !== undefined && incoming.destroyed && !incoming.complete;
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

/** Each Graph route as a pattern over a whole path (any prefix and family), and its method.
 *  A path parameter never holds `$` or `%`, so `…/operations/$ref` is the create route's path
 *  only, not an operation id. A route at `/` is the family's path itself. */
const ALLOWED = [...CONNECTION_ROUTES, ...OPERATION_ROUTES].map((route) => ({
  method: route.method.toUpperCase(),
  path: new RegExp(
    `^(?:${GRAPH_BASES.map(escapeRegExp).join('|')})${(route.path === '/' ? '' : route.path).split(/\{[^}]+\}/).map(escapeRegExp).join('[^/$%]+')}$`,
  ),
}));

const BATCH_PATH = /^(?:\/v1\.0|\/beta)?\/(?:\$|%24)batch$/;

/** The methods a known path of the Graph routes accepts, or undefined for an unknown path. */
function allowedMethods(path: string): string | undefined {
  if (BATCH_PATH.test(path)) return 'POST';
  const methods = [...new Set(ALLOWED.filter((route) => route.path.test(path)).map((route) => route.method))];
  return methods.length > 0 ? methods.sort().join(', ') : undefined;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
