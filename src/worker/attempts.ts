import { randomUUID } from 'node:crypto';
import { groupByConnection } from '../shared/keys.js';
import type { Logger } from '../shared/logger.js';
import type { OperationRef } from '../shared/operation.js';
import type { AttemptOutcome, ClaimResult, ClaimRules, FinishResult, OperationStore } from '../shared/store.js';
import { TickWriter } from './tick-writer.js';

/** A claimed attempt: its number, the token that fences its writes, and the signal its
 *  processor call gets (aborted at the shutdown deadline, or when the lease is lost). */
export interface HeldAttempt {
  attempt: number;
  holder: string;
  signal: AbortSignal;
}
export type Claim = Exclude<ClaimResult, { kind: 'claimed' }> | ({ kind: 'claimed' } & HeldAttempt);

type ClaimItem = OperationRef & { jobId: string; holder: string };
type OutcomeItem = OperationRef & Omit<AttemptOutcome, 'operationId'>;

interface Held {
  ref: OperationRef;
  controller: AbortController;
}

/**
 * A worker process's side of the attempt ledger kept on each operation (OperationStore.claim):
 * it claims attempts before the processor is called, keeps their leases alive while the
 * processor runs, and writes what each attempt decided as soon as it ends. Claims and outcomes
 * of the same tick and connection share one script call.
 */
export class Attempts {
  /** Unique per process, so holder tokens of two workers never collide. */
  private readonly processId = randomUUID();
  private sequence = 0;
  private readonly held = new Map<string, Held>();
  private readonly claims: TickWriter<ClaimItem, ClaimResult>;
  private readonly outcomes: TickWriter<OutcomeItem, FinishResult>;
  private readonly renewal: NodeJS.Timeout;

  constructor(
    private readonly store: Pick<OperationStore, 'claim' | 'finishMany' | 'renewLeases'>,
    private readonly rules: ClaimRules,
    private readonly log: Logger,
  ) {
    this.claims = new TickWriter((connection, items) =>
      store.claim(
        connection,
        items.map(({ operationId, jobId, holder }) => ({ operationId, jobId, holder })),
        rules,
      ),
    );
    this.outcomes = new TickWriter((connection, items) =>
      store.finishMany(
        connection,
        items.map(({ operationId, holder, status, error }) => ({ operationId, holder, status, error })),
      ),
    );
    // Renewed twice per lease, as BullMQ renews its job locks: one late renewal does not lose it.
    this.renewal = setInterval(() => void this.renew(), Math.max(1, Math.floor(rules.leaseMs / 2)));
    this.renewal.unref();
  }

  /** Claims the next attempt of `ref` for job `jobId` ('' for the operation's own job). */
  async claim(ref: OperationRef, jobId: string): Promise<Claim> {
    const holder = `${this.processId}:${++this.sequence}`;
    const result = await this.claims.submit({ ...ref, jobId, holder });
    if (result.kind !== 'claimed') return result;
    const controller = new AbortController();
    this.held.set(holder, { ref, controller });
    return { kind: 'claimed', attempt: result.attempt, holder, signal: controller.signal };
  }

  /** Writes what the attempt decided, fenced by its holder token; the lease is no longer kept. */
  async record(ref: OperationRef, holder: string, outcome: Omit<AttemptOutcome, 'operationId' | 'holder'>): Promise<FinishResult> {
    this.held.delete(holder);
    return this.outcomes.submit({ ...ref, holder, ...outcome });
  }

  /** Aborts every processor call in flight (the shutdown deadline passed). */
  abortAll(reason: Error): void {
    for (const { controller } of this.held.values()) controller.abort(reason);
  }

  stop(): void {
    clearInterval(this.renewal);
  }

  /** Extends every lease held; an attempt whose lease was lost (taken over after this process
   *  missed its renewals) is aborted, and its outcome will be refused. */
  private async renew(): Promise<void> {
    const held = [...this.held].map(([holder, { ref }]) => ({ ...ref, holder }));
    await Promise.all(
      groupByConnection(held).map(async (group) => {
        try {
          const renewed = await this.store.renewLeases(group[0]!, group, this.rules.leaseMs);
          group.forEach(({ holder, operationId }, i) => {
            const lost = this.held.get(holder);
            if (renewed[i] || !lost) return;
            this.held.delete(holder);
            this.log.warn({ operationId, connectionId: group[0]!.connectionId }, 'lease of an attempt in flight was lost; aborting it');
            lost.controller.abort(new Error('The lease of this attempt was lost to another worker.'));
          });
        } catch (error) {
          this.log.warn({ err: error }, 'renewing attempt leases failed; retrying at the next renewal');
        }
      }),
    );
  }
}
