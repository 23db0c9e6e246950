import type { Hook } from '@hono/zod-openapi';
import type { z } from 'zod';
import type { AppEnv } from './env.js';
import { badRequest } from './errors.js';
import { describeListQueryProblem } from './list-query.js';

/** What a failed validation answers: Graph's 400, naming the property or option at fault.
 *  `describeBody` words a body's first problem (each resource names its own properties). */
export function answerValidationFailure(describeBody: (error: z.ZodError) => string): Hook<unknown, AppEnv, string, unknown> {
  return (result) => {
    if (result.success) return;
    const error = result.error;
    if (result.target === 'json') throw badRequest(describeBody(error));
    if (result.target === 'query') throw badRequest(describeListQueryProblem(error));
    throw badRequest(error.issues[0]?.message ?? 'The request is not valid.');
  };
}
