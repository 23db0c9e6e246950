# syntax=docker/dockerfile:1
#
# The operations service image: one image for every role. The default command runs the API and
# a worker in one process (`npm start`); docker-compose.yml runs each role on its own:
#   node dist/api/main.js       the API (PORT, default 3000)
#   node dist/worker/main.js    a worker (health on WORKER_HEALTH_PORT when set)
# test/docker-build.test.ts performs these steps without Docker and runs the result.

ARG NODE_IMAGE=node:20-bookworm-slim

# --- build: every dependency, TypeScript -> dist/ ----------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
# Lockfile first, so the dependency layer is cached until the lockfile changes. Install scripts
# stay off (package.json "allowScripts" allows none); prebuilt binaries come as optional packages.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- runtime: production dependencies and dist/ only -------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# tsx is a production dependency (PROCESSOR_MODULE may be a .ts file); pino-pretty is not, so
# LOG_FORMAT=pretty does not work in this image: logs are JSON lines.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist

# Files stay root-owned and read-only to the service; it writes nothing but stdout (tsx caches
# compiled .ts processors under /tmp).
USER node
EXPOSE 3000

# No curl in slim images: node's fetch. /healthz says the process lives; compose checks /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/healthz', { signal: AbortSignal.timeout(2500) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# Exec form: node is PID 1 and receives SIGTERM itself (src/shared/lifecycle.ts closes the
# services and exits 0 within SHUTDOWN_TIMEOUT_MS + 5 s; give `docker stop -t` at least that).
# Node does not reap orphaned children; the service starts none, but `docker run --init` (or
# compose `init: true`) puts tini in front for free.
STOPSIGNAL SIGTERM
CMD ["node", "dist/main.js"]
