import { z } from 'zod';
import { CONNECTION_STATES } from '../shared/connection.js';
import { OPERATION_STATUSES, errorDetailSchema } from '../shared/operation.js';

/**
 * What the API answers, as zod schemas: the OpenAPI document is generated from these and from
 * the request schemas in shared/operation.ts, and the routes build their answers with the
 * types inferred here. The examples follow Microsoft Graph's connectionOperation documentation.
 */

export const operationResourceSchema = z
  .object({
    '@odata.type': z.literal('#microsoft.graph.connectionOperation'),
    id: z.string(),
    status: z.enum(OPERATION_STATUSES),
    error: errorDetailSchema.nullable(),
    createdDateTime: z.iso.datetime().describe('When the service accepted the operation (an addition to Graph).'),
    lastActionDateTime: z.iso.datetime().describe('When the status last changed (an addition to Graph).'),
  })
  .meta({
    id: 'connectionOperation',
    example: {
      '@odata.type': '#microsoft.graph.connectionOperation',
      id: '1.neu.0278337E599FC8DBF5B5C6B2A7A8E5C4.A1E6F7D1F2FD4E3A8E9F7F1B3C2D1E0F',
      status: 'failed',
      error: {
        errorCode: 'invalidItem',
        code: 'invalidItem',
        message: 'The item has no title',
        details: [{ source: 'title', target: 'title', message: 'required' }],
      },
      createdDateTime: '2026-11-29T10:00:00.000Z',
      lastActionDateTime: '2026-11-29T10:00:01.250Z',
    },
  });
export type OperationResource = z.infer<typeof operationResourceSchema>;

export const operationListSchema = z
  .object({
    '@odata.count': z.number().int().optional().describe('With $count=true.'),
    '@odata.nextLink': z.url().optional().describe('Absolute URL of the next page; follow it verbatim.'),
    value: z.array(operationResourceSchema),
  })
  .meta({
    id: 'connectionOperationCollection',
    example: {
      '@odata.nextLink':
        'https://graph.contoso.com/v1.0/external/connections/contosohr/operations?$top=1&$skiptoken=MTc5NTk5NjQzOTk2NS5vcDE',
      value: [
        {
          '@odata.type': '#microsoft.graph.connectionOperation',
          id: 'op1',
          status: 'completed',
          error: null,
          createdDateTime: '2026-11-29T10:00:00.000Z',
          lastActionDateTime: '2026-11-29T10:00:00.040Z',
        },
      ],
    },
  });

export const graphErrorSchema = z
  .object({
    error: z.object({
      code: z.string(),
      message: z.string(),
      details: z
        .array(z.object({ code: z.string(), message: z.string(), target: z.string() }))
        .optional()
        .describe('Every problem found, when a schema breaks several rules'),
      innerError: z.object({
        code: z.string().optional().describe("The rule a schema broke (Graph's own codes, e.g. RefinerShouldNotBeOfType)"),
        'request-id': z.string().optional(),
        'client-request-id': z.string().optional(),
        date: z.string(),
      }),
    }),
  })
  .meta({
    id: 'graphError',
    example: {
      error: {
        code: 'badRequest',
        message: "Property 'name' is not allowed when creating a connectionOperation; the allowed properties are @odata.type, id, status and error.",
        innerError: {
          'request-id': '2f4ab3c1-8e0d-4f6e-9d55-0c2a8b7f1e3a',
          'client-request-id': 'b1c2d3e4-0000-4000-8000-000000000000',
          date: '2026-11-29T10:00:00Z',
        },
      },
    },
  });

export const connectionResourceSchema = z
  .object({
    '@odata.type': z.literal('#microsoft.graph.externalConnectors.externalConnection'),
    id: z.string(),
    name: z.string(),
    description: z.string(),
    state: z.enum(CONNECTION_STATES).describe('draft until a schema is provisioned, then ready'),
  })
  .meta({
    id: 'externalConnection',
    example: {
      '@odata.type': '#microsoft.graph.externalConnectors.externalConnection',
      id: 'contosohr',
      name: 'Contoso HR',
      description: 'Connection to index Contoso HR system',
      state: 'draft',
    },
  });
export type ConnectionResource = z.infer<typeof connectionResourceSchema>;

export const connectionListSchema = z
  .object({
    '@odata.count': z.number().int().optional().describe('With $count=true.'),
    '@odata.nextLink': z.url().optional().describe('Absolute URL of the next page; follow it verbatim.'),
    value: z.array(connectionResourceSchema),
  })
  .meta({ id: 'externalConnectionCollection' });
