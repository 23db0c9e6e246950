import { pino, type Logger } from 'pino';
import type { Config } from './config.js';
import { traceLogFields, tracingOn } from './tracing.js';

export type { Logger };

/** Paths that must never reach a log line. */
const REDACT = [
  'req.headers.authorization',
  'headers.authorization',
  'authorization',
  'config.AUTH_JWT_SECRET',
  'config.PROCESSOR_SECRET',
  'config.REDIS_URL',
];

/** The buffered destination of each logger that has one, for flushing before exit. */
const destinations = new WeakMap<Logger, { flushSync(): void }>();

/** The longest a log line waits in the buffer. */
const FLUSH_INTERVAL_MS = 200;

/**
 * JSON lines by default, buffered (a stdout write per request costs throughput); `flushLogger`
 * on shutdown writes what is buffered. `LOG_FORMAT=pretty` is for development and needs the
 * pino-pretty dev dependency.
 */
export function createLogger(config: Pick<Config, 'LOG_LEVEL' | 'LOG_FORMAT'>, name: string): Logger {
  const options = {
    name,
    level: config.LOG_LEVEL,
    redact: { paths: REDACT, censor: '[redacted]' },
    // With tracing on, a line written inside a span names it (trace_id, span_id).
    ...(tracingOn() ? { mixin: traceLogFields } : {}),
  };
  if (config.LOG_FORMAT === 'pretty') {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } });
  }
  // Lines are written 4 KiB at a time rather than one write each (a system call per log line is
  // a real share of an operation's CPU), and at least every FLUSH_INTERVAL_MS when traffic is low.
  // The 4 KiB write is synchronous: in async mode sonic-boom keeps appending to its buffer while
  // a write is in flight and measures the whole buffer's byte length on every line, and each
  // write goes through the libuv thread pool. Synchronous
  // is also pino's default: a log reader that falls behind slows the process rather than
  // letting memory grow (on a full non-blocking pipe, sonic-boom retries the write after
  // sleeping 100 ms, event loop included).
  const destination = pino.destination({ sync: true, minLength: 4096 });
  setInterval(() => destination.flush(), FLUSH_INTERVAL_MS).unref();
  const log = pino(options, destination);
  destinations.set(log, destination);
  return log;
}

/** Writes what is buffered, synchronously: call it right before process.exit. */
export function flushLogger(log: Logger): void {
  try {
    destinations.get(log)?.flushSync();
  } catch {
    // A destination that is not ready yet has nothing buffered.
  }
}
