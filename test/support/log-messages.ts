import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './service-build.js';

/**
 * Log messages the tests look for in the service's output, each checked against the source: a
 * test that waits for or counts a message the code no longer writes would wait in vain or count
 * 0 forever. `logMessage('worker started')` returns the message when a string literal in src/
 * spells it exactly, and throws (failing the test that uses it) otherwise.
 */

let sources: string | undefined;

function allSources(): string {
  if (sources === undefined) {
    const files = readdirSync(join(REPO_ROOT, 'src'), { recursive: true, encoding: 'utf8' }).filter((file) => file.endsWith('.ts'));
    sources = files.map((file) => readFileSync(join(REPO_ROOT, 'src', file), 'utf8')).join('\n');
  }
  return sources;
}

export function logMessage(message: string): string {
  const text = allSources();
  if (!["'", '"', '`'].some((quote) => text.includes(`${quote}${message}${quote}`))) {
    throw new Error(`no string literal in src/ is the log message ${JSON.stringify(message)}: the test looks for a line the service does not write`);
  }
  return message;
}
