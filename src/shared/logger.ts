import { pino, type Logger } from 'pino';
import type { Config } from './config.js';

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

/**
 * JSON lines by default, written asynchronously (a synchronous stdout write per request costs
 * throughput); `flushLogger` on shutdown writes what is buffered. `LOG_FORMAT=pretty` is for
 * development and needs the pino-pretty dev dependency.
 */
export function createLogger(config: Pick<Config, 'LOG_LEVEL' | 'LOG_FORMAT'>, name: string): Logger {
  const options = { name, level: config.LOG_LEVEL, redact: { paths: REDACT, censor: '[redacted]' } };
  if (config.LOG_FORMAT === 'pretty') {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } });
  }
  return pino(options, pino.destination({ sync: false }));
}

export function flushLogger(log: Logger): void {
  try {
    log.flush();
  } catch {
    // A destination that is not ready yet has nothing buffered.
  }
}
