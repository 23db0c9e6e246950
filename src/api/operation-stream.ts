import type { Logger } from '../shared/logger.js';
import type { ApiSeries } from '../shared/metrics.js';
import type { Operation, OperationRef } from '../shared/operation.js';
import type { OperationWatch } from './operation-watch.js';

const encoder = new TextEncoder();

export interface OperationStreamOptions {
  watch: OperationWatch;
  /** The operation as read when the request came in: the first event. */
  operation: Operation;
  ref: OperationRef;
  /** The operation as the client sees it (the JSON of GET). */
  present: (operation: Operation) => unknown;
  /** A comment line goes out this often, so proxies and clients keep an idle stream open. */
  keepAliveMs: number;
  log: Pick<Logger, 'warn'>;
  metrics?: ApiSeries | undefined;
}

/**
 * A server-sent event stream of one operation: one `operation` event per change, its current
 * state first; it ends after the terminal event (an operation changes once: inprogress to
 * completed or failed), when the client leaves, or when the process shuts down.
 */
export function operationStream({ watch, operation, ref, present, keepAliveMs, log, metrics }: OperationStreamOptions): ReadableStream<Uint8Array> {
  let ended = false;
  let keepAlive: NodeJS.Timeout | undefined;
  let stopWatching: (() => void) | undefined;
  /** Releases what the stream holds, once; false when it was released already. */
  const release = (): boolean => {
    if (ended) return false;
    ended = true;
    clearInterval(keepAlive);
    stopWatching?.();
    metrics?.streamsOpen.dec();
    return true;
  };

  return new ReadableStream<Uint8Array>({
    start(controller) {
      const send = (current: Operation) => {
        controller.enqueue(encoder.encode(`event: operation\ndata: ${JSON.stringify(present(current))}\n\n`));
      };
      const end = () => {
        if (release()) controller.close();
      };
      metrics?.streamsOpen.inc();
      send(operation);
      if (operation.status !== 'inprogress') {
        end();
        return;
      }
      keepAlive = setInterval(() => controller.enqueue(encoder.encode(': keep-alive\n\n')), keepAliveMs);
      watch
        .watch({
          ref,
          ended: (current) => {
            if (ended) return;
            send(current);
            end();
          },
          closing: () => end(),
        })
        .then(
          (stop) => {
            if (ended) stop();
            else stopWatching = stop;
          },
          (error: unknown) => {
            // Redis is away or the process is stopping: the client reconnects (EventSource does).
            log.warn({ err: error, operationId: ref.operationId }, 'could not follow the operation; ending its event stream');
            end();
          },
        );
    },
    // The client went away (@hono/node-server cancels the body when the connection closes).
    cancel() {
      release();
    },
  });
}
