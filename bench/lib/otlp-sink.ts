import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * An OTLP/HTTP endpoint that accepts every export and keeps nothing, for `--tracing`: the
 * service pays for making, batching, serializing and sending its spans, as it would to a real
 * collector, while the collector's own work stays out of the measured processes (it runs in the
 * bench's process, whose CPU is reported as the bench's).
 */
export interface OtlpSink {
  /** OTEL_EXPORTER_OTLP_ENDPOINT for the service. */
  url: string;
  /** Export requests and bytes received so far. */
  received(): { exports: number; bytes: number };
  close(): void;
}

export async function startOtlpSink(): Promise<OtlpSink> {
  let exports = 0;
  let bytes = 0;
  const server = createServer((req, res) => {
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.on('end', () => {
      exports++;
      res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    received: () => ({ exports, bytes }),
    close: () => {
      server.close();
      server.closeAllConnections();
    },
  };
}
