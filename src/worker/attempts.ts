import { randomBytes } from 'node:crypto';
import { connectionTag, groupByConnection } from '../shared/keys.js';
import type { Logger } from '../shared/logger.js';
import type { OperationRef } from '../shared/operation.js';
import type { AttemptOutcome, ClaimResult, ClaimRules, FinishResult, OperationStore, OperationTask } from '../shared/store.js';
import { OperationCanceled } from './processor.js';
import { TickWriter } from './tick-writer.js';

/** A claimed attempt: its number, the token that fences its writes, and the signal its
 *  processor call gets (aborted at the shutdown deadline, or when the lease is lost). */
export interface HeldAttempt {
  attempt: number;
  holder: string;
  /** What the processor is to do (an operation of a connection's schema or deletion, or not). */
  task: OperationTask;
  /** The trace context of the operation's create, when it was made with tracing on. */
  readonly traceparent?: string | undefined;
  readonly signal: AbortSignal;
  /** Why the attempt was aborted, if it was. */
  readonly abortReason: Error | undefined;
}
export type Claim = Exclude<ClaimResult, { kind: 'claimed' }> | ({ kind: 'claimed' } & HeldAttempt);

type ClaimItem = OperationRef & { jobId: string; holder: string };
type OutcomeItem = OperationRef & Omit<AttemptOutcome, 'operationId'>;

/** An attempt in flight. Its AbortController is made only when the processor reads `signal`:
 *  most processors never do, and one per attempt costs CPU on every operation. */
class Held implements HeldAttempt {
  readonly kind = 'claimed';
  private controller: AbortController | undefined;
  abortReason: Error | undefined;

  constructor(
    readonly ref: OperationRef,
    readonly attempt: number,
    readonly holder: string,
    readonly task: OperationTask,
    readonly traceparent: string | undefined,
  ) {}

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.abortReason) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  abort(reason: Error): void {
    this.abortReason ??= reason;
    this.controller?.abort(reason);
  }
}

/**
 * A worker process's side of the attempt ledger kept on each operation (OperationStore.claim):
 * it claims attempts before the processor is called, keeps their leases alive while the
 * processor runs, and writes what each attempt decided as soon as it ends. Claims of the same
 * tick, connection and job share one script call, and so do outcomes of the same tick and
 * connection.
 */
export class Attempts {
  /** Unique per process (48 random bits), so holder tokens of two workers never collide. A
   *  holder token is `<processId>:<sequence>`: the cancel script finds the process's cancel
   *  channel by it (shared/scripts.ts, CANCEL). */
  readonly processId = randomBytes(6).toString('base64url');
  private sequence = 0;
  private readonly held = new Map<string, Held>();
  /** Holder tokens whose claim is on its way back from Redis, and the abort that came for one
   *  of them first: the cancel's message and the claim's reply travel on two connections, so
   *  the cancel of a just-claimed attempt can arrive before its claim does. */
  private readonly claiming = new Map<string, Error | undefined>();
  private readonly claims: TickWriter<ClaimItem, ClaimResult>;
  private readonly outcomes: TickWriter<OutcomeItem, FinishResult>;
  private readonly renewal: NodeJS.Timeout;

  constructor(
    private readonly store: Pick<OperationStore, 'claim' | 'finishMany' | 'renewLeases'>,
    private readonly rules: ClaimRules,
    private readonly log: Logger,
  ) {
    this.claims = new TickWriter(
      (first, items) => store.claim(first, first.jobId, items, rules),
      (item) => `${connectionTag(item)}|${item.jobId}`,
    );
    this.outcomes = new TickWriter((first, items) => store.finishMany(first, items));
    // Renewed twice per lease, as BullMQ renews its job locks: one late renewal does not lose it.
    this.renewal = setInterval(() => void this.renew(), Math.max(1, Math.floor(rules.leaseMs / 2)));
    this.renewal.unref();
  }

  /** Claims the next attempt of `ref` for job `jobId` ('' for the operation's own job). */
  async claim(ref: OperationRef, jobId: string): Promise<Claim> {
    const holder = `${this.processId}:${(++this.sequence).toString(36)}`;
    const { tenantId, connectionId, operationId } = ref;
    this.claiming.set(holder, undefined);
    let result: ClaimResult;
    let abortedEarly: Error | undefined;
    try {
      result = await this.claims.submit({ tenantId, connectionId, operationId, jobId, holder });
    } finally {
      abortedEarly = this.claiming.get(holder);
      this.claiming.delete(holder);
    }
    if (result.kind !== 'claimed') return result;
    const held = new Held(ref, result.attempt, holder, result.task, result.traceparent);
    if (abortedEarly) held.abort(abortedEarly);
    this.held.set(holder, held);
    return held;
  }

  /** Aborts the attempt `holder` holds, if it is still in flight here (a client canceled it). */
  abort(holder: string, reason: Error): void {
    if (this.claiming.has(holder)) this.claiming.set(holder, reason);
    else this.held.get(holder)?.abort(reason);
  }

  /** Forgets an attempt without writing anything: its operation ended without it (canceled). */
  release(holder: string): void {
    this.held.delete(holder);
  }

  /** Writes what the attempt decided, fenced by its holder token; the lease is no longer kept. */
  async record(ref: OperationRef, holder: string, outcome: Omit<AttemptOutcome, 'operationId' | 'holder'>): Promise<FinishResult> {
    this.held.delete(holder);
    const { tenantId, connectionId, operationId } = ref;
    return this.outcomes.submit({ tenantId, connectionId, operationId, holder, status: outcome.status, error: outcome.error });
  }

  /** Aborts every processor call in flight (the shutdown deadline passed). */
  abortAll(reason: Error): void {
    for (const held of this.held.values()) held.abort(reason);
  }

  stop(): void {
    clearInterval(this.renewal);
  }

  /** Extends every lease held; an attempt whose lease was lost (taken over after this process
   *  missed its renewals) is aborted, and its outcome will be refused. */
  private async renew(): Promise<void> {
    const held = [...this.held.values()].map(({ ref, holder }) => ({ ...ref, holder }));
    await Promise.all(
      groupByConnection(held).map(async (group) => {
        try {
          const renewals = await this.store.renewLeases(group[0]!, group, this.rules.leaseMs);
          group.forEach(({ holder, operationId }, i) => {
            const held = this.held.get(holder);
            const renewal = renewals[i];
            if (renewal === 'renewed' || !held) return;
            // Ended: a client canceled the operation, and this renewal came between the cancel's
            // write and its message. Aborted as the message would have, so the attempt ends as
            // canceled (its processor error is not taken for a failure to retry).
            if (renewal === 'ended') {
              held.abort(new OperationCanceled());
              return;
            }
            this.held.delete(holder);
            this.log.warn({ operationId, connectionId: group[0]!.connectionId }, 'lease of an attempt in flight was lost; aborting it');
            held.abort(new Error('The lease of this attempt was lost to another worker.'));
          });
        } catch (error) {
          this.log.warn({ err: error }, 'renewing attempt leases failed; retrying at the next renewal');
        }
      }),
    );
  }
}
