import type { ConnectionSchema } from '../shared/connection-schema.js';
import { errorDetailSchema, type ErrorDetail, type OperationKind, type OperationStatus } from '../shared/operation.js';

/**
 * The processor contract. A processor is an async function that does an operation's work:
 * resolving means `completed`; throwing an OperationFailure (or any error carrying a valid
 * `errorDetail`, or BullMQ's UnrecoverableError) means `failed` at once; throwing anything else
 * is transient and retried until the attempts run out.
 */
export interface ProcessorInput {
  /** `operation`: created by a client's POST; `schema`: provision the connection's `schema`
   *  (a schema PATCH made it); `deleteConnection`: remove what the connection provisioned (a
   *  DELETE made it). */
  kind: OperationKind;
  /** The schema to provision, as submitted (kind `schema` only). */
  schema?: ConnectionSchema;
  tenantId: string;
  connectionId: string;
  operation: { id: string; status: OperationStatus; error: ErrorDetail | null };
  /** 1 on the first attempt. */
  attempt: number;
  /** Aborted when the operation no longer needs this attempt: a client canceled it (the reason
   *  is an OperationCanceled), the worker's shutdown deadline passed, or another worker took the
   *  attempt over (this worker missed its lease renewals). */
  signal: AbortSignal;
}

export type Processor = (input: ProcessorInput) => Promise<void>;

/** A failure that retrying cannot fix; its errorDetail is recorded on the operation. */
export class OperationFailure extends Error {
  override name = 'OperationFailure';
  constructor(readonly errorDetail: ErrorDetail) {
    super(errorDetail.message);
  }
}

/** The abort reason a processor's signal carries when a client canceled the operation: it is
 *  failed with operationCanceled already, and whatever the processor does next is not recorded. */
export class OperationCanceled extends Error {
  override name = 'OperationCanceled';
  constructor() {
    super('The operation was canceled by a client.');
  }
}

/** A failure worth retrying; `errorCode` names it in the errorDetail if the last attempt fails. */
export class TransientFailure extends Error {
  override name = 'TransientFailure';
  constructor(
    readonly errorCode: string,
    message: string,
  ) {
    super(message);
  }
}

/** The errorDetail of a permanent failure; module processors need not import our class, an
 *  error with a valid `errorDetail` property is enough. BullMQ's UnrecoverableError is
 *  permanent too, recognised by name: a module may bring its own copy of bullmq. */
export function permanentFailureOf(error: unknown): ErrorDetail | undefined {
  if (error instanceof Error && error.name === 'UnrecoverableError') {
    return { errorCode: 'processingFailed', message: error.message, details: [] };
  }
  if (typeof error !== 'object' || error === null || !('errorDetail' in error)) return undefined;
  const parsed = errorDetailSchema.safeParse(error.errorDetail);
  return parsed.success ? parsed.data : undefined;
}

/** What an operation records when its attempts are spent and the last one never reported: its
 *  worker died, or lost its lease, while the processor ran. */
export function interruptedFailure(attempts: number): ErrorDetail {
  return {
    errorCode: 'processingInterrupted',
    message:
      `Processing stopped before finishing on the last of ${attempts} attempt${attempts === 1 ? '' : 's'}: ` +
      'the worker running it stopped or lost its lease.',
    details: [],
  };
}

/** What the operation records when its last attempt failed transiently. */
export function exhaustedFailure(error: unknown, attempts: number): ErrorDetail {
  const errorCode = error instanceof TransientFailure ? error.errorCode : 'processingFailed';
  const reason = error instanceof Error ? error.message : String(error);
  return {
    errorCode,
    message: `Processing failed after ${attempts} attempt${attempts === 1 ? '' : 's'}: ${reason}`,
    details: [],
  };
}
