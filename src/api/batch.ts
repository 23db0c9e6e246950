import { OpenAPIHono, type Hook } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { Authenticator } from './auth.js';
import { batchRouteAt, type SubRequest } from './batch-routes.js';
import type { AppEnv } from './env.js';
import { GraphError, badRequest } from './errors.js';
import { answer, jsonTextOf } from './respond.js';

/**
 * Graph JSON batching: the requests of a `POST /$batch` run through the app itself, in process,
 * each as if it were sent alone (the same routes, authentication, validation, rate limit and
 * error bodies: no second router). Independent requests start together, so the creates of one
 * batch share one group commit (create-batcher.ts); a request runs once the requests it
 * `dependsOn` have answered, or gets 424 if one of them did not succeed.
 */

/** Runs one request through the app (app.fetch). */
export type Dispatch = (request: Request) => Promise<Response>;

interface SubResponse {
  id: string;
  status: number;
  headers: Record<string, string>;
  body?: unknown;
  /** The body as JSON text, when the route answered JSON (embedded as it is). */
  json?: string;
}

/** The version roots a batch may be sent to, and a sub-request url may begin with. */
const VERSION_ROOTS = ['', '/v1.0', '/beta'];
/** Headers a sub-request may not set: the batch's own connection decides them (its framing,
 *  its host and proxies, its token). */
const BATCH_OWNED_HEADERS = new Set([
  'authorization',
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'upgrade',
  'te',
  'trailer',
  'expect',
  'x-forwarded-proto',
  'x-forwarded-host',
]);
/** Headers of the batch that every sub-request carries. */
const INHERITED_HEADERS = ['authorization', 'x-forwarded-proto', 'x-forwarded-host'];
/** How Graph spells the headers of sub-responses; others are Title-Cased. */
const HEADER_SPELLING: Record<string, string> = {
  'request-id': 'request-id',
  'client-request-id': 'client-request-id',
  'www-authenticate': 'WWW-Authenticate',
};

export function batchRoutes({ auth, dispatch }: { auth: Authenticator; dispatch: Dispatch }): OpenAPIHono<AppEnv> {
  const routes = new OpenAPIHono<AppEnv>({ defaultHook: describeBatchProblem });
  for (const root of VERSION_ROOTS) {
    routes.openapi(batchRouteAt(`${root}/$batch`), (c) => answerBatch(c, root, c.req.valid('json').requests));
  }

  async function answerBatch(c: Context<AppEnv>, root: string, requests: SubRequest[]) {
    await authenticateBatch(c);
    const problem = batchRuleBroken(requests);
    if (problem) throw badRequest(problem);
    const origin = new URL(c.req.url).origin;
    const inherited = new Headers();
    for (const name of INHERITED_HEADERS) {
      const value = c.req.header(name);
      if (value !== undefined) inherited.set(name, value);
    }

    const answers = new Map<string, Promise<SubResponse>>();
    for (const request of requests) {
      // dependsOn names only earlier requests (checked above), so their answers are in the map.
      const dependencies = (request.dependsOn ?? []).map((id) => answers.get(id)!);
      answers.set(request.id, afterDependencies(request, dependencies, () => runOne(request, root, origin, inherited, c.req.raw.signal)));
    }
    const responses = await Promise.all(requests.map((request) => answers.get(request.id)!));
    // Built as text: each JSON body goes in as the route wrote it, not parsed and written again.
    const items = responses.map(({ id, status, headers, body, json }) => {
      const head = `{"id":${JSON.stringify(id)},"status":${status},"headers":${JSON.stringify(headers)}`;
      if (json !== undefined) return `${head},"body":${json}}`;
      return body === undefined ? `${head}}` : `${head},"body":${JSON.stringify(body)}}`;
    });
    return answer(c, `{"responses":[${items.join(',')}]}`, 200, 'application/json');
  }

  async function runOne(request: SubRequest, root: string, origin: string, inherited: Headers, signal: AbortSignal): Promise<SubResponse> {
    const headers = new Headers(inherited);
    for (const [name, value] of Object.entries(request.headers ?? {})) {
      if (!BATCH_OWNED_HEADERS.has(name.toLowerCase())) headers.set(name, value);
    }
    const body = request.body === undefined || request.body === null ? undefined : bodyBytes(request.body);
    if (body) headers.set('content-length', String(body.length));
    // The batch's signal only where it matters: a request held by Prefer: wait is let go when
    // the batch's client leaves (a signal per request costs CPU otherwise).
    const init: RequestInit = headers.has('prefer') ? { method: request.method, headers, signal } : { method: request.method, headers };
    const response = await dispatch(new HeldBodyRequest(`${origin}${subPath(request.url, root)}`, init, body));
    return { id: request.id, status: response.status, headers: subResponseHeaders(response.headers), ...(await subResponseBody(response)) };
  }

  /** A batch without a valid token is refused as a whole (401); a valid token that grants too
   *  little gets its 403 from each request's own route. */
  async function authenticateBatch(c: Context<AppEnv>): Promise<void> {
    try {
      await auth.authenticate(c.req.header('authorization'));
    } catch (error) {
      if (!(error instanceof GraphError && error.status === 403)) throw error;
    }
  }

  return routes;
}

/**
 * A request of a batch as the app reads it: its body is held as bytes and handed to Hono's
 * readers (json() reads text()) without a body stream. A fetch Request built with a body makes
 * a ReadableStream, and in a profile of $batch that, with the Request's AbortSignal, cost more
 * than the rest of the request. Nothing in the app reads the stream itself: the body limit reads
 * Content-Length, which is set.
 */
class HeldBodyRequest extends Request {
  constructor(
    url: string,
    init: RequestInit,
    private readonly bytes: Buffer | undefined,
  ) {
    super(url, init);
  }

  override readonly text = (): Promise<string> => Promise.resolve(this.bytes?.toString('utf8') ?? '');

  override readonly arrayBuffer = (): Promise<ArrayBuffer> => {
    const bytes = this.bytes ?? Buffer.alloc(0);
    return Promise.resolve(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
  };
}

async function afterDependencies(request: SubRequest, dependencies: Promise<SubResponse>[], run: () => Promise<SubResponse>): Promise<SubResponse> {
  const failed = (await Promise.all(dependencies)).find((answer) => answer.status < 200 || answer.status >= 300);
  if (!failed) return run();
  const message = `Request '${request.id}' depends on request '${failed.id}', which did not succeed (${failed.status}).`;
  return { id: request.id, status: 424, headers: { 'Content-Type': 'application/json' }, body: { error: { code: 'failedDependency', message } } };
}

/** The first rule of Graph JSON batching that spans requests and that the batch breaks, as a
 *  sentence naming the request; undefined when there is none. */
export function batchRuleBroken(requests: SubRequest[]): string | undefined {
  const seen = new Set<string>();
  for (const request of requests) {
    const which = `Request '${request.id}'`;
    if (seen.has(request.id)) return `${which} appears twice: every request of a batch needs its own id.`;
    for (const dependency of request.dependsOn ?? []) {
      if (!seen.has(dependency)) {
        const later = requests.some((other) => other.id === dependency);
        return later
          ? `${which} depends on '${dependency}', which comes after it: a request may depend only on requests before it.`
          : `${which} depends on '${dependency}', which is not a request of this batch.`;
      }
    }
    seen.add(request.id);
    const url = request.url;
    if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(url) || url.startsWith('//')) {
      return `${which} has an absolute url '${url}': urls are relative to the version root, such as /external/connections/{id}/operations.`;
    }
    if (/(?:^|\/)(?:\$|%24)batch(?:[/?#]|$)/i.test(url)) return `${which} is a batch itself: batches do not nest.`;
    const hasBody = request.body !== undefined && request.body !== null;
    if (hasBody && !Object.keys(request.headers ?? {}).some((name) => name.toLowerCase() === 'content-type')) {
      return `${which} has a body without a Content-Type header.`;
    }
    if (hasBody && request.method === 'GET') return `${which} is a GET with a body.`;
    try {
      new Headers(request.headers);
    } catch {
      return `${which} has a header that is not valid HTTP.`;
    }
    if (!URL.canParse(`http://localhost${subPath(url, '')}`)) return `${which} has a url that is not a valid path: '${url}'.`;
  }
  return undefined;
}

/** The path a sub-request's url names: relative to the batch's version root, unless it names
 *  one itself (the Graph JS client sends `/v1.0/…` when its own base URL carries the version). */
function subPath(url: string, root: string): string {
  const path = url.startsWith('/') ? url : `/${url}`;
  if (VERSION_ROOTS.some((version) => version !== '' && (path === version || path.startsWith(`${version}/`) || path.startsWith(`${version}?`)))) return path;
  return `${root}${path}`;
}

function bodyBytes(body: NonNullable<SubRequest['body']>): Buffer {
  return typeof body === 'string' ? Buffer.from(body, 'base64') : Buffer.from(JSON.stringify(body));
}

function subResponseHeaders(headers: Headers): Record<string, string> {
  const spelled: Record<string, string> = {};
  headers.forEach((value, name) => {
    spelled[HEADER_SPELLING[name] ?? name.replace(/(^|-)([a-z])/g, (_, dash: string, letter: string) => dash + letter.toUpperCase())] = value;
  });
  return spelled;
}

/** A JSON body as JSON; any other body as base64; no body, nothing. */
async function subResponseBody(response: Response): Promise<{ body?: unknown; json?: string }> {
  const json = jsonTextOf(response);
  if (json !== undefined) return { json };
  const bytes = Buffer.from(await response.arrayBuffer());
  if (bytes.length === 0) return {};
  if (/^application\/(?:[\w.+-]+\+)?json\b/i.test(response.headers.get('content-type') ?? '')) {
    try {
      return { body: JSON.parse(bytes.toString('utf8')) as unknown };
    } catch {
      // Not JSON after all: sent as bytes below.
    }
  }
  return { body: bytes.toString('base64') };
}

/** A batch whose shape is wrong: Graph's 400, naming where (`requests[3].method must be …`). */
const describeBatchProblem: Hook<unknown, AppEnv, string, unknown> = (result) => {
  if (result.success) return;
  const issue = result.error.issues[0];
  if (!issue || issue.path.length === 0) throw badRequest('The batch must be a JSON object with a "requests" list.');
  const where = issue.path.map((part, i) => (typeof part === 'number' ? `[${part}]` : i === 0 ? String(part) : `.${String(part)}`)).join('');
  throw badRequest(`The batch's ${where} ${issue.message}.`);
};
