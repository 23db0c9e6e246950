import { createKeys, connectionTag, parseConnectionTag, type ConnectionRef, type Keys } from './keys.js';
import { storedError, type ErrorDetail, type Operation, type OperationRef, type OperationStatus, type TerminalStatus } from './operation.js';
import type { RedisClient } from './redis.js';
import { scripts } from './scripts.js';

/**
 * The operation store: the module that reads and writes operation records in Redis (the one
 * other writer is the connection store, whose schema and delete scripts create their
 * operations). Records are scoped by tenant and connection; every transition is one Lua script.
 */

const DAY_MS = 24 * 60 * 60 * 1000;
/** A registry entry is refreshed by creates at most this often per process. */
const REGISTRY_REFRESH_MS = 10_000;

export interface StoreOptions {
  prefix: string;
  /** How long a terminal operation stays readable. */
  retentionMs: number;
  now?: () => number;
}

export interface ListCursor {
  createdAt: number;
  id: string;
}

export interface ListPage {
  operations: Operation[];
  /** The next page starts after this position: the last index entry this page scanned, which
   *  may be an expired operation's. A page whose scan budget went to expired entries is short,
   *  even empty, and still has `next`; absent only when the index has nothing further. */
  next?: ListCursor;
}

export type CreateResult = 'created' | 'exists';

/** What an attempt decided (see the finish script): a terminal status, `retry` (another attempt
 *  follows, on the operation's own job) or `interrupted` (the attempt is given back). */
export interface AttemptOutcome {
  operationId: string;
  status: TerminalStatus | 'retry' | 'interrupted';
  error?: ErrorDetail | undefined;
  /** The attempt's holder token; without one the write is not fenced (no attempt makes it). */
  holder?: string;
}
/** `finished`: this call wrote the outcome; `superseded`: refused, the holder's lease was taken over by another. */
export type FinishResult = 'finished' | 'alreadyTerminal' | 'missing' | 'superseded';
const FINISH_RESULTS: Record<number, FinishResult> = { 1: 'finished', 0: 'alreadyTerminal', [-1]: 'missing', [-2]: 'superseded' };

/** One operation a job wants to run, and the token that will fence its attempt's writes. */
export interface ClaimRequest {
  operationId: string;
  holder: string;
}
export type ClaimResult =
  | { kind: 'claimed'; attempt: number; task: OperationTask; traceparent?: string }
  | { kind: 'terminal' | 'missing' | 'elsewhere' }
  | { kind: 'busy'; leaseLeftMs: number }
  | { kind: 'exhausted'; attempts: number };

/** What a claimed attempt is to do: an operation created by POST, or a connection's schema
 *  (its JSON as submitted) or deletion. */
export type OperationTask = { kind: 'operation' } | { kind: 'schema'; schemaJson: string } | { kind: 'deleteConnection' };
const POSTED: OperationTask = { kind: 'operation' };

export type CancelResult = { result: 'missing' } | { result: 'canceled' | 'ended'; operation: Operation };

export type LeaseRenewal = 'renewed' | 'lost' | 'ended';

export interface ClaimRules {
  leaseMs: number;
  attempts: number;
  /** Recorded on an operation whose attempts are spent without an outcome. */
  exhausted: ErrorDetail;
}

export interface RegistryPage {
  connections: { connection: ConnectionRef; lastCreateAt: number }[];
  /** '0' when the scan is complete. */
  cursor: string;
}

export class OperationStore {
  readonly keys: Keys;
  private readonly retentionMs: number;
  /** Indexes outlive the records they list by a day, then expire with them. */
  readonly indexTtlMs: number;
  private readonly now: () => number;
  /** When this process last refreshed each connection's registry entry. */
  private readonly registered = new Map<string, number>();

  constructor(
    private readonly redis: RedisClient,
    { prefix, retentionMs, now = Date.now }: StoreOptions,
  ) {
    this.keys = createKeys(prefix);
    this.retentionMs = retentionMs;
    this.indexTtlMs = retentionMs + DAY_MS;
    this.now = now;
  }

  /** Creates the operation as `inprogress` unless its id is taken in this tenant and connection. */
  async create(ref: OperationRef): Promise<{ result: CreateResult; operation: Operation }> {
    const { results, createdAt } = await this.createMany(ref, [ref.operationId]);
    return { result: results[0]!, operation: inprogressOperation(ref.operationId, createdAt) };
  }

  /**
   * Creates several operations of one connection in one atomic script, in order: an id taken
   * before, or earlier in the same list, is `exists`. `batchJobId` names the batch job that will
   * carry them ('' when each will have its own job), so the reconciler can tell whether that job
   * still lives. `traceparents`, when tracing is on, are the creates' trace contexts (one per
   * id), kept with the operations so that their processing continues each create's trace.
   *
   * The script is on its way to Redis when this returns its promise: written to the connection
   * in the call (after the connection registry's ZADD, when one is due), and as EVAL with its
   * source, not EVALSHA, whose NOSCRIPT reply would make it go again later. So a command sent
   * on the same connection right after the call runs after the records are written:
   * CreateBatcher sends a batch's job that way.
   */
  async createMany(
    connection: ConnectionRef,
    operationIds: string[],
    batchJobId = '',
    traceparents?: (string | undefined)[],
  ): Promise<{ results: CreateResult[]; createdAt: number }> {
    const now = this.now();
    const ids = traceparents ? operationIds.flatMap((id, i) => [id, traceparents[i] ?? '']) : operationIds;
    const [, reply] = await Promise.all([
      this.register(connection, now),
      scripts.create.runSource(
        this.redis,
        [this.keys.index(connection), this.keys.statusIndex(connection, 'inprogress')],
        [now, this.keys.operationPrefix(connection), this.indexTtlMs, batchJobId, traceparents ? 'traced' : '', ...ids],
      ),
    ]);
    return { results: (reply as number[]).map((created) => (created === 1 ? 'created' : 'exists')), createdAt: now };
  }

  /** The batch job recorded for an inprogress operation, if it was created in a batch. */
  async batchJobOf(ref: OperationRef): Promise<string | undefined> {
    return (await this.redis.hget(this.keys.operation(ref), 'j')) ?? undefined;
  }

  async get(ref: OperationRef): Promise<Operation | undefined> {
    const [status, error, createdAt, lastActionAt] = await this.redis.hmget(
      this.keys.operation(ref),
      's',
      'e',
      'c',
      'u',
    );
    if (!status) return undefined;
    return toOperation(ref.operationId, status, error ?? '', createdAt, lastActionAt);
  }

  /** Moves an inprogress operation to its terminal status, once; later calls change nothing.
   *  Not fenced: for writes that no attempt makes. */
  async finish(ref: OperationRef, status: TerminalStatus, error?: ErrorDetail): Promise<FinishResult> {
    return (await this.finishMany(ref, [{ operationId: ref.operationId, status, error }]))[0]!;
  }

  /** What attempts of several operations of one connection decided, in one atomic script. */
  async finishMany(connection: ConnectionRef, outcomes: AttemptOutcome[]): Promise<FinishResult[]> {
    const args: (string | number)[] = [];
    for (const { operationId, holder, status, error } of outcomes) {
      args.push(operationId, holder ?? '', status, error ? errorJson(error) : '');
    }
    const reply = (await scripts.finish.run(this.redis, this.terminalKeys(connection), [...this.terminalArgs(connection), ...args])) as number[];
    return reply.map((result) => FINISH_RESULTS[result]!);
  }

  /**
   * Cancels an operation: an inprogress one becomes failed with `error` at once, and the worker
   * holding an attempt of it is told to abort it. `ended`: it was terminal already (a finish or
   * an earlier cancel won), and `operation` is what it ended as.
   */
  async cancel(ref: OperationRef, error: ErrorDetail): Promise<CancelResult> {
    const reply = (await scripts.cancel.run(this.redis, this.terminalKeys(ref), [
      ...this.terminalArgs(ref),
      ref.operationId,
      errorJson(error),
      this.keys.cancelsPrefix(),
    ])) as string[];
    const [result, status, storedJson, createdAt, lastActionAt] = reply;
    if (result === 'missing') return { result };
    return { result: result as 'canceled' | 'ended', operation: toOperation(ref.operationId, status!, storedJson!, createdAt, lastActionAt) };
  }

  /** Claims the next attempt of several operations of one connection for job `jobId` ('' for
   *  the operations' own jobs), in one atomic script (the claim script says what each result
   *  means). */
  async claim(connection: ConnectionRef, jobId: string, requests: ClaimRequest[], rules: ClaimRules): Promise<ClaimResult[]> {
    const args: (string | number)[] = [rules.leaseMs, rules.attempts, errorJson(rules.exhausted), jobId];
    for (const { operationId, holder } of requests) args.push(operationId, holder);
    const reply = (await scripts.claim.run(this.redis, this.terminalKeys(connection), [...this.terminalArgs(connection), ...args])) as [
      string,
      number,
      string?,
      string?,
      string?,
    ][];
    return reply.map(([kind, n, task, schemaJson = '', traceparent]): ClaimResult => {
      if (kind === 'claimed') return { kind, attempt: n, task: taskOf(task, schemaJson), ...(traceparent ? { traceparent } : {}) };
      if (kind === 'busy') return { kind, leaseLeftMs: n };
      if (kind === 'exhausted') return { kind, attempts: n };
      return { kind: kind as 'terminal' | 'missing' | 'elsewhere' };
    });
  }

  /** Extends the leases of attempts a worker holds: `lost` where another holder has the attempt,
   *  `ended` where the operation ended without it (canceled). */
  async renewLeases(connection: ConnectionRef, held: { operationId: string; holder: string }[], leaseMs: number): Promise<LeaseRenewal[]> {
    const args: string[] = [];
    for (const { operationId, holder } of held) args.push(operationId, holder);
    const reply = (await scripts.renew.run(
      this.redis,
      [this.keys.statusIndex(connection, 'inprogress')],
      [this.keys.operationPrefix(connection), leaseMs, ...args],
    )) as number[];
    return reply.map((renewed) => (renewed === 1 ? 'renewed' : renewed === 0 ? 'lost' : 'ended'));
  }

  /** The operation leaves batch job `batchJobId` for its own job, if that batch still carries it. */
  async handToOwnJob(ref: OperationRef, batchJobId: string): Promise<boolean> {
    return (await scripts.handOver.run(this.redis, [this.keys.operation(ref)], [batchJobId])) === 1;
  }

  /** KEYS of the scripts that may end operations of a connection (scripts.ts, TERMINAL). */
  terminalKeys(connection: ConnectionRef): string[] {
    return [
      this.keys.statusIndex(connection, 'inprogress'),
      this.keys.statusIndex(connection, 'completed'),
      this.keys.statusIndex(connection, 'failed'),
      this.keys.index(connection),
      this.keys.changes(connection),
      this.keys.connection(connection),
    ];
  }

  /** ARGV[1..4] of those scripts. */
  terminalArgs(connection: ConnectionRef): (string | number)[] {
    return [this.now(), this.retentionMs, this.keys.operationPrefix(connection), this.indexTtlMs];
  }

  /** One page of a connection's operations, newest first, optionally of one status. */
  async list(
    connection: ConnectionRef,
    { top, status, cursor }: { top: number; status?: OperationStatus; cursor?: ListCursor },
  ): Promise<ListPage> {
    const index = status ? this.keys.statusIndex(connection, status) : this.keys.index(connection);
    const reply = (await scripts.list.run(
      this.redis,
      [index],
      [this.keys.operationPrefix(connection), top, cursor?.createdAt ?? '', cursor?.id ?? ''],
    )) as (string | number)[];
    const operations: Operation[] = [];
    for (let i = 3; i + 4 < reply.length; i += 5) {
      const [id, s, e, c, u] = reply.slice(i, i + 5).map(String) as [string, string, string, string, string];
      operations.push(toOperation(id, s, e, c, u));
    }
    // The cursor is the script's, not the last operation's: see LIST in scripts.ts.
    const hasMore = reply[0] === 1;
    return { operations, ...(hasMore ? { next: { createdAt: Number(reply[1]), id: String(reply[2]) } } : {}) };
  }

  /** How many entries a connection's index holds (entries of just-expired operations included
   *  until a listing or write prunes them). */
  async count(connection: ConnectionRef, status?: OperationStatus): Promise<number> {
    return this.redis.zcard(status ? this.keys.statusIndex(connection, status) : this.keys.index(connection));
  }

  // ---- for the reconciler ----

  /** Connections that had creates, oldest registry entries first (tests and tools; a sweep
   *  pages with `registryPage`). */
  async connections(): Promise<ConnectionRef[]> {
    const tags = await this.redis.zrange(this.keys.connections(), 0, -1);
    return tags.map(parseConnectionTag).filter((ref): ref is ConnectionRef => ref !== undefined);
  }

  /** One page of the connection registry. A scan cursor, not an offset: a sweep that forgets
   *  connections as it goes still sees every entry that stays. */
  async registryPage(cursor: string, count: number): Promise<RegistryPage> {
    const [next, flat] = await this.redis.zscan(this.keys.connections(), cursor, 'COUNT', count);
    const connections: RegistryPage['connections'] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const connection = parseConnectionTag(flat[i]!);
      if (connection) connections.push({ connection, lastCreateAt: Number(flat[i + 1]) });
    }
    return { connections, cursor: next };
  }

  /** Ids of a connection's inprogress operations created before `before` (ms), oldest first,
   *  `limit` of them from `offset`. */
  async inprogressCreatedBefore(connection: ConnectionRef, before: number, limit: number, offset = 0): Promise<string[]> {
    return this.redis.zrangebyscore(
      this.keys.statusIndex(connection, 'inprogress'),
      '-inf',
      `(${before}`,
      'LIMIT',
      offset,
      limit,
    );
  }

  /** When a registry entry may be forgotten: no create for longer than the retention (its
   *  records and indexes have expired by then). */
  idleBefore(): number {
    return this.now() - this.indexTtlMs;
  }

  /**
   * Drops a connection from the registry when nothing of it is inprogress and no create has
   * registered it since `idleBefore()`. The two checks are two slots on a cluster (the registry,
   * the connection's index), so the removal itself re-checks the registry entry atomically: a
   * create registers before it writes, so one racing this call keeps or restores the entry.
   */
  async forgetIdleConnection(connection: ConnectionRef): Promise<boolean> {
    if ((await this.count(connection, 'inprogress')) > 0) return false;
    const forgotten = await scripts.forgetConnection.run(this.redis, [this.keys.connections()], [connectionTag(connection), this.idleBefore()]);
    return forgotten === 1;
  }

  /** Takes the reconciler lock for `holder` unless another holds it; it lapses after `ttlMs`
   *  unless renewed. */
  async acquireReconcilerLock(holder: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.set(this.keys.reconcilerLock(), holder, 'PX', ttlMs, 'NX')) === 'OK';
  }

  /** Extends the lock if `holder` still holds it; false when it was lost. */
  async renewReconcilerLock(holder: string, ttlMs: number): Promise<boolean> {
    return (await scripts.renewLock.run(this.redis, [this.keys.reconcilerLock()], [holder, ttlMs])) === 1;
  }

  async releaseReconcilerLock(holder: string): Promise<void> {
    await scripts.releaseLock.run(this.redis, [this.keys.reconcilerLock()], [holder]);
  }

  /** Records that a connection has operations, before the first of them is written, so the
   *  reconciler can find it. Refreshed at most every REGISTRY_REFRESH_MS per process. (Also for
   *  the connection store, which writes the operations of schemas and deletes.) */
  async register(connection: ConnectionRef, now = this.now()): Promise<void> {
    const tag = connectionTag(connection);
    const last = this.registered.get(tag);
    if (last !== undefined && now - last < REGISTRY_REFRESH_MS) return;
    await this.redis.zadd(this.keys.connections(), now, tag);
    if (this.registered.size > 100_000) this.registered.clear();
    this.registered.set(tag, now);
  }
}

function taskOf(kind: string | undefined, schemaJson: string): OperationTask {
  if (kind === 'schema') return { kind, schemaJson };
  if (kind === 'deleteConnection') return { kind };
  return POSTED;
}

/** Every error is stored in the shape both Graph models read (operation.ts, storedError). */
export function errorJson(error: ErrorDetail): string {
  return JSON.stringify(storedError(error));
}

export function inprogressOperation(id: string, createdAt: number): Operation {
  return { id, status: 'inprogress', error: null, createdAt, lastActionAt: createdAt };
}

function toOperation(id: string, status: string, error: string, createdAt: unknown, lastActionAt: unknown): Operation {
  return {
    id,
    status: status as OperationStatus,
    error: error ? (JSON.parse(error) as ErrorDetail) : null,
    createdAt: Number(createdAt),
    lastActionAt: Number(lastActionAt),
  };
}
