import { describe, expect, it } from 'vitest';
import { configSchema, type Config } from '../src/shared/config.js';
import { loadCompose, readRepoFile } from './support/deployment.js';

/**
 * What ties docker-compose.yml and .env.example to the service's config schema
 * (src/shared/config.ts): every variable they set is one the service reads, with a value it
 * accepts. The rest of these files is checked by running it: test/docker-build.test.ts builds
 * the Dockerfile's image without Docker and runs compose's commands and health checks.
 */

const CONFIG_VARIABLES = Object.keys(configSchema.shape);
const schemaDefaults: Config = configSchema.parse({});

/** Whether the schema accepts `value` for `name`, and the message when it does not. */
function problemWith(name: string, value: string): string | undefined {
  const parsed = configSchema.safeParse({ [name]: value });
  return parsed.success ? undefined : parsed.error.issues.map((issue) => issue.message).join('; ');
}

// --- docker-compose.yml ------------------------------------------------------------------------

const compose = loadCompose();
/** The services built from this repo (the ones that run the service, not Redis). */
const appServices = Object.entries(compose.services).filter(([, service]) => service.build !== undefined);

/** `35s`, `1m30s`, `500ms` -> milliseconds. */
function durationMs(text: string): number {
  let total = 0;
  for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    total += Number(amount) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit as 'ms' | 's' | 'm' | 'h'];
  }
  return total;
}

describe('docker-compose.yml', () => {
  it('runs the service in at least one service built from this repo', () => {
    expect(appServices.length).toBeGreaterThan(0);
  });

  it('sets only variables the config schema knows, each to a value it accepts', () => {
    for (const [name, service] of appServices) {
      for (const [variable, value] of Object.entries(service.environment ?? {})) {
        expect(CONFIG_VARIABLES, `${name} sets ${variable}`).toContain(variable);
        expect(problemWith(variable, value), `${name}: ${variable}=${value}`).toBeUndefined();
      }
    }
  });

  it("gives each service longer to stop than its shutdown deadline (SHUTDOWN_TIMEOUT_MS + 5 s, src/shared/lifecycle.ts)", () => {
    for (const [name, service] of appServices) {
      const shutdownTimeoutMs = service.environment?.SHUTDOWN_TIMEOUT_MS
        ? configSchema.parse({ SHUTDOWN_TIMEOUT_MS: service.environment.SHUTDOWN_TIMEOUT_MS }).SHUTDOWN_TIMEOUT_MS
        : schemaDefaults.SHUTDOWN_TIMEOUT_MS;
      // Compose's default grace period is 10 s; past it, in-flight work is SIGKILLed.
      expect(durationMs(service.stop_grace_period ?? '10s'), name).toBeGreaterThan(shutdownTimeoutMs + 5000);
    }
  });
});

// --- .env.example --------------------------------------------------------------------------------

interface EnvLine {
  name: string;
  value: string;
  commented: boolean;
}

const envExample: EnvLine[] = readRepoFile('.env.example')
  .split('\n')
  .flatMap((line) => {
    const match = /^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    return match ? [{ name: match[2]!, value: match[3]!, commented: Boolean(match[1]) }] : [];
  });

describe('.env.example', () => {
  it('lists every variable of the config schema, once', () => {
    const names = envExample.map((line) => line.name);
    expect([...names].sort()).toEqual([...CONFIG_VARIABLES].sort());
  });

  it("sets each uncommented variable to the schema's default, except the development AUTH_JWT_SECRET", () => {
    for (const { name, value } of envExample.filter((line) => !line.commented && line.name !== 'AUTH_JWT_SECRET')) {
      const parsed: Record<string, unknown> = configSchema.parse({ [name]: value });
      expect(parsed[name], name).toEqual(schemaDefaults[name as keyof Config]);
    }
  });

  it('comments out exactly the variables without a default, with example values the schema accepts', () => {
    for (const { name, value, commented } of envExample) {
      if (name === 'AUTH_JWT_SECRET') continue;
      expect(commented, `${name} is commented out`).toBe(schemaDefaults[name as keyof Config] === undefined);
      if (commented && value !== '') expect(problemWith(name, value), `${name}=${value}`).toBeUndefined();
    }
  });

  it('sets a development AUTH_JWT_SECRET, so the service starts with the file as it is', () => {
    const active = Object.fromEntries(envExample.filter((line) => !line.commented).map((line) => [line.name, line.value]));
    expect(active.AUTH_JWT_SECRET).toMatch(/dev/i);
    expect(configSchema.safeParse(active).success).toBe(true);
  });
});
