import { randomUUID } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import type { AppEnv } from './env.js';
import { hasRequestIds } from './respond.js';

const CLIENT_REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/** Gives every request its `request-id` (and echoes a sane `client-request-id`), then records
 *  its answer: one log line, and its duration by route template. */
export function observeRequests(log: Logger, metrics: Metrics | undefined): MiddlewareHandler<AppEnv> {
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
