import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../src/api/app.js';
import { CreateBatcher } from '../src/api/create-batcher.js';
import { createHttpServer } from '../src/api/http-server.js';
import { jwtAuthenticator } from '../src/api/jwt-auth.js';
import { Metrics } from '../src/shared/metrics.js';
import { createApiContext, type ApiContext } from './support/context.js';
import { rawRequest, type RawAnswer } from './support/raw-http.js';
import { pollUntil } from './support/wait.js';

/**
 * The HTTP edge over a real socket: what fetch cannot send (a client that hangs up mid-body, a
 * stalled upload, a Host that is no host, HTTP/1.0 without Host) gets the answer, log line and
 * metric the service means, not @hono/node-server's or Node's defaults.
 */

const REQUEST_TIMEOUT_MS = 600;
const PATH = '/v1.0/external/connections/contosohr/operations';

interface LogLine {
  level: number;
  msg: string;
  status?: number;
}

let ctx: ApiContext;
let server: Server;
let port: number;
const lines: LogLine[] = [];
const metrics = new Metrics({ processMetrics: false });

beforeAll(async () => {
  ctx = await createApiContext({ HTTP_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS) });
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
  const app = createApp({
    store: ctx.store,
    creates: new CreateBatcher(ctx.store, ctx.queue, log, { jobFollowsRecords: true }),
    connections: ctx.connections,
    queue: ctx.queue,
    watch: ctx.watch,
    auth: jwtAuthenticator(ctx.config),
    config: ctx.config,
    log,
    ready: () => Promise.resolve(true),
    metrics,
  });
  server = createHttpServer(app, ctx.config, log);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await ctx?.close();
});

function raw(request: string, options: { timeoutMs?: number } = {}): Promise<RawAnswer> {
  return rawRequest(port, request, options);
}

async function statusesCounted(): Promise<string[]> {
  const text = await metrics.registry.getSingleMetricAsString('http_request_duration_seconds').catch(() => '');
  return [...text.matchAll(/status="(\d+)"/g)].map((match) => match[1] ?? '');
}

describe('a client that goes away mid-body', () => {
  // A close (FIN) and a reset (RST, as curl --max-time may end it: ECONNRESET).
  for (const hangUp of ['close', 'reset'] as const) {
  it(`a client that disconnects mid-upload (${hangUp}) is logged below warn and recorded as 499, never as a 5xx`, async () => {
    const before = lines.length;
    const socket = connect(port, '127.0.0.1');
    await new Promise((resolve) => socket.on('connect', resolve));
    socket.on('error', () => undefined);
    socket.write(
      `POST ${PATH} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nauthorization: Bearer ${ctx.token}\r\n` +
        'content-type: application/json\r\ncontent-length: 100\r\n\r\n{}',
    );
    await new Promise((resolve) => setTimeout(resolve, 150));
    if (hangUp === 'reset') socket.resetAndDestroy();
    else socket.destroy();
    await pollUntil(() => lines.slice(before).some((line) => line.msg === 'request'), { timeoutMs: 3000, what: 'the request log line' });
    const mine = lines.slice(before);
    expect(mine.filter((line) => line.level >= 40)).toEqual([]);
    expect(mine.find((line) => line.msg === 'request')?.status).toBe(499);
    // The hang-up is the request's 499, not also a request the HTTP parser refused.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(lines.slice(before).filter((line) => line.msg.startsWith('request refused'))).toEqual([]);
    expect((await statusesCounted()).filter((status) => status.startsWith('5'))).toEqual([]);
  });
  }

  it('a stalled upload is ended after HTTP_REQUEST_TIMEOUT_MS (408), logged below warn and never counted as a 5xx', async () => {
    const before = lines.length;
    const started = performance.now();
    const answer = await raw(
      `POST ${PATH} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nauthorization: Bearer ${ctx.token}\r\n` +
        'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"id":',
      { timeoutMs: 5000 },
    );
    expect(answer.status).toBe(408);
    expect((JSON.parse(answer.body) as { error: { code: string } }).error.code).toBe('requestTimeout');
    expect(answer.headers['request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(performance.now() - started).toBeLessThan(REQUEST_TIMEOUT_MS + 2500);
    await pollUntil(() => lines.slice(before).some((line) => line.msg === 'request'), { timeoutMs: 3000, what: 'the request log line' });
    const mine = lines.slice(before);
    expect(mine.filter((line) => line.level >= 40)).toEqual([]);
    expect((await statusesCounted()).filter((status) => status.startsWith('5'))).toEqual([]);
  });
});

describe('requests refused before routing (by Node or @hono/node-server)', () => {
  const refused: Record<string, string> = {
    'a Host with a space': `GET /healthz HTTP/1.1\r\nHost: evil example\r\nConnection: close\r\n\r\n`,
    'a Host with userinfo': `GET /healthz HTTP/1.1\r\nHost: a@evil.example\r\nConnection: close\r\n\r\n`,
    'a Host no URL can carry (an empty punycode label)': `POST /external/connections/contosohr/operations HTTP/1.0\r\nHost: xn--\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
    'a backslash in the path': `GET /v1.0\\external/connections HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
    'HTTP/1.1 without Host': `GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n`,
    'a request target the HTTP parser refuses': `GET /a b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
    'OPTIONS *': `OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
    'a host-only request target': `GET example.com:80 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
  };
  for (const [name, request] of Object.entries(refused)) {
    it(`${name} gets Graph's 400 badRequest body with a request-id`, async () => {
      const answer = await raw(request);
      expect(answer.status).toBe(400);
      expect(answer.headers['content-type']).toMatch(/^application\/json/);
      expect(answer.headers['request-id']).toMatch(/^[0-9a-f-]{36}$/);
      const body = JSON.parse(answer.body) as { error: { code: string; message: string; innerError: Record<string, string> } };
      expect(body.error.code).toBe('badRequest');
      expect(body.error.message.length).toBeGreaterThan(0);
      expect(body.error.innerError['request-id']).toBe(answer.headers['request-id']);
    });
  }
});

describe('HTTP/1.0 without Host', () => {
  it('absolute URLs name the address and port the request came in on', async () => {
    const body = '{"id":"http10-no-host"}';
    const answer = await raw(
      `POST ${PATH} HTTP/1.0\r\nauthorization: Bearer ${ctx.token}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
    );
    expect(answer.status).toBe(201);
    expect(answer.headers['location']).toBe(`http://127.0.0.1:${port}${PATH}/http10-no-host`);
  });
});
