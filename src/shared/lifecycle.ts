import { ConfigError, loadConfig, type Config } from './config.js';
import { createLogger, flushLogger, type Logger } from './logger.js';

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

  let services: Service[];
  try {
    services = await start(config, log);
  } catch (error) {
    log.fatal({ err: error }, `${name} failed to start`);
    flushLogger(log);
    process.exit(1);
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
    log.info('stopped');
    flushLogger(log);
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}
