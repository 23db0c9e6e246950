import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { HonoAdapter } from '@bull-board/hono';
import { serveStatic } from '@hono/node-server/serve-static';
import { Hono } from 'hono';
import { basicAuth } from 'hono/basic-auth';
import type { Queue } from 'bullmq';

export const ADMIN_BASE_PATH = '/admin/queues';

export interface AdminOptions {
  queues: Queue[];
  user: string;
  password: string;
  readOnly: boolean;
}

/**
 * Bull Board at /admin/queues, behind basic auth. A Hono app of its own, mounted by the API app
 * (app.mount), not merged into its router: Bull Board's routes do not compile on Hono's
 * RegExpRouter, and merged they would send every request to the slower TrieRouter. Its assets are served from the installed
 * @bull-board/ui package (the adapter resolves their absolute path), so they load whatever the
 * process's working directory.
 */
export function adminRoutes({ queues, user, password, readOnly }: AdminOptions): Hono {
  const board = new HonoAdapter(serveStatic).setBasePath(ADMIN_BASE_PATH);
  createBullBoard({
    queues: queues.map((queue) => new BullMQAdapter(queue, { readOnlyMode: readOnly })),
    serverAdapter: board,
  });
  const app = new Hono();
  app.use('*', basicAuth({ username: user, password, realm: 'operations admin' }));
  app.route('/', board.registerPlugin());
  // Its refusals (basic auth) go up to the API app, which answers them as Graph errors.
  app.onError((error) => {
    throw error;
  });
  return app;
}
