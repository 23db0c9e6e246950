import { createKeys, connectionTag, parseConnectionTag, type ConnectionRef, type Keys } from './keys.js';
import type { ErrorDetail, Operation, OperationRef, OperationStatus, TerminalStatus } from './operation.js';
import type { RedisClient } from './redis.js';
import { scripts } from './scripts.js';

/**
 * The operation store: the only module that reads or writes operation records in Redis.
 * Records are scoped by tenant and connection; every transition is one Lua script.
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

export interface TerminalOutcome {
  operationId: string;
  status: TerminalStatus;
  error?: ErrorDetail | undefined;
}
export type FinishResult = 'finished' | 'alreadyTerminal' | 'missing';

export class OperationStore {
  readonly keys: Keys;
  private readonly retentionMs: number;
  /** Indexes outlive the records they list by a day, then expire with them. */
  private readonly indexTtlMs: number;
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
   * before, or earlier in the same list, is `exists`. `jobId` names the batch job that will
   * carry them, so the reconciler can tell whether that job still lives.
   */
  async createMany(
    connection: ConnectionRef,
    operationIds: string[],
    jobId = '',
  ): Promise<{ results: CreateResult[]; createdAt: number }> {
    const now = this.now();
    await this.register(connection, now);
    const reply = (await scripts.create.run(
      this.redis,
      [this.keys.index(connection), this.keys.statusIndex(connection, 'inprogress')],
      [now, this.keys.operationPrefix(connection), this.indexTtlMs, jobId, ...operationIds],
    )) as number[];
    return { results: reply.map((created) => (created === 1 ? 'created' : 'exists')), createdAt: now };
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

  /** Moves an inprogress operation to its terminal status, once; later calls change nothing. */
  async finish(ref: OperationRef, status: TerminalStatus, error?: ErrorDetail): Promise<FinishResult> {
    return (await this.finishMany(ref, [{ operationId: ref.operationId, status, error }]))[0]!;
  }

  /** `finish` for several operations of one connection, in one atomic script. */
  async finishMany(connection: ConnectionRef, outcomes: TerminalOutcome[]): Promise<FinishResult[]> {
    const reply = (await scripts.finish.run(
      this.redis,
      [
        this.keys.statusIndex(connection, 'inprogress'),
        this.keys.statusIndex(connection, 'completed'),
        this.keys.statusIndex(connection, 'failed'),
        this.keys.index(connection),
      ],
      [
        this.now(),
        this.retentionMs,
        this.keys.operationPrefix(connection),
        this.indexTtlMs,
        ...outcomes.flatMap(({ operationId, status, error }) => [operationId, status, error ? JSON.stringify(error) : '']),
      ],
    )) as number[];
    return reply.map((result) => (result === 1 ? 'finished' : result === 0 ? 'alreadyTerminal' : 'missing'));
  }

  /** The status of several operations of one connection, in one script call; undefined for an
   *  operation that does not exist (expired, or never created). */
  async statuses(connection: ConnectionRef, operationIds: string[]): Promise<(OperationStatus | undefined)[]> {
    const reply = (await scripts.statuses.run(
      this.redis,
      [this.keys.statusIndex(connection, 'inprogress')],
      [this.keys.operationPrefix(connection), ...operationIds],
    )) as string[];
    return reply.map((status) => (status ? (status as OperationStatus) : undefined));
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

  /** Connections that had creates, oldest registry entries first. */
  async connections(): Promise<ConnectionRef[]> {
    const tags = await this.redis.zrange(this.keys.connections(), 0, -1);
    return tags.map(parseConnectionTag).filter((ref): ref is ConnectionRef => ref !== undefined);
  }

  /** Ids of a connection's inprogress operations created before `before` (ms), oldest first. */
  async inprogressCreatedBefore(connection: ConnectionRef, before: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(
      this.keys.statusIndex(connection, 'inprogress'),
      '-inf',
      `(${before}`,
      'LIMIT',
      0,
      limit,
    );
  }

  /** Drops a connection from the registry when it has had no create for longer than the
   *  retention and nothing of it is inprogress. */
  async forgetIdleConnection(connection: ConnectionRef): Promise<boolean> {
    const score = await this.redis.zscore(this.keys.connections(), connectionTag(connection));
    if (score === null || Number(score) > this.now() - this.indexTtlMs) return false;
    if ((await this.count(connection, 'inprogress')) > 0) return false;
    await this.redis.zrem(this.keys.connections(), connectionTag(connection));
    return true;
  }

  /** True for the one caller that gets the lock until it expires after `ttlMs`. */
  async acquireReconcilerLock(ttlMs: number): Promise<boolean> {
    return (await this.redis.set(this.keys.reconcilerLock(), String(process.pid), 'PX', ttlMs, 'NX')) === 'OK';
  }

  /** Records that a connection has operations, before the first of them is written, so the
   *  reconciler can find it. Refreshed at most every REGISTRY_REFRESH_MS per process. */
  private async register(connection: ConnectionRef, now: number): Promise<void> {
    const tag = connectionTag(connection);
    const last = this.registered.get(tag);
    if (last !== undefined && now - last < REGISTRY_REFRESH_MS) return;
    await this.redis.zadd(this.keys.connections(), now, tag);
    if (this.registered.size > 100_000) this.registered.clear();
    this.registered.set(tag, now);
  }
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
