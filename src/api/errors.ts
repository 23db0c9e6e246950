import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { AppEnv } from './env.js';
import { jsonResponse } from './respond.js';

/**
 * Every error the API answers is a GraphError, turned into Graph's error body in one place
 * (`graphErrorResponse`). Codes follow Microsoft Graph's.
 */
export class GraphError extends Error {
  override name = 'GraphError';
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Seconds a client should wait before retrying after a 503. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 1;

export const badRequest = (message: string) => new GraphError(400, 'badRequest', message);
export const notFound = (message: string) => new GraphError(404, 'itemNotFound', message);
export const serviceUnavailable = (message: string) =>
  new GraphError(503, 'serviceNotAvailable', message, { 'Retry-After': String(UNAVAILABLE_RETRY_AFTER_SECONDS) });

export function graphErrorResponse(c: Context<AppEnv>, error: GraphError): Response {
  const innerError: Record<string, string> = { date: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z') };
  const requestId: unknown = c.get('requestId');
  const clientRequestId: unknown = c.get('clientRequestId');
  if (typeof requestId === 'string') innerError['request-id'] = requestId;
  if (typeof clientRequestId === 'string') innerError['client-request-id'] = clientRequestId;
  return jsonResponse(c, { error: { code: error.code, message: error.message, innerError } }, error.status, error.headers);
}
