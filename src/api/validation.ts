import type { Hook } from '@hono/zod-openapi';
import { describeCreateBodyProblem } from '../shared/operation.js';
import type { AppEnv } from './env.js';
import { badRequest } from './errors.js';
import { describeListQueryProblem } from './list-query.js';

/** What a failed validation answers: Graph's 400, naming the property or option at fault. */
export const answerValidationFailure: Hook<unknown, AppEnv, string, unknown> = (result) => {
  if (result.success) return;
  const error = result.error;
  if (result.target === 'json') throw badRequest(describeCreateBodyProblem(error));
  if (result.target === 'query') throw badRequest(describeListQueryProblem(error));
  throw badRequest(error.issues[0]?.message ?? 'The request is not valid.');
};
