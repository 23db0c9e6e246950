import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK } from 'jose';

type KeyPair = Awaited<ReturnType<typeof generateKeyPair>>;

/** An asymmetric signing key as an identity provider holds it, and the public JWK it publishes. */
export interface SigningKey {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: KeyPair['privateKey'];
  publicKey: KeyPair['publicKey'];
  /** The public key as served in the JWKS, with `kid`, `alg` and `use: sig`. */
  jwk: JWK;
}

export async function generateSigningKey(alg: SigningKey['alg'], kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicKey, jwk };
}

/**
 * How the server answers `GET /keys`:
 * - `serve`: 200 with `{ keys }`;
 * - `error`: 500;
 * - `garbage`: 200 with a body that is not JSON;
 * - `hang`: never answers (until the server closes);
 * - `reset`: destroys the connection without answering.
 */
export type JwksMode = 'serve' | 'error' | 'garbage' | 'hang' | 'reset';

export interface JwksServer {
  /** The JWKS URL, on 127.0.0.1 and a port the OS chose. */
  readonly url: string;
  /** The keys served now; replace or push to rotate. */
  keys: JWK[];
  mode: JwksMode;
  /** Requests received so far. */
  readonly fetches: number;
  /** Stops listening (connections are refused) and drops open connections. */
  stop(): Promise<void>;
  /** Listens again on the same port. */
  restart(): Promise<void>;
}

/** A real JWKS endpoint over HTTP, like an identity provider's `discovery/v2.0/keys`. */
export async function startJwksServer(keys: JWK[]): Promise<JwksServer> {
  let fetches = 0;
  const hanging = new Set<ServerResponse>();
  const state: { keys: JWK[]; mode: JwksMode } = { keys, mode: 'serve' };
  const server: Server = createServer((request, response) => {
    fetches += 1;
    if (request.url !== '/keys') {
      response.writeHead(404).end();
      return;
    }
    switch (state.mode) {
      case 'serve':
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: state.keys }));
        return;
      case 'error':
        response.writeHead(500, { 'content-type': 'text/plain' }).end('internal error');
        return;
      case 'garbage':
        response.writeHead(200, { 'content-type': 'application/json' }).end('<html>not a key set</html>');
        return;
      case 'hang':
        hanging.add(response);
        response.on('close', () => hanging.delete(response));
        return;
      case 'reset':
        request.socket.destroy();
        return;
    }
  });
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });
  const port = await listen(0);

  return {
    url: `http://127.0.0.1:${port}/keys`,
    get keys() {
      return state.keys;
    },
    set keys(next: JWK[]) {
      state.keys = next;
    },
    get mode() {
      return state.mode;
    },
    set mode(next: JwksMode) {
      state.mode = next;
    },
    get fetches() {
      return fetches;
    },
    async stop() {
      if (!server.listening) return;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
    async restart() {
      await listen(port);
    },
  };
}
