import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { z } from 'zod';
import { parseDockerfile, type Dockerfile } from './dockerfile.js';
import { REPO_ROOT } from './service-build.js';

/** The repo's deployment files, parsed: docker-compose.yml (the parts the tests read) and the
 *  Dockerfile. Parsing with a schema means a reshaped file fails loudly, not silently unchecked. */

export { REPO_ROOT };

export function readRepoFile(path: string): string {
  return readFileSync(`${REPO_ROOT}${path}`, 'utf8');
}

const healthcheckSchema = z.object({
  test: z.array(z.string()).min(2),
  interval: z.string().optional(),
  timeout: z.string().optional(),
  retries: z.number().optional(),
  start_period: z.string().optional(),
});
const serviceSchema = z.object({
  image: z.string().optional(),
  build: z.string().optional(),
  command: z.array(z.string()).optional(),
  init: z.boolean().optional(),
  environment: z.record(z.string(), z.string()).optional(),
  env_file: z.array(z.object({ path: z.string(), required: z.boolean() })).optional(),
  depends_on: z.record(z.string(), z.object({ condition: z.string() })).optional(),
  healthcheck: healthcheckSchema.optional(),
  volumes: z.array(z.string()).optional(),
  ports: z.array(z.string()).optional(),
  deploy: z.object({ replicas: z.number().int() }).optional(),
  stop_grace_period: z.string().optional(),
});
const composeSchema = z.object({
  services: z.record(z.string(), serviceSchema),
  volumes: z.record(z.string(), z.null()).optional(),
});

export type ComposeService = z.infer<typeof serviceSchema>;
export type ComposeFile = z.infer<typeof composeSchema>;

/** docker-compose.yml with `<<: *anchor` merge keys resolved, as docker compose does. */
export function loadCompose(): ComposeFile {
  return composeSchema.parse(parse(readRepoFile('docker-compose.yml'), { merge: true }));
}

export function composeService(compose: ComposeFile, name: string): ComposeService {
  const found = compose.services[name];
  if (!found) throw new Error(`docker-compose.yml has no service ${name}`);
  return found;
}

export function loadDockerfile(): Dockerfile {
  return parseDockerfile(readRepoFile('Dockerfile'));
}
