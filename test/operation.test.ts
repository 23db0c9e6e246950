import { describe, expect, it } from 'vitest';
import { createOperationBodySchema, describeCreateBodyProblem, isValidConnectionId } from '../src/shared/operation.js';
import { jobIdOf } from '../src/shared/queue.js';

describe('isValidConnectionId', () => {
  it.each(['abc', 'Contoso2024', '123', 'a'.repeat(32), 'MicrosoftX'.slice(1)])('accepts %s', (id) => {
    expect(isValidConnectionId(id)).toBe(true);
  });
  it.each(['ab', 'a'.repeat(33), 'with-dash', 'with space', 'Microsoft1', 'MICROSOFTx', 'Teams', 'yammer', 'MSFT_All_Connectors', 'héllo', ''])(
    'refuses %s',
    (id) => {
      expect(isValidConnectionId(id)).toBe(false);
    },
  );
});

describe('describeCreateBodyProblem', () => {
  it('names every unknown property', () => {
    const result = createOperationBodySchema.safeParse({ foo: 1, bar: 2 });
    expect(result.success).toBe(false);
    expect(describeCreateBodyProblem(result.error!)).toMatch(/^Property 'foo', 'bar' is not allowed/);
  });
  it('accepts the odata type with or without #', () => {
    expect(createOperationBodySchema.safeParse({ '@odata.type': 'microsoft.graph.connectionOperation' }).success).toBe(true);
  });
});

describe('jobIdOf', () => {
  it('never yields an id that is all digits or contains a colon', () => {
    const id = jobIdOf({ tenantId: '123', connectionId: '456', operationId: '789' });
    expect(id).toBe('123~456~789');
    expect(id).not.toMatch(/^\d+$/);
    expect(id).not.toContain(':');
  });
});
