import type { Context, MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { GraphError } from './errors.js';

/** Bodies above this are refused with 413, from Content-Length or while streaming. */
export const MAX_BODY_BYTES = 1024 * 1024;

/**
 * Refuses a body over `maxBytes` (413). A declared Content-Length is checked from the header
 * alone; Hono's bodyLimit, which counts while streaming, serves bodies sent without one
 * (chunked). It is not used for every request because it reads c.req.raw.body, which makes
 * @hono/node-server build a full fetch Request.
 */
export function limitBodyTo(maxBytes: number): MiddlewareHandler {
  const tooLarge = (): never => {
    throw new GraphError(413, 'requestEntityTooLarge', `The request body is larger than ${maxBytes} bytes (${maxBytes / 1024 / 1024} MiB).`);
  };
  const streamingLimit = bodyLimit({ maxSize: maxBytes, onError: tooLarge });
  return async (c, next) => {
    const length = c.req.header('content-length');
    if (length === undefined || c.req.header('transfer-encoding') !== undefined) return streamingLimit(c, next);
    if (Number(length) > maxBytes) tooLarge();
    await next();
  };
}

/** The limit of an operation's body. */
export const limitBody = limitBodyTo(MAX_BODY_BYTES);

/**
 * Refuses a body sent with a Content-Encoding other than identity (415): the service does not
 * decode request bodies, and reading a gzip body as JSON would fail, or accept a body that is
 * labelled compressed but is not. One header read; a request without the header goes on.
 */
export function refuseEncodedBody(c: Context): void {
  const coding = c.req.header('content-encoding')?.trim();
  if (coding && coding.toLowerCase() !== 'identity') {
    throw new GraphError(415, 'unsupportedMediaType', `Content-Encoding '${coding}' is not supported; send the body uncompressed (identity).`);
  }
}
