import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { configSchema } from '../src/shared/config.js';
import { composeService, loadCompose, loadDockerfile, readRepoFile as read, REPO_ROOT } from './support/deployment.js';
import { envOf, execForm, healthcheckOf, instructionsOf, type Stage } from './support/dockerfile.js';

/**
 * The deployment files, read as data: docker-compose.yml, .env.example, the Dockerfile and
 * .dockerignore. There is no Docker engine where these tests run; test/docker-build.test.ts
 * performs the Dockerfile's steps and runs the result.
 */

const CONFIG_VARIABLES = Object.keys(configSchema.shape);

// --- docker-compose.yml ------------------------------------------------------------------------

const compose = loadCompose();
const service = (name: string) => composeService(compose, name);

/** `35s`, `1m30s`, `500ms` -> milliseconds. */
function durationMs(text: string): number {
  let total = 0;
  for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    total += Number(amount) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit as 'ms' | 's' | 'm' | 'h'];
  }
  return total;
}

/** Arguments following `--name` in a command line (`--appendonly yes`). */
function option(command: string[], name: string): string | undefined {
  const index = command.indexOf(`--${name}`);
  return index === -1 ? undefined : command[index + 1];
}

describe('docker-compose.yml', () => {
  it('defines the redis, api and worker services', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['api', 'redis', 'worker']);
  });

  it('runs Redis 7 with AOF fsynced every second, noeviction, a health check and a named volume for /data', () => {
    const redis = service('redis');
    expect(redis.image).toMatch(/^redis:7/);
    const command = redis.command ?? [];
    expect(command[0]).toBe('redis-server');
    expect(option(command, 'appendonly')).toBe('yes');
    expect(option(command, 'appendfsync')).toBe('everysec');
    expect(option(command, 'maxmemory-policy')).toBe('noeviction');
    expect(redis.healthcheck?.test).toEqual(['CMD', 'redis-cli', 'ping']);

    const data = (redis.volumes ?? []).map((volume) => volume.split(':')).find(([, target]) => target === '/data');
    expect(data, 'a volume mounted at /data').toBeDefined();
    const volumeName = data![0]!;
    expect(volumeName, 'a named volume, not a bind mount').toMatch(/^[A-Za-z0-9][\w.-]*$/);
    expect(Object.keys(compose.volumes ?? {})).toContain(volumeName);
  });

  it('builds the api and worker image from the Dockerfile and runs each role with its own entry point', () => {
    for (const name of ['api', 'worker']) {
      expect(service(name).build, name).toBe('.');
      expect(service(name).image, name).toBe(service('api').image);
    }
    expect(service('api').command).toEqual(['node', 'dist/api/main.js']);
    expect(service('worker').command).toEqual(['node', 'dist/worker/main.js']);
    // tsconfig.build.json compiles src/ into dist/: each entry point has its source.
    for (const name of ['api', 'worker']) {
      const entry = service(name).command![1]!;
      expect(existsSync(`${REPO_ROOT}${entry.replace(/^dist\//, 'src/').replace(/\.js$/, '.ts')}`), entry).toBe(true);
    }
  });

  it('starts the api and the workers only once Redis is healthy', () => {
    for (const name of ['api', 'worker']) {
      expect(service(name).depends_on, name).toEqual({ redis: { condition: 'service_healthy' } });
    }
  });

  it('health-checks the API on /readyz and each worker on its WORKER_HEALTH_PORT with node, as the image has no curl', () => {
    const api = service('api').healthcheck?.test ?? [];
    expect(api.slice(0, 3)).toEqual(['CMD', 'node', '-e']);
    expect(api[3]).toMatch(/fetch\(.*\/readyz/);

    const worker = service('worker');
    const test = worker.healthcheck?.test ?? [];
    expect(test.slice(0, 3)).toEqual(['CMD', 'node', '-e']);
    expect(test[3]).toMatch(/fetch\(.*\/healthz/);
    expect(test[3]).toContain('WORKER_HEALTH_PORT');
    expect(worker.environment?.WORKER_HEALTH_PORT).toBe('3001');
  });

  it('runs two worker replicas and publishes the API port 3000', () => {
    expect(service('worker').deploy?.replicas).toBe(2);
    expect(service('worker').ports, 'replicas cannot share a published port').toBeUndefined();
    expect(service('api').ports?.some((mapping) => mapping.endsWith(':3000'))).toBe(true);
    expect(service('api').environment?.PORT).toBe('3000');
  });

  it('points the api and the workers at the redis service and reads the rest from an optional .env', () => {
    for (const name of ['api', 'worker']) {
      expect(service(name).environment?.REDIS_URL, name).toBe('redis://redis:6379');
      expect(service(name).env_file, name).toEqual([{ path: '.env', required: false }]);
      // The image has no pino-pretty: a LOG_FORMAT=pretty copied into .env must not reach it.
      expect(service(name).environment?.LOG_FORMAT, name).toBe('json');
    }
  });

  it('gives the api and the workers longer to stop than their own shutdown deadline, behind an init process', () => {
    const shutdownDeadlineMs = configSchema.parse({}).SHUTDOWN_TIMEOUT_MS + 5000; // src/shared/lifecycle.ts
    for (const name of ['api', 'worker']) {
      expect(durationMs(service(name).stop_grace_period ?? '10s'), name).toBeGreaterThan(shutdownDeadlineMs);
      expect(service(name).init, name).toBe(true);
    }
  });

  it('sets only variables the config schema knows', () => {
    for (const [name, definition] of Object.entries(compose.services)) {
      if (name === 'redis') continue;
      for (const variable of Object.keys(definition.environment ?? {})) {
        expect(CONFIG_VARIABLES, `${name} sets ${variable}`).toContain(variable);
      }
    }
  });
});

// --- .env.example --------------------------------------------------------------------------------

interface EnvLine {
  name: string;
  value: string;
  commented: boolean;
}

const envExample: EnvLine[] = read('.env.example')
  .split('\n')
  .flatMap((line) => {
    const match = /^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    return match ? [{ name: match[2]!, value: match[3]!, commented: Boolean(match[1]) }] : [];
  });
const schemaDefaults: Record<string, unknown> = configSchema.parse({});

describe('.env.example', () => {
  it('lists every variable of the config schema, once', () => {
    const names = envExample.map((line) => line.name);
    expect([...names].sort()).toEqual([...CONFIG_VARIABLES].sort());
  });

  it('gives every variable a comment line above it', () => {
    const lines = read('.env.example').split('\n');
    for (const { name } of envExample) {
      const index = lines.findIndex((line) => new RegExp(`^(#\\s*)?${name}=`).test(line.trim()));
      // The comment may describe a group of consecutive variables (ADMIN_USER, ADMIN_PASSWORD).
      let above = index - 1;
      while (above >= 0 && /^(#\s*)?[A-Z][A-Z0-9_]*=/.test(lines[above]!.trim())) above--;
      expect(lines[above]?.startsWith('# '), `a comment above ${name}`).toBe(true);
    }
  });

  it("sets each uncommented variable to the schema's default, except the development AUTH_JWT_SECRET", () => {
    for (const { name, value } of envExample.filter((line) => !line.commented && line.name !== 'AUTH_JWT_SECRET')) {
      const parsed: Record<string, unknown> = configSchema.parse({ [name]: value });
      expect(parsed[name], name).toEqual(schemaDefaults[name]);
    }
  });

  it('comments out exactly the variables without a default, with values the schema accepts', () => {
    for (const { name, value, commented } of envExample) {
      if (name === 'AUTH_JWT_SECRET') continue;
      expect(commented, `${name} is commented out`).toBe(schemaDefaults[name] === undefined);
      if (commented && value !== '') expect(configSchema.safeParse({ [name]: value }).success, `${name}=${value}`).toBe(true);
    }
  });

  it('sets a development AUTH_JWT_SECRET, so the service starts with it as it is', () => {
    const active = Object.fromEntries(envExample.filter((line) => !line.commented).map((line) => [line.name, line.value]));
    expect(active.AUTH_JWT_SECRET).toMatch(/dev/i);
    expect(configSchema.safeParse(active).success).toBe(true);
  });
});

// --- Dockerfile and .dockerignore ------------------------------------------------------------------

const dockerfile = loadDockerfile();
const finalStage: Stage = dockerfile.stages.at(-1)!;

describe('Dockerfile', () => {
  it('builds in two stages on node:20-bookworm-slim', () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of dockerfile.stages) expect(stage.image).toBe('node:20-bookworm-slim');
  });

  it('compiles in the build stage and copies only dist/ from it', () => {
    const build = dockerfile.stages[0]!;
    expect(instructionsOf(build, 'RUN').some((run) => run.args.includes('npm run build'))).toBe(true);
    const fromBuild = instructionsOf(finalStage, 'COPY').filter((copy) => copy.args.startsWith('--from='));
    expect(fromBuild.map((copy) => copy.args)).toEqual([`--from=${build.name} /app/dist ./dist`]);
  });

  it('installs only production dependencies in the final stage, with npm ci', () => {
    const installs = instructionsOf(finalStage, 'RUN').filter((run) => /\bnpm (ci|install|i)\b/.test(run.args));
    expect(installs).toHaveLength(1);
    expect(installs[0]!.args).toMatch(/\bnpm ci --omit=dev\b/);
  });

  it('runs as the non-root node user with NODE_ENV=production', () => {
    const user = instructionsOf(finalStage, 'USER').at(-1)?.args;
    expect(user).toBe('node');
    expect(envOf(finalStage).NODE_ENV).toBe('production');
  });

  it('starts node in exec form, so SIGTERM reaches node rather than a shell', () => {
    const cmd = instructionsOf(finalStage, 'CMD').at(-1);
    expect(cmd && execForm(cmd.args)).toEqual(['node', 'dist/main.js']);
    expect(instructionsOf(finalStage, 'ENTRYPOINT')).toEqual([]);
  });

  it("health-checks /healthz with node's fetch, as the slim image has no curl", () => {
    const healthcheck = healthcheckOf(finalStage);
    expect(healthcheck?.command.slice(0, 2)).toEqual(['node', '-e']);
    expect(healthcheck?.command[2]).toMatch(/fetch\(.*\/healthz/);
    expect(Object.keys(healthcheck?.options ?? {})).toEqual(expect.arrayContaining(['interval', 'timeout']));
  });
});

/** Whether .dockerignore keeps `path` out of the build context (its own rules: last match wins,
 *  `!` re-includes, a directory's rule covers what is inside it, `*` stays within one segment). */
function dockerIgnored(path: string): boolean {
  const rules = read('.dockerignore')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
  let ignored = false;
  for (const rule of rules) {
    const negated = rule.startsWith('!');
    const pattern = (negated ? rule.slice(1) : rule).replace(/^\/+|\/+$/g, '');
    const regex = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*')}(/.*)?$`);
    if (regex.test(path)) ignored = !negated;
  }
  return ignored;
}

describe('.dockerignore', () => {
  it('keeps every file the Dockerfile copies from the context in it', () => {
    const sources = dockerfile.stages
      .flatMap((stage) => instructionsOf(stage, 'COPY'))
      .filter((copy) => !copy.args.startsWith('--from='))
      .flatMap((copy) => copy.args.split(/\s+/).slice(0, -1));
    expect(sources).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'src']));
    for (const source of sources) expect(dockerIgnored(source), source).toBe(false);
  });

  it('keeps local secrets and host-built files out of the context', () => {
    for (const path of ['.env', 'node_modules', 'node_modules/x/index.js', 'dist', '.git']) {
      expect(dockerIgnored(path), path).toBe(true);
    }
  });
});
