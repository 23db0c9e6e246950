import { Agent, request as httpRequest } from 'node:http';
import autocannon from 'autocannon';
import { SignJWT } from 'jose';
import type { Harness } from './harness.js';

/** The HS256 secret every service process of the bench verifies tokens with. */
export const JWT_SECRET = 'bench-secret-that-is-long-enough-for-hs256-0123456789';
/** The tenant of the bench's token (lower case, as the service stores it). */
export const TENANT_ID = '5b1a7c3e-0d1f-4e2a-9b8c-7d6e5f4a3b2c';

/** An application token allowed to create and read operations, valid for two hours. */
export async function benchToken(): Promise<string> {
  return new SignJWT({ tid: TENANT_ID, roles: ['ExternalConnection.ReadWrite.All'] })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime('2h')
    .sign(new TextEncoder().encode(JWT_SECRET));
}

export interface LoadOptions {
  url: string;
  token?: string;
  connections: number;
  /** Seconds; ignored when `amount` is set. */
  durationS?: number;
  amount?: number;
  /** Requests per second over all connections (autocannon `overallRate`). */
  overallRate?: number;
  /** Keep every response time (ms, float) for exact percentiles. */
  collectLatencies?: boolean;
  /** Made afresh for every request (unique ids); `{}` when not given. */
  body?: () => string;
  /** Called with every answer as it arrives. */
  onAnswer?: (answer: Answer) => void;
  /** Run until this settles instead of for `durationS` (ignored when `amount` is set). */
  until?: Promise<unknown>;
}

export interface Answer {
  status: number;
  body: string;
  /** ms from the request's dispatch to the end of its answer. */
  latencyMs: number;
  /** Which of the `connections` it came on (0-based, in order of first answer). */
  connection: number;
}

export interface LoadResult {
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  durationS: number;
  /** 2xx responses per second. */
  rps: number;
  /** autocannon's own histogram (ms). */
  p50: number;
  p99: number;
  latencies: number[];
  /** performance.now() of the last response: autocannon itself notices the end of an `amount`
   *  only at its next 1-second sample tick, so its own timing rounds up to whole seconds. */
  lastResponseAt: number;
}

/** POSTs `{}` (or what `body` makes) with autocannon; stopped by the harness on Ctrl-C. */
export async function postLoad(harness: Harness, options: LoadOptions): Promise<LoadResult> {
  const latencies: number[] = [];
  let lastResponseAt = Number.NaN;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  // autocannon hands the body to a request's onResponse and, right after, for the same answer,
  // the latency and the connection to the 'response' event: joined here into one Answer.
  let lastBody = '';
  const connections = new Map<unknown, number>();
  const onAnswer = options.onAnswer;
  const untilStopped = options.until !== undefined && options.amount === undefined;
  return new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url: options.url,
        method: 'POST',
        headers,
        body: '{}',
        ...(options.body || onAnswer
          ? {
              requests: [
                {
                  ...(options.body ? { setupRequest: (request: autocannon.Request) => ({ ...request, body: options.body!() }) } : {}),
                  ...(onAnswer ? { onResponse: (_status: number, body: string) => (lastBody = body) } : {}),
                },
              ],
            }
          : {}),
        connections: options.connections,
        // Stopped by `until`: a day is "until stopped".
        ...(options.amount !== undefined ? { amount: options.amount } : { duration: untilStopped ? 86_400 : (options.durationS ?? 5) }),
        ...(options.overallRate !== undefined ? { overallRate: options.overallRate } : {}),
        timeout: 30,
      },
      (error, result) => {
        forget();
        if (error) return reject(error instanceof Error ? error : new Error(String(error)));
        const durationS = result.duration;
        resolve({
          ok: result['2xx'],
          non2xx: result.non2xx,
          errors: result.errors,
          timeouts: result.timeouts,
          durationS,
          rps: result['2xx'] / durationS,
          p50: result.latency.p50,
          p99: result.latency.p99,
          latencies,
          lastResponseAt,
        });
      },
    );
    const collect = options.collectLatencies;
    instance.on('response', (client, statusCode, _bytes, responseTime) => {
      lastResponseAt = performance.now();
      if (collect && statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
      if (onAnswer) {
        let connection = connections.get(client);
        if (connection === undefined) connections.set(client, (connection = connections.size));
        onAnswer({ status: statusCode, body: lastBody, latencyMs: responseTime, connection });
        lastBody = '';
      }
    });
    const forget = harness.onCleanup(() => instance.stop());
    if (untilStopped) {
      const stop = () => instance.stop();
      options.until!.then(stop, stop);
    }
  });
}

export interface PacedOptions {
  url: string;
  token: string;
  /** Requests per second, evenly spaced. */
  rate: number;
  durationS: number;
  /** Keep-alive sockets at most (requests beyond them wait in the agent, and that wait counts). */
  connections: number;
}

export interface PacedResult {
  /** ms from dispatch to the end of each 2xx response. */
  latencies: number[];
  ok: number;
  non2xx: number;
  errors: number;
  rps: number;
}

/**
 * An open-loop load: POSTs dispatched at evenly spaced times (checked every millisecond), whatever
 * the answers do. autocannon's `overallRate` instead lets every connection fire as fast as it can
 * until its per-second quota is used and then pause until the next second, so "half the peak rate"
 * there is full-speed bursts half of each second, and its latencies are those of a saturated
 * server.
 */
export async function pacedPostLoad(harness: Harness, options: PacedOptions): Promise<PacedResult> {
  const target = new URL(options.url);
  const agent = new Agent({ keepAlive: true, maxSockets: options.connections });
  const headers = { 'content-type': 'application/json', 'content-length': '2', authorization: `Bearer ${options.token}` };
  const result: PacedResult = { latencies: [], ok: 0, non2xx: 0, errors: 0, rps: 0 };
  const total = Math.max(1, Math.round(options.rate * options.durationS));
  const intervalMs = 1000 / options.rate;
  let stopped = false;
  const forget = harness.onCleanup(() => {
    stopped = true;
    agent.destroy();
  });

  const post = () =>
    new Promise<void>((resolve) => {
      const sent = performance.now();
      const req = httpRequest(
        { host: target.hostname, port: target.port, path: target.pathname, method: 'POST', agent, headers },
        (res) => {
          res.resume();
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) {
              result.ok++;
              result.latencies.push(performance.now() - sent);
            } else {
              result.non2xx++;
            }
            resolve();
          });
          res.on('error', () => {
            result.errors++;
            resolve();
          });
        },
      );
      req.on('error', () => {
        result.errors++;
        resolve();
      });
      req.end('{}');
    });

  const started = performance.now();
  const inFlight: Promise<void>[] = [];
  await new Promise<void>((resolve) => {
    let dispatched = 0;
    const tick = () => {
      if (stopped) return resolve();
      const due = Math.min(total, Math.floor((performance.now() - started) / intervalMs) + 1);
      while (dispatched < due) {
        inFlight.push(post());
        dispatched++;
      }
      if (dispatched >= total) return resolve();
      setTimeout(tick, 1);
    };
    tick();
  });
  await Promise.all(inFlight);
  result.rps = result.ok / ((performance.now() - started) / 1000);
  forget();
  agent.destroy();
  return result;
}
