import { ConfigError, loadConfig, type Config } from './config.js';
import { createLogger, flushLogger, type Logger } from './logger.js';
import { stopTracing } from './tracing.js';

export interface Service {
  /** Stops taking work, lets in-flight work finish (within SHUTDOWN_TIMEOUT_MS), closes connections. */
  close(): Promise<void>;
}

/**
 * Runs a process's services: config parsed first (a bad variable stops the process with a
 * message naming it), then SIGTERM/SIGINT close every service, flush the log and exit 0.
 * A second signal, or the shutdown deadline passing, exits at once.
 */
export async function runProcess(name: string, start: (config: Config, log: Logger) => Promise<Service[]>): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`${name}: ${error.message}\n`);
    process.exit(1);
  }
  const log = createLogger(config, name);

  // A server that cannot listen emits 'error' with no listener: an uncaught exception, which
  // Node prints as a stack trace. While starting, say instead which address and variable.
  const cannotListen = (error: unknown): void => {
    const problem = listenProblem(error, config);
    if (problem) log.fatal(problem.fields, problem.message);
    else log.fatal({ err: error }, `${name} failed to start`);
    flushLogger(log);
    process.exit(1);
  };
  process.on('uncaughtException', cannotListen);
  let services: Service[];
  try {
    services = await start(config, log);
  } catch (error) {
    cannotListen(error);
    return;
  } finally {
    process.off('uncaughtException', cannotListen);
  }

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
      log.warn({ signal }, 'second signal; exiting now');
      flushLogger(log);
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'shutting down');
    const deadline = setTimeout(() => {
      log.error('shutdown deadline passed; exiting');
      flushLogger(log);
      process.exit(1);
    }, config.SHUTDOWN_TIMEOUT_MS + 5000);
    deadline.unref();
    await Promise.allSettled(services.map((service) => service.close()));
    // The spans of the last operations are still buffered: export them before exiting.
    await stopTracing().catch((error: unknown) => log.warn({ err: error }, 'could not export the last spans'));
    log.info('stopped');
    flushLogger(log);
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

/** For a listen that failed because the address is taken (or not allowed), one sentence naming
 *  the address and the variable that chose it; undefined for any other error. */
export function listenProblem(error: unknown, config: Pick<Config, 'PORT' | 'WORKER_HEALTH_PORT'>): { message: string; fields: object } | undefined {
  if (!(error instanceof Error)) return undefined;
  const { code, syscall, address, port } = error as NodeJS.ErrnoException & { address?: string; port?: number };
  if (syscall !== 'listen' || (code !== 'EADDRINUSE' && code !== 'EACCES')) return undefined;
  const variable = port === config.WORKER_HEALTH_PORT ? 'WORKER_HEALTH_PORT' : port === config.PORT ? 'PORT (and HOST)' : 'the port settings';
  const where = `${address?.includes(':') ? `[${address}]` : address ?? '?'}:${port ?? '?'}`;
  const what = code === 'EADDRINUSE' ? 'is already in use by another process' : 'may not be bound by this user';
  return {
    message: `cannot listen on ${where}: the address ${what} (${code}); stop what holds it, or choose another with ${variable}`,
    fields: { address, port, code },
  };
}
