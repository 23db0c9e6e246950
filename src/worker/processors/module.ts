import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Processor } from '../processor.js';

/**
 * Loads a processor from a module whose default export is the processor function. The path is
 * resolved from the working directory. TypeScript modules are loaded through tsx, so a `.ts`
 * processor works without a build step.
 */
export async function loadModuleProcessor(path: string): Promise<Processor> {
  const url = pathToFileURL(resolve(path)).href;
  const loaded: unknown = /\.[cm]?ts$/.test(path)
    ? await (await import('tsx/esm/api')).tsImport(url, import.meta.url)
    : await import(url);
  const processor = defaultExport(loaded);
  if (typeof processor !== 'function') {
    throw new Error(`PROCESSOR_MODULE ${path}: the default export must be the processor function`);
  }
  return processor as Processor;
}

/** ESM default export, or a CommonJS module.exports (which tsx wraps once more). */
function defaultExport(loaded: unknown): unknown {
  let value = loaded;
  for (let depth = 0; depth < 2 && typeof value === 'object' && value !== null && 'default' in value; depth++) {
    value = value.default;
  }
  return value;
}
