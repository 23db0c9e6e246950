import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jwtVerify } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { OTHER_TENANT, TEST_SECRET } from './support/context.js';
import { REPO_ROOT } from './support/service-build.js';
import { RunningProcess, serviceEnv, startScript } from './support/processes.js';

/** `npm run token` (scripts/token.ts), as a developer runs it. */

/** tsx compiles the script on a cold start: slow on a busy two-core machine. */
const DEADLINE_MS = 30_000;

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

function track(child: RunningProcess): RunningProcess {
  cleanups.push(() => child.kill());
  return child;
}

async function tokenOf(child: RunningProcess): Promise<string> {
  expect(await child.waitForExit(DEADLINE_MS), child.output()).toEqual({ code: 0, signal: null });
  return child.stdout.trim().split('\n').at(-1)!;
}

describe('npm run token', () => {
  it('prints a token signed with AUTH_JWT_SECRET, for the tenant and roles asked for', async () => {
    const npm = track(
      new RunningProcess('npm run token', 'npm', ['run', '--silent', 'token', '--', '--tenant', OTHER_TENANT, '--role', 'ExternalConnection.ReadWrite.OwnedBy'], {
        cwd: REPO_ROOT,
        env: serviceEnv({ AUTH_JWT_SECRET: TEST_SECRET }),
      }),
    );
    const { payload } = await jwtVerify(await tokenOf(npm), new TextEncoder().encode(TEST_SECRET));
    expect(payload).toMatchObject({ tid: OTHER_TENANT, roles: ['ExternalConnection.ReadWrite.OwnedBy'] });
    expect(payload.exp! - payload.iat!).toBe(3600);
  });

  it('reads AUTH_JWT_SECRET from .env in the working directory, as the service does', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cops-token-cwd-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const fileSecret = 'a-secret-from-the-env-file-long-enough-for-hs256';
    writeFileSync(join(dir, '.env'), `AUTH_JWT_SECRET=${fileSecret}\n`);
    const script = track(startScript('token', 'scripts/token.ts', [], { cwd: dir, env: serviceEnv({}) }));
    const { payload } = await jwtVerify(await tokenOf(script), new TextEncoder().encode(fileSecret));
    expect(payload.scp).toBe('ExternalConnection.ReadWrite.All');
  });

  it('prints a help text listing its options for --help, and exits 0 without needing a secret', async () => {
    const script = track(startScript('token', 'scripts/token.ts', ['--help'], { cwd: REPO_ROOT, env: serviceEnv({}) }));
    expect(await script.waitForExit(DEADLINE_MS), script.output()).toEqual({ code: 0, signal: null });
    for (const option of ['--tenant', '--scope', '--role', '--expires']) expect(script.stdout).toContain(option);
  });

  it('names an unknown option and shows the help, exiting 2, instead of a stack trace', async () => {
    const script = track(startScript('token', 'scripts/token.ts', ['--tennant', 'x'], { cwd: REPO_ROOT, env: serviceEnv({}) }));
    expect(await script.waitForExit(DEADLINE_MS), script.output()).toEqual({ code: 2, signal: null });
    expect(script.stderr).toContain("Unknown option '--tennant'");
    expect(script.stderr).toContain('--tenant');
    expect(script.stderr).not.toMatch(/\n\s+at /);
  });

  it('says what is missing, and exits 1, without AUTH_JWT_SECRET', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cops-token-cwd-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const script = track(startScript('token', 'scripts/token.ts', [], { cwd: dir, env: serviceEnv({}) }));
    expect(await script.waitForExit(DEADLINE_MS)).toEqual({ code: 1, signal: null });
    expect(script.stderr).toContain('AUTH_JWT_SECRET is not set');
  });
});
