import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  createOperationBodySchema,
  describeCreateBodyProblem,
  isValidConnectionId,
  OPERATION_ID_PATTERN,
  TENANT_ID_PATTERN,
} from '../src/shared/operation.js';
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
  // Every valid id, with a good share made only of digits (BullMQ reads an all-digit job id as
  // a number) and of the separator-like characters operation ids may hold.
  const digits = (max: number) => fc.stringMatching(new RegExp(`^[0-9]{1,${max}}$`));
  const tenantId = fc.oneof(fc.stringMatching(TENANT_ID_PATTERN), digits(64));
  const connectionId = fc.oneof(fc.stringMatching(/^[A-Za-z0-9]{3,32}$/), fc.stringMatching(/^[0-9]{3,32}$/)).filter(isValidConnectionId);
  // (fast-check cannot generate from OPERATION_ID_PATTERN's lookahead: its characters, filtered.)
  const operationId = fc
    .oneof(fc.stringMatching(/^[A-Za-z0-9._~-]{1,128}$/), digits(128), fc.stringMatching(/^[~.0-9]{1,16}$/))
    .filter((id) => OPERATION_ID_PATTERN.test(id));
  const ref = fc.record({ tenantId, connectionId, operationId });

  it('never yields an id that is all digits or contains a colon, for any valid operation (property)', () => {
    fc.assert(
      fc.property(ref, (operation) => {
        const id = jobIdOf(operation);
        expect(id).not.toMatch(/^\d+$/);
        expect(id).not.toContain(':');
      }),
      { numRuns: 2000 },
    );
  });

  it('never yields one id for two operations: the id reads back as its tenant, connection and operation (property)', () => {
    fc.assert(
      fc.property(ref, (operation) => {
        const [tenant, connection, ...rest] = jobIdOf(operation).split('~');
        expect({ tenantId: tenant, connectionId: connection, operationId: rest.join('~') }).toEqual(operation);
      }),
      { numRuns: 2000 },
    );
  });
});
