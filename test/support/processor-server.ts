import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A real HTTP processor for end-to-end tests: it answers 200 after a delay, so operations are
 * in flight long enough for a test to kill a worker mid-job (or cancel one: a delay may be a
 * minute, and a call the worker closes first is recorded as aborted, never answered), and
 * records every call: what it was for (kind, the schema to provision) as well as which operation.
 * A test may have it answer some calls otherwise (`answer`: a 4xx refusal with an error body).
 *
 * Each worker gets its own URL, `http://127.0.0.1:<port>/<worker>?delayMs=<n>`, so the server
 * knows which worker sent each call and which calls each worker has in flight.
 */

export interface ProcessorCall {
  operationId: string;
  tenantId: string;
  connectionId: string;
  /** What the worker said the operation is for: `operation`, `schema`, `deleteConnection`. */
  kind: string;
  /** The schema to provision (kind `schema`), as the worker sent it. */
  schema?: unknown;
  /** The path segment of the URL the worker was given. */
  worker: string;
  attempt: number;
  /** The W3C traceparent header the call carried (the worker traces, see shared/tracing.ts). */
  traceparent: string | undefined;
  receivedAt: number;
  /** When the answer was written; undefined while in flight. */
  answeredAt?: number;
  /** The status answered (200 unless `answer` chose another). */
  answeredStatus?: number;
  /** When the worker closed the request before it was answered (it aborted the call, or it
   *  died); the call is never answered then. */
  abortedAt?: number;
}

/** An answer other than the 200 with `{}`: its status, and a body sent as JSON. */
export interface ProcessorAnswer {
  status: number;
  body?: unknown;
}

export interface ProcessorServer {
  /** The PROCESSOR_URL for one worker. */
  urlFor(worker: string, delayMs: number): string;
  readonly calls: ProcessorCall[];
  /** Calls still open (neither answered nor aborted), optionally of one worker. */
  inFlight(worker?: string): ProcessorCall[];
  /** How many times the processor was called for each operation id. */
  timesSeen(): Map<string, number>;
  /** Runs synchronously after each call is recorded (a test can kill a worker at an exact moment). */
  onCall: ((call: ProcessorCall) => void) | undefined;
  /** Chooses the answer to a call, after its delay; undefined (or no function): 200 with `{}`. */
  answer: ((call: ProcessorCall) => ProcessorAnswer | undefined) | undefined;
  /** Forgets every call (between tests). */
  reset(): void;
  close(): Promise<void>;
}

export async function startProcessorServer(): Promise<ProcessorServer> {
  let calls: ProcessorCall[] = [];
  const inFlight = new Set<ProcessorCall>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://processor');
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    let body: { kind?: unknown; schema?: unknown; tenantId?: unknown; connectionId?: unknown; operation?: { id?: unknown }; attempt?: unknown };
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof body;
    } catch {
      res.writeHead(400).end();
      return;
    }
    const call: ProcessorCall = {
      operationId: String(body.operation?.id),
      tenantId: String(body.tenantId),
      connectionId: String(body.connectionId),
      kind: String(body.kind),
      ...(body.schema === undefined ? {} : { schema: body.schema }),
      worker: url.pathname.slice(1),
      attempt: Number(body.attempt),
      traceparent: typeof req.headers.traceparent === 'string' ? req.headers.traceparent : undefined,
      receivedAt: Date.now(),
    };
    calls.push(call);
    inFlight.add(call);
    server.onCall?.(call);
    const delayMs = Number(url.searchParams.get('delayMs') ?? 0);
    const answer = setTimeout(() => {
      inFlight.delete(call);
      const { status, body: reply = {} } = server.answer?.(call) ?? { status: 200 };
      call.answeredAt = Date.now();
      call.answeredStatus = status;
      // A worker that closed the request while its body was read is not seen below; writing to
      // its closed socket is harmless.
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
    }, delayMs);
    // 'close' also follows a written answer; before one, the worker closed the request (it
    // aborted the call, or it was killed): recorded, and never answered.
    res.once('close', () => {
      if (call.answeredAt !== undefined) return;
      clearTimeout(answer);
      inFlight.delete(call);
      call.abortedAt = Date.now();
    });
  };

  const http = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  const { port } = http.address() as AddressInfo;

  const server: ProcessorServer = {
    urlFor: (worker, delayMs) => `http://127.0.0.1:${port}/${worker}?delayMs=${delayMs}`,
    get calls() {
      return calls;
    },
    inFlight: (worker) => [...inFlight].filter((call) => worker === undefined || call.worker === worker),
    timesSeen() {
      const seen = new Map<string, number>();
      for (const call of calls) seen.set(call.operationId, (seen.get(call.operationId) ?? 0) + 1);
      return seen;
    },
    onCall: undefined,
    answer: undefined,
    reset() {
      calls = [];
      inFlight.clear();
      server.onCall = undefined;
      server.answer = undefined;
    },
    async close() {
      const closed = new Promise<void>((resolve) => http.close(() => resolve()));
      http.closeAllConnections();
      await closed;
    },
  };
  return server;
}
