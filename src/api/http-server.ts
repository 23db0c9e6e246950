import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { RequestError, getRequestListener } from '@hono/node-server';
import type { Hono } from 'hono';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { AppEnv } from './env.js';

type ServerConfig = Pick<Config, 'HTTP_REQUEST_TIMEOUT_MS' | 'HTTP_KEEP_ALIVE_TIMEOUT_MS'>;

/** The longest the request line and headers may take (never more than the whole request). */
const HEADERS_TIMEOUT_MS = 20_000;

/**
 * The Node HTTP server that carries the app (not yet listening), with the service's own timeouts
 * and with the requests @hono/node-server refuses before routing answered in Graph's error shape.
 *
 * - requestTimeout: a request (headers and body) must arrive within HTTP_REQUEST_TIMEOUT_MS, or
 *   Node answers 408 and closes the connection: a stalled or trickling upload holds a connection
 *   for that long, not Node's default 5 minutes.
 * - headersTimeout: at most 20 s (and never more than requestTimeout) for the headers.
 * - keepAliveTimeout: an idle keep-alive connection stays open HTTP_KEEP_ALIVE_TIMEOUT_MS, longer
 *   than a load balancer's idle timeout (60 s on AWS ALB), so the balancer closes it first and
 *   never sends a request on a connection this server is closing.
 */
export function createHttpServer(app: Hono<AppEnv>, config: ServerConfig, log: Logger): Server {
  const requestTimeout = config.HTTP_REQUEST_TIMEOUT_MS;
  const listener = getRequestListener(app.fetch, {
    errorHandler: (error) => {
      // A Host that is no host, a backslash in the path, `OPTIONS *`, a host-only target:
      // refused before the app sees it, with Graph's body and a request-id like any other error.
      if (error instanceof RequestError) {
        const requestId = randomUUID();
        log.info({ requestId, status: 400, err: error.message }, 'request refused before routing');
        return graphError(requestId, 400, 'badRequest', `The request is malformed: ${error.message}.`);
      }
      // app.fetch answers its own errors (app.onError): this is a fault of the adapter itself.
      const requestId = randomUUID();
      log.error({ requestId, err: error }, 'unhandled error');
      return graphError(requestId, 500, 'generalException', 'An unexpected error occurred; the request-id identifies it in the logs.');
    },
  });
  const server = createServer(
    {
      requestTimeout,
      headersTimeout: Math.min(HEADERS_TIMEOUT_MS, requestTimeout),
      keepAliveTimeout: config.HTTP_KEEP_ALIVE_TIMEOUT_MS,
      // Checked below instead, to answer it in Graph's shape.
      requireHostHeader: false,
      // Node checks the two timeouts this often (default 30 s): a tenth of the request timeout.
      connectionsCheckingInterval: Math.min(30_000, Math.max(10, Math.ceil(requestTimeout / 10))),
    },
    (incoming: IncomingMessage, outgoing: ServerResponse) => {
      if (incoming.headers.host === undefined) {
        // HTTP/1.1 must send Host (RFC 9112 3.2): refused as Node would, in Graph's shape.
        if (incoming.httpVersion !== '1.0') {
          const requestId = randomUUID();
          log.info({ requestId, status: 400, err: 'no Host header' }, 'request refused before routing');
          outgoing.writeHead(400, { 'content-type': 'application/json', 'request-id': requestId, connection: 'close' });
          outgoing.end(graphErrorBody(requestId, 'badRequest', 'The request has no Host header.'));
          return;
        }
        // HTTP/1.0 may omit it: absolute URLs then name the address and port the request came in
        // on, not a configured hostname without the port.
        incoming.headers.host = localAuthority(incoming);
      } else if (!isUsableHost(incoming.headers.host)) {
        // A Host no URL can carry (`xn--`, a bad IDN): absolute URLs could not be built for it,
        // and the adapter does not refuse it. Refused before any work, as a missing Host is.
        const requestId = randomUUID();
        log.info({ requestId, status: 400, err: 'unusable Host header' }, 'request refused before routing');
        outgoing.writeHead(400, { 'content-type': 'application/json', 'request-id': requestId, connection: 'close' });
        outgoing.end(graphErrorBody(requestId, 'badRequest', 'The Host header is not a host name a URL can carry.'));
        return;
      }
      void listener(incoming, outgoing);
    },
  );
  // What Node's HTTP parser refuses itself (a host-only request target, a bad header, headers too
  // large) and a request cut off by requestTimeout: Node's default answer is a bare status line;
  // this one is the same status with Graph's body and a request-id.
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    // The client closed or reset the connection (mid-body, say): nothing to answer, and the
    // request, if it reached the app, is recorded there as 499.
    if (HUNG_UP.has(error.code ?? '')) {
      log.debug({ err: error.code }, 'client closed connection');
      socket.destroy();
      return;
    }
    if (socket.writable && (socket as Duplex & { bytesWritten?: number }).bytesWritten === 0) {
      const [status, code, message] = CLIENT_ERRORS[error.code ?? ''] ?? [400, 'badRequest', 'The request is malformed HTTP.'];
      const requestId = randomUUID();
      log.info({ requestId, status, err: error.code ?? error.message }, 'request refused by the HTTP parser');
      const body = graphErrorBody(requestId, code, message);
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
          `request-id: ${requestId}\r\nConnection: close\r\n\r\n${body}`,
      );
    }
    socket.destroy();
  });
  return server;
}

/** Hosts already seen to parse as a URL's host: one Map lookup per request, not a URL parse. */
const usableHosts = new Map<string, boolean>();

function isUsableHost(host: string): boolean {
  let usable = usableHosts.get(host);
  if (usable === undefined) {
    usable = URL.canParse(`http://${host}/`);
    if (usableHosts.size >= 1000) usableHosts.clear();
    usableHosts.set(host, usable);
  }
  return usable;
}

/** A connection the client ended: EOF in the middle of a request, or a reset. */
const HUNG_UP = new Set(['HPE_INVALID_EOF_STATE', 'ECONNRESET', 'EPIPE']);

/** Node's own answers to a client error (see socketOnError in node:_http_server), as Graph errors. */
const CLIENT_ERRORS: Record<string, [number, string, string]> = {
  HPE_HEADER_OVERFLOW: [431, 'requestHeaderFieldsTooLarge', 'The request headers are too large.'],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [413, 'requestEntityTooLarge', 'The chunk extensions are too large.'],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'requestTimeout', 'The request did not arrive in time.'],
};
const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 413: 'Payload Too Large', 431: 'Request Header Fields Too Large' };

function localAuthority(incoming: IncomingMessage): string {
  const { localAddress, localPort } = incoming.socket;
  if (!localAddress) return 'localhost';
  const address = localAddress.startsWith('::ffff:') ? localAddress.slice(7) : localAddress;
  return `${address.includes(':') ? `[${address}]` : address}:${localPort}`;
}

function graphError(requestId: string, status: number, code: string, message: string): Response {
  const body = graphErrorBody(requestId, code, message);
  return new Response(body, { status, headers: { 'content-type': 'application/json', 'request-id': requestId } });
}

/** Graph's error body (as errors.ts builds it) for an answer given without the app's context. */
function graphErrorBody(requestId: string, code: string, message: string): string {
  const date = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
  return JSON.stringify({ error: { code, message, innerError: { date, 'request-id': requestId } } });
}
