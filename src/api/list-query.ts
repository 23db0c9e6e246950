import { z } from 'zod';
import type { Context } from 'hono';
import type { Config } from '../shared/config.js';
import { OPERATION_STATUSES } from '../shared/operation.js';
import type { ListCursor } from '../shared/store.js';
import { publicBaseUrl } from './urls.js';

/**
 * The OData options of a list: the query schema that both validates them and describes them in
 * the OpenAPI document, the opaque $skiptoken and the @odata.nextLink built from it. An
 * unsupported or repeated option is a 400 that names it, never silently ignored.
 */

const DEFAULT_TOP = 100;
const MAX_TOP = 999;

/** One occurrence of an option: a repeated one reaches the schema as an array. */
const once = (name: string) => z.string({ error: `Query option '${name}' is given more than once.` });

const topOption = once('$top')
  .refine((top) => /^\d{1,4}$/.test(top) && Number(top) >= 1 && Number(top) <= MAX_TOP, {
    error: (issue) => `$top must be a whole number from 1 to ${MAX_TOP}, not '${String(issue.input)}'.`,
  })
  .transform(Number)
  .optional()
  .meta({ description: `Page size, 1-${MAX_TOP} (default ${DEFAULT_TOP})`, example: '100' });

const countOption = once('$count')
  .refine((count) => count === 'true' || count === 'false', {
    error: (issue) => `$count must be true or false, not '${String(issue.input)}'.`,
  })
  .transform((count) => count === 'true')
  .optional()
  .meta({ description: 'true adds @odata.count' });

/** A $skiptoken option that `decode` turns into a cursor (a 400 when it cannot). */
const skipTokenOption = <T>(decode: (token: string) => T | undefined) =>
  once('$skiptoken')
    .transform((token, ctx) => {
      const cursor = decode(token);
      if (cursor === undefined) ctx.addIssue({ code: 'custom', message: '$skiptoken is not valid; take it unchanged from @odata.nextLink.' });
      return cursor ?? z.NEVER;
    })
    .optional()
    .meta({ description: 'Opaque; take it from @odata.nextLink' });

/** A query of only these options: any other is a 400 that lists them. */
const onlyOptions = <Shape extends z.ZodRawShape>(shape: Shape) =>
  z.strictObject(shape, {
    error: (issue) =>
      issue.code === 'unrecognized_keys'
        ? `Query option '${issue.keys[0]}' is not supported here; the supported options are ${Object.keys(shape).join(', ')}.`
        : undefined,
  });

/** The query of an operation list. */
export const listQuerySchema = onlyOptions({
  $top: topOption,
  $skiptoken: skipTokenOption(decodeSkipToken),
  $filter: once('$filter')
    .transform((filter, ctx) => {
      const match = /^\s*status\s+eq\s+'([^']*)'\s*$/.exec(filter);
      const status = OPERATION_STATUSES.find((known) => known === match?.[1]);
      if (!status) {
        ctx.addIssue({
          code: 'custom',
          message: `$filter supports only "status eq '<status>'" with one of ${OPERATION_STATUSES.join(', ')}; got '${filter}'.`,
        });
      }
      return status ?? z.NEVER;
    })
    .optional()
    .meta({ description: `status eq '<${OPERATION_STATUSES.join('|')}>'`, example: "status eq 'failed'" }),
  $count: countOption,
}).transform(({ $top, $skiptoken, $filter, $count }) => ({
  top: $top ?? DEFAULT_TOP,
  count: $count ?? false,
  ...($filter ? { status: $filter } : {}),
  ...($skiptoken ? { cursor: $skiptoken } : {}),
}));
export type ListQuery = z.output<typeof listQuerySchema>;

/** The query of a connection list: connections page by id. */
export const connectionListQuerySchema = onlyOptions({
  $top: topOption,
  $skiptoken: skipTokenOption(decodeConnectionSkipToken),
  $count: countOption,
}).transform(({ $top, $skiptoken, $count }) => ({
  top: $top ?? DEFAULT_TOP,
  count: $count ?? false,
  ...($skiptoken ? { after: $skiptoken } : {}),
}));

/** The sentence for the first problem of a list query. */
export function describeListQueryProblem(error: z.ZodError): string {
  return error.issues[0]?.message ?? 'The query options are not valid.';
}

/** The $skiptoken of the operation page after `cursor`. */
export function encodeSkipToken(cursor: ListCursor): string {
  return Buffer.from(`${cursor.createdAt}.${cursor.id}`).toString('base64url');
}

/** The $skiptoken of the connection page after connection `id`. */
export function encodeConnectionSkipToken(id: string): string {
  return Buffer.from(`c.${id}`).toString('base64url');
}

function decodeConnectionSkipToken(token: string): string | undefined {
  return /^c\.([A-Za-z0-9]{1,32})$/.exec(Buffer.from(token, 'base64url').toString())?.[1];
}

function decodeSkipToken(token: string): ListCursor | undefined {
  const match = /^(\d{1,16})\.([A-Za-z0-9._~-]{1,128})$/.exec(Buffer.from(token, 'base64url').toString());
  return match ? { createdAt: Number(match[1]), id: match[2]! } : undefined;
}

/** The absolute URL of the next page: the same request with its $skiptoken. */
export function nextLink(c: Context, config: Pick<Config, 'PUBLIC_BASE_URL' | 'TRUST_PROXY'>, skipToken: string): string {
  const params = new URL(c.req.url).searchParams;
  params.set('$skiptoken', skipToken);
  // URLSearchParams would write `%24top`; Graph clients expect the `$` literally.
  const query = [...params].map(([name, value]) => `${name}=${encodeURIComponent(value)}`).join('&');
  return `${publicBaseUrl(c, config)}${c.req.path}?${query}`;
}
