import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { GraphError } from './errors.js';

/** Bodies above this are refused with 413, from Content-Length or while streaming. */
export const MAX_BODY_BYTES = 1024 * 1024;

function tooLarge(): never {
  throw new GraphError(413, 'requestEntityTooLarge', `The request body is larger than ${MAX_BODY_BYTES} bytes (1 MiB).`);
}

const streamingLimit = bodyLimit({ maxSize: MAX_BODY_BYTES, onError: tooLarge });

/**
 * Refuses a body over MAX_BODY_BYTES. A declared Content-Length is checked from the header
 * alone; Hono's bodyLimit, which counts while streaming, serves bodies sent without one
 * (chunked). It is not used for every request because it reads c.req.raw.body, which makes
 * @hono/node-server build a full fetch Request.
 */
export const limitBody: MiddlewareHandler = async (c, next) => {
  const length = c.req.header('content-length');
  if (length === undefined || c.req.header('transfer-encoding') !== undefined) return streamingLimit(c, next);
  if (Number(length) > MAX_BODY_BYTES) tooLarge();
  await next();
};
