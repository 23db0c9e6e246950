/**
 * Reads `.env` from the working directory into process.env, when there is one: the same file
 * docker compose reads, so `npm start` on a VM or a laptop is configured the same way. Variables
 * already in the environment win: Node's loadEnvFile never overwrites one, an empty one
 * included. A missing file is fine; an unreadable one stops the process with its name.
 *
 * Imported first by every entry point (src/main.ts, src/api/main.ts, src/worker/main.ts) and by
 * scripts/token.ts, for its side effect: ES modules run in import order, so the file is read
 * before any other module runs and before the config is parsed.
 */
try {
  process.loadEnvFile('.env');
} catch (error) {
  if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
    process.stderr.write(`.env: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
}

export {};
