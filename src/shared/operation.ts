import { z } from 'zod';

/** The connectionOperation resource and its identifiers, as Microsoft Graph defines them. */

export const OPERATION_STATUSES = ['unspecified', 'inprogress', 'completed', 'failed'] as const;
export type OperationStatus = (typeof OPERATION_STATUSES)[number];
export type TerminalStatus = 'completed' | 'failed';

/**
 * An operation's error is read by two models. The seed's connectionOperation has an errorDetail
 * (`errorCode`, `message`, `details[{source, message}]`); today's v1.0 Graph SDK models (Kiota)
 * read it as a publicError (`code`, `message`, `target`, `details[{code, message, target}]`).
 * The schemas accept either spelling, and `storedError` writes the superset of both, so a client
 * of either model reads every field it knows.
 */
export const innerErrorDetailSchema = z.object({
  source: z.string().optional(),
  target: z.string().optional().describe('The same value as source (publicErrorDetail).'),
  code: z.string().optional(),
  message: z.string().optional(),
});

export const errorDetailSchema = z.object({
  errorCode: z.string(),
  code: z.string().optional().describe('The same value as errorCode (publicError).'),
  message: z.string(),
  target: z.string().optional(),
  details: z.array(innerErrorDetailSchema).default([]),
});
export type ErrorDetail = z.infer<typeof errorDetailSchema>;
export type InnerErrorDetail = z.infer<typeof innerErrorDetailSchema>;

/** The error as it is stored and answered: the seed's errorDetail and Graph's publicError at
 *  once. `errorCode` and `code` carry the same value (errorCode's, when both were given), and so
 *  do each detail's `source` and `target` (source's); `target` and codes only when known. */
export function storedError({ errorCode, message, target, details }: ErrorDetail): ErrorDetail {
  return { errorCode, code: errorCode, message, ...(target === undefined ? {} : { target }), details: details.map(storedDetail) };
}

function storedDetail({ source, target, code, message }: InnerErrorDetail): InnerErrorDetail {
  const where = source ?? target;
  return {
    ...(where === undefined ? {} : { source: where, target: where }),
    ...(code === undefined ? {} : { code }),
    ...(message === undefined ? {} : { message }),
  };
}

/** What a cancelled operation records. Graph's status enum has no "canceled": it is a failure
 *  with this code, under both names clients read it by. */
export const OPERATION_CANCELED = 'operationCanceled';
export const canceledError: ErrorDetail = {
  errorCode: OPERATION_CANCELED,
  message: 'The operation was canceled by a client.',
  details: [],
};

/** What an operation asks of the processor: the work a client created it for (POST), the
 *  provisioning of its connection's schema (a schema PATCH), or the removal of its connection
 *  (DELETE). */
export const OPERATION_KINDS = ['operation', 'schema', 'deleteConnection'] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

export interface Operation {
  id: string;
  status: OperationStatus;
  error: ErrorDetail | null;
  /** When the service accepted the operation, and when its status last changed (ms). */
  createdAt: number;
  lastActionAt: number;
}

/** Everything that identifies one operation: the tenant, the connection and the id. */
export interface OperationRef {
  tenantId: string;
  connectionId: string;
  operationId: string;
}

// ---- identifiers ----

/** `.` and `..` are refused: URL parsers (clients, proxies, the WHATWG URL of the server) resolve
 *  them as dot segments, so an operation with such an id could never be read back. */
export const OPERATION_ID_PATTERN = /^(?!\.{1,2}$)[A-Za-z0-9._~-]{1,128}$/;
export const OPERATION_ID_RULE = '1-128 characters of letters, digits, ".", "_", "~" and "-", and not "." or ".."';

/** Tenant ids come from tokens (`tid`, a GUID in Entra ID); this shape keeps them safe inside
 *  Redis keys and job ids. */
export const TENANT_ID_PATTERN = /^[A-Za-z0-9-]{1,64}$/;

const RESERVED_CONNECTION_IDS = new Set(
  [
    'None',
    'Directory',
    'Exchange',
    'ExchangeArchive',
    'LinkedIn',
    'Mailbox',
    'OneDriveBusiness',
    'SharePoint',
    'Teams',
    'Yammer',
    'Connectors',
    'TaskFabric',
    'PowerBI',
    'Assistant',
    'TopicEngine',
    'MSFT_All_Connectors',
  ].map((id) => id.toLowerCase()),
);

export const CONNECTION_ID_RULE =
  'A connection id is 3-32 ASCII letters and digits, must not begin with "Microsoft", ' +
  'and must not be one of None, Directory, Exchange, ExchangeArchive, LinkedIn, Mailbox, ' +
  'OneDriveBusiness, SharePoint, Teams, Yammer, Connectors, TaskFabric, PowerBI, Assistant, ' +
  'TopicEngine, MSFT_All_Connectors.';

/** Graph's connection-id rules. Reserved names are compared case-insensitively, as Graph does. */
export function isValidConnectionId(id: string): boolean {
  return (
    /^[A-Za-z0-9]{3,32}$/.test(id) &&
    !id.toLowerCase().startsWith('microsoft') &&
    !RESERVED_CONNECTION_IDS.has(id.toLowerCase())
  );
}

// ---- the create body ----

const ODATA_TYPE = 'microsoft.graph.connectionOperation';

/** What a client may send when creating an operation; every property names its own rule. */
export const createOperationBodySchema = z.strictObject({
  '@odata.type': z
    .string()
    .refine((value) => value.replace(/^#/, '') === ODATA_TYPE, {
      message: `must be "#${ODATA_TYPE}"`,
    })
    .optional(),
  id: z
    .string({ error: `must be a string of ${OPERATION_ID_RULE}` })
    .regex(OPERATION_ID_PATTERN, { message: `must be ${OPERATION_ID_RULE}` })
    .optional(),
  status: z
    .enum(['unspecified', 'inprogress'], {
      error: 'must be "unspecified" or "inprogress" when creating: the service manages the status',
    })
    .optional(),
  error: z.null({ error: 'must be null when creating: errors are recorded by the service' }).optional(),
}).meta({
  id: 'connectionOperationCreate',
  description: 'Every property is optional; the service generates a UUID when id is absent.',
  example: { '@odata.type': '#microsoft.graph.connectionOperation', id: 'import-2026-11-29', status: 'inprogress', error: null },
});
export type CreateOperationBody = z.infer<typeof createOperationBodySchema>;

/** Turns the first problem zod found in a create body into a sentence naming the property. */
export function describeCreateBodyProblem(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return 'The request body is not a valid connectionOperation.';
  if (issue.code === 'unrecognized_keys') {
    const names = issue.keys.map((key) => `'${key}'`).join(', ');
    return (
      `Property ${names} is not allowed when creating a connectionOperation; ` +
      'the allowed properties are @odata.type, id, status and error.'
    );
  }
  if (issue.path.length === 0) return 'The request body must be a JSON object.';
  return `Property '${issue.path.join('.')}' ${issue.message}.`;
}
