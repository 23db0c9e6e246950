import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TlsCertificate {
  /** PEM, also what a client trusts (it is its own CA). */
  cert: string;
  key: string;
}

/**
 * A self-signed certificate for `localhost` and `127.0.0.1`, valid one day, made by the openssl
 * binary in a temporary directory that is removed at once.
 */
export function selfSignedCertificate(): TlsCertificate {
  const dir = mkdtempSync(join(tmpdir(), 'cops-tls-'));
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  try {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile,
        '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('This test needs the `openssl` binary (1.1.1 or later) on PATH, to make a self-signed certificate for its https proxy: install openssl (apt-get install openssl, brew install openssl).', { cause: error });
    }
    throw error;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Headers that describe one connection, not the message (RFC 9110 7.6.1): a proxy drops them. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade'];

function endToEnd<T extends IncomingHttpHeaders>(headers: T): OutgoingHttpHeaders {
  const named = (headers.connection ?? '').split(',').map((name) => name.trim().toLowerCase());
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.includes(name) && !named.includes(name)) out[name] = value;
  }
  return out;
}

export interface TlsProxy {
  /** `https://localhost:<port>`: the origin clients use. */
  origin: string;
  port: number;
  close(): Promise<void>;
}

/**
 * A TLS-terminating reverse proxy, as a load balancer in front of the service: https on a free
 * port of 127.0.0.1, each request forwarded over http to `target` with `Host` set to the target
 * (as nginx does by default) and `X-Forwarded-Proto`, `-Host` and `-For` saying what the client
 * used. Bodies stream both ways; a client that goes away ends its upstream request too.
 */
export async function startTlsProxy(certificate: TlsCertificate, target: { host: string; port: number }): Promise<TlsProxy> {
  const server: Server = createServer({ cert: certificate.cert, key: certificate.key }, (req, res) => {
    const headers = endToEnd(req.headers);
    headers.host = `${target.host}:${target.port}`;
    headers['x-forwarded-proto'] = 'https';
    if (req.headers.host !== undefined) headers['x-forwarded-host'] = req.headers.host;
    if (req.socket.remoteAddress !== undefined) headers['x-forwarded-for'] = req.socket.remoteAddress;
    const upstream = httpRequest({ host: target.host, port: target.port, method: req.method, path: req.url, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, endToEnd(answer.headers));
      answer.pipe(res);
    });
    upstream.on('error', (error) => {
      if (res.headersSent) {
        res.destroy(error);
        return;
      }
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`proxy: ${error.message}`);
    });
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `https://localhost:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
