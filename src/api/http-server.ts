import type { Server } from 'node:http';
import { createAdaptorServer } from '@hono/node-server';
import type { Hono } from 'hono';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { AppEnv } from './env.js';

/** The Node HTTP server that carries the app (not yet listening). */
export function createHttpServer(app: Hono<AppEnv>, config: Pick<Config, 'HOST'>, _log: Logger): Server {
  return createAdaptorServer({ fetch: app.fetch, hostname: config.HOST }) as Server;
}
