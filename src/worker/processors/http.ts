import { createHmac } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import { Agent, request } from 'undici';
import { z } from 'zod';
import { errorDetailSchema, type ErrorDetail } from '../../shared/operation.js';
import { OperationFailure, TransientFailure, type Processor } from '../processor.js';

export interface HttpProcessorOptions {
  url: string;
  /** When set, each request carries `X-Signature: sha256=<hex HMAC-SHA256 of the body>`. */
  secret?: string | undefined;
  timeoutMs: number;
}

/** Statuses that say "try again later" rather than "this operation is wrong". */
const RETRYABLE_STATUSES = new Set([408, 429]);

/** Graph's error body, as a processor may answer it (publicError's fields). */
const graphErrorSchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    target: z.string().optional(),
    details: z.array(z.object({ code: z.string().optional(), message: z.string().optional(), target: z.string().optional() })).optional(),
  }),
});

/**
 * POSTs `{ kind, schema?, tenantId, connectionId, operation, attempt }` to the processor URL.
 * 2xx: completed. 4xx (but 408/429): failed at once, with the errorDetail from the body.
 * 408, 429, 5xx, timeouts and network errors: retried.
 *
 * Sent with undici's `request` over a keep-alive pool, not `fetch`: fetch's WHATWG Request,
 * Response and stream objects cost several times the CPU per call, and the HTTP call is most of
 * an operation's work.
 * `timeoutMs` bounds the whole attempt: connecting, the answer and its body.
 */
export function httpProcessor({ url, secret, timeoutMs }: HttpProcessorOptions): Processor {
  const pool = new Agent();
  return async ({ kind, schema, tenantId, connectionId, operation, attempt, signal }) => {
    const body = JSON.stringify({ kind, ...(schema ? { schema } : {}), tenantId, connectionId, operation, attempt });
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (secret) headers['x-signature'] = `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;

    const deadline = AbortSignal.timeout(timeoutMs);
    let response: { status: number; text: string };
    try {
      const { statusCode, body: reply } = await request(url, {
        method: 'POST',
        headers,
        body,
        signal: AbortSignal.any([signal, deadline]),
        dispatcher: pool,
      });
      // A body cut short (the deadline, a reset) reads as empty: the status decides.
      response = { status: statusCode, text: await reply.text().catch(() => '') };
    } catch (error) {
      if (deadline.aborted) {
        throw new TransientFailure('processorTimeout', `the processor did not answer within ${timeoutMs} ms`);
      }
      const reason = error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error);
      throw new TransientFailure('processorUnreachable', `the processor could not be reached (${reason})`);
    }

    const { status, text } = response;
    if (status >= 200 && status < 300) return;
    const answered = `the processor answered ${status} ${STATUS_CODES[status] ?? ''}`.trim();
    if (status >= 500 || RETRYABLE_STATUSES.has(status)) {
      throw new TransientFailure('processorUnavailable', answered);
    }
    throw new OperationFailure(errorDetailFromBody(text) ?? {
      errorCode: 'processorRejected',
      message: `${answered}${text ? `: ${text.slice(0, 500)}` : ''}`,
      details: [],
    });
  };
}

/** A 4xx body is either an errorDetail or a Graph error; anything else is not trusted. */
function errorDetailFromBody(text: string): ErrorDetail | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const detail = errorDetailSchema.safeParse(json);
  if (detail.success) return detail.data;
  const graph = graphErrorSchema.safeParse(json);
  if (graph.success) {
    const { code, message, target, details = [] } = graph.data.error;
    return { errorCode: code, message, ...(target === undefined ? {} : { target }), details };
  }
  return undefined;
}
