import { z } from 'zod';
import { CONNECTION_ID_RULE, isValidConnectionId } from './operation.js';

/** The externalConnection resource, as far as this service keeps it: the producer of the
 *  operations of its schema and its deletion. */

/** Graph's states this service uses: a connection is `draft` until a schema is provisioned. */
export const CONNECTION_STATES = ['draft', 'ready'] as const;
export type ConnectionState = (typeof CONNECTION_STATES)[number];

export interface ExternalConnection {
  id: string;
  name: string;
  description: string;
  state: ConnectionState;
}

const ODATA_TYPE = 'microsoft.graph.externalConnectors.externalConnection';
export const CONNECTION_NAME_MAX = 128;
export const CONNECTION_DESCRIPTION_MAX = 2048;

/** What a client may send to create a connection; every property names its own rule. */
export const createConnectionBodySchema = z
  .strictObject({
    '@odata.type': z
      .string()
      .refine((value) => value.replace(/^#/, '') === ODATA_TYPE, { message: `must be "#${ODATA_TYPE}"` })
      .optional(),
    id: z
      .string({ error: 'is required: a connection id of 3-32 ASCII letters and digits' })
      .refine(isValidConnectionId, { error: (issue) => `'${String(issue.input)}' is not a valid connection id. ${CONNECTION_ID_RULE}` }),
    name: z
      .string({ error: `is required: 1-${CONNECTION_NAME_MAX} characters shown to users` })
      .min(1, { message: `must be 1-${CONNECTION_NAME_MAX} characters` })
      .max(CONNECTION_NAME_MAX, { message: `must be 1-${CONNECTION_NAME_MAX} characters` }),
    description: z
      .string({ error: `must be a string of at most ${CONNECTION_DESCRIPTION_MAX} characters` })
      .max(CONNECTION_DESCRIPTION_MAX, { message: `must be at most ${CONNECTION_DESCRIPTION_MAX} characters` })
      .optional(),
  })
  .meta({
    id: 'externalConnectionCreate',
    description: 'id and name are required; description is optional.',
    example: { id: 'contosohr', name: 'Contoso HR', description: 'Connection to index Contoso HR system' },
  });
export type CreateConnectionBody = z.infer<typeof createConnectionBodySchema>;

/** Turns the first problem zod found in a connection body into a sentence naming the property. */
export function describeConnectionBodyProblem(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return 'The request body is not a valid externalConnection.';
  if (issue.code === 'unrecognized_keys') {
    const names = issue.keys.map((key) => `'${key}'`).join(', ');
    return `Property ${names} is not supported when creating an externalConnection; the supported properties are @odata.type, id, name and description.`;
  }
  if (issue.path.length === 0) return 'The request body must be a JSON object.';
  return `Property '${issue.path.join('.')}' ${issue.message}.`;
}
