import type { Context, TypedResponse } from 'hono';
import type { AppEnv } from './env.js';

/** Responses that already carry the request's ids (the request-id middleware adds them to any
 *  other), with the JSON text of those that answer JSON, for a $batch that embeds it without
 *  reading the body back and parsing it again (api/batch.ts). One weak map for both: each
 *  entry on a short-lived response costs the garbage collector. */
const answered = new WeakMap<Response, string | undefined>();

/**
 * A JSON response carrying the request's ids and `headers`, with its headers as a plain object.
 * Hono's c.header(), or c.json() with more than one header, builds a fetch `Headers` object that
 * @hono/node-server then copies header by header; a plain object goes straight to writeHead.
 * Every answer of the operation routes, errors included, is built here. A header a middleware
 * sets with c.header() before next() would not reach these answers: pass it in `headers` instead
 * (eslint.config.js refuses c.header() in src/api, so the trap is a lint error, not a surprise).
 */
export function jsonResponse(c: Context<AppEnv>, body: unknown, status: number, headers: Record<string, string> = {}): JsonAnswer {
  return answer(c, JSON.stringify(body), status, 'application/json', headers, true);
}

export function jsonTextOf(response: Response): string | undefined {
  return answered.get(response);
}

/** Any answer of the operation routes (JSON, an event stream), with the request's ids. */
export function answer(
  c: Context<AppEnv>,
  body: string | ReadableStream<Uint8Array>,
  status: number,
  contentType: string,
  headers: Record<string, string> = {},
  isJson = false,
): JsonAnswer {
  const response = new Response(body, { status, headers: { 'content-type': contentType, ...idsOf(c), ...headers } });
  answered.set(response, isJson && typeof body === 'string' ? body : undefined);
  return response as JsonAnswer;
}

/** An answer without a body (a 202 whose Location says where to look), with the request's ids. */
export function emptyAnswer(c: Context<AppEnv>, status: number, headers: Record<string, string>): JsonAnswer {
  const response = new Response(null, { status, headers: { ...idsOf(c), ...headers } });
  answered.set(response, undefined);
  return response as JsonAnswer;
}

function idsOf(c: Context<AppEnv>): Record<string, string> {
  const ids: Record<string, string> = {};
  const requestId = c.get('requestId');
  const clientRequestId = c.get('clientRequestId');
  if (requestId) ids['request-id'] = requestId;
  if (clientRequestId) ids['client-request-id'] = clientRequestId;
  return ids;
}

/** What a route handler of @hono/zod-openapi may return: its answer's type is checked against
 *  the route's response schemas only in the OpenAPI document, not here (hence `any`). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type JsonAnswer = Response & TypedResponse<any, any, 'json'>;

export function hasRequestIds(response: Response): boolean {
  return answered.has(response);
}
