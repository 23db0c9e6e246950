import type { Context } from 'hono';
import type { HTTPException } from 'hono/http-exception';
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
    /** Graph's finer answer, where it gives one: `innerError.code` (the schema rule broken) and
     *  `details` (every problem found, when there are several). */
    readonly inner: { code?: string; details?: GraphErrorDetail[] } = {},
  ) {
    super(message);
  }
}

export interface GraphErrorDetail {
  code: string;
  message: string;
  target: string;
}

/** Seconds a client should wait before retrying after a 503. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 1;

export const badRequest = (message: string) => new GraphError(400, 'badRequest', message);
export const unsupportedMediaType = (contentType: string | undefined) =>
  new GraphError(415, 'unsupportedMediaType', `Content-Type must be application/json, not '${contentType ?? 'none'}'.`);
export const malformedJson = () => badRequest('The request body is not valid JSON.');
export const notFound = (message: string) => new GraphError(404, 'itemNotFound', message);
export const serviceUnavailable = (message: string) =>
  new GraphError(503, 'serviceNotAvailable', message, { 'Retry-After': String(UNAVAILABLE_RETRY_AFTER_SECONDS) });

/** Runs a Redis call; a Redis that is down, slow or refusing becomes a 503 with Retry-After. */
export async function unlessRedisFails<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw Object.assign(serviceUnavailable('The store is unavailable; retry shortly.'), { cause: error });
  }
}

export function graphErrorResponse(c: Context<AppEnv>, error: GraphError): Response {
  const innerError: Record<string, string> = {};
  if (error.inner.code) innerError.code = error.inner.code;
  innerError.date = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
  const requestId: unknown = c.get('requestId');
  const clientRequestId: unknown = c.get('clientRequestId');
  if (typeof requestId === 'string') innerError['request-id'] = requestId;
  if (typeof clientRequestId === 'string') innerError['client-request-id'] = clientRequestId;
  const details = error.inner.details ? { details: error.inner.details } : {};
  return jsonResponse(c, { error: { code: error.code, message: error.message, ...details, innerError } }, error.status, error.headers);
}

/** Hono's own HTTPExceptions (basic auth on /admin/queues, the request validators), as the
 *  Graph error a client of this API expects. */
export function graphErrorOfHttpException(error: HTTPException, contentType: string | undefined, challenge: string | null): GraphError {
  const status = error.status;
  if (status === 415) return unsupportedMediaType(contentType);
  if (status === 400 && /malformed json/i.test(error.message)) return malformedJson();
  const code = status === 401 ? 'unauthenticated' : status === 413 ? 'requestEntityTooLarge' : 'badRequest';
  // Basic auth refuses with no message of its own: only the dashboard asks for it.
  const message =
    status === 401 && challenge?.startsWith('Basic')
      ? 'The admin dashboard needs Basic credentials: the ADMIN_USER and ADMIN_PASSWORD the service was started with.'
      : error.message || 'The request was refused.';
  return new GraphError(status, code, message, challenge ? { 'WWW-Authenticate': challenge } : {});
}
