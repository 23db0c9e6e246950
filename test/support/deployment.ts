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
});
const serviceSchema = z.object({
  build: z.string().optional(),
  command: z.array(z.string()).optional(),
  environment: z.record(z.string(), z.string()).optional(),
  healthcheck: healthcheckSchema.optional(),
  stop_grace_period: z.string().optional(),
});
const composeSchema = z.object({
  services: z.record(z.string(), serviceSchema),
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
