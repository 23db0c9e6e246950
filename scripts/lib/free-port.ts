import { createServer } from 'node:net';

/** A port the OS says is free right now on 127.0.0.1 (another process may take it before the
 *  caller listens; good enough for tests, the bench and throwaway servers). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
