import { sleep, withTimeout } from './wait.js';

/**
 * Client-side load and probes for fault tests: every request is recorded with when it started,
 * when it settled and what it answered, so a test can look at exactly the requests made while a
 * fault was in place. Requests carry their own timeout: one that never settles is recorded as
 * unanswered (`status` undefined), never left hanging.
 */

export interface RequestRecord {
  kind: 'create' | 'get' | 'probe';
  startedAt: number;
  endedAt: number;
  /** Undefined when no answer came (network error or the client's timeout). */
  status?: number;
  retryAfter?: string | null;
  /** `error.code` of a Graph error body. */
  errorCode?: string;
  /** The operation created (201) or read. */
  operationId?: string;
  /** Why no answer came. */
  error?: string;
}

/** Requests that started after `from` and settled before `to`: made entirely inside a window. */
export function within(records: readonly RequestRecord[], from: number, to: number): RequestRecord[] {
  return records.filter((record) => record.startedAt >= from && record.endedAt <= to);
}

export function latencyOf(record: RequestRecord): number {
  return record.endedAt - record.startedAt;
}

export function maxLatency(records: readonly RequestRecord[]): number {
  return records.reduce((max, record) => Math.max(max, latencyOf(record)), 0);
}

async function timedRequest(kind: RequestRecord['kind'], url: string, init: RequestInit, timeoutMs: number): Promise<RequestRecord> {
  const startedAt = Date.now();
  try {
    const response = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
    const text = await response.text();
    const endedAt = Date.now();
    let json: { id?: unknown; error?: { code?: unknown } } = {};
    try {
      json = JSON.parse(text) as typeof json;
    } catch {
      // not JSON: recorded without a code
    }
    return {
      kind,
      startedAt,
      endedAt,
      status: response.status,
      retryAfter: response.headers.get('retry-after'),
      ...(typeof json.error?.code === 'string' ? { errorCode: json.error.code } : {}),
      ...(typeof json.id === 'string' ? { operationId: json.id } : {}),
    };
  } catch (error) {
    const reason = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    return { kind, startedAt, endedAt: Date.now(), error: reason };
  }
}

export interface CreateLoadOptions {
  /** The API's base URL, `http://127.0.0.1:<port>`. */
  baseUrl: string;
  connectionId: string;
  token: string;
  /** Requests in flight at once. */
  lanes: number;
  /** Every n-th request of a lane reads an acknowledged operation instead of creating one. */
  getEvery?: number;
  /** A lane's pause after an answer other than 2xx, as a client backing off would (ms). */
  pauseAfterErrorMs?: number;
  /** A request still unanswered after this is aborted and recorded as unanswered (ms). */
  requestTimeoutMs?: number;
}

/**
 * Creates operations through the API with bounded concurrency until stopped, mixing in reads of
 * operations it already got a 201 for.
 */
export class CreateLoad {
  readonly records: RequestRecord[] = [];
  /** Operations answered 201, in answer order. */
  readonly acknowledged: RequestRecord[] = [];
  private running = false;
  private lanes: Promise<void>[] = [];
  private readonly onRecord = new Set<(record: RequestRecord) => void>();

  constructor(private readonly options: CreateLoadOptions) {}

  start(): void {
    this.running = true;
    this.lanes = Array.from({ length: this.options.lanes }, (_, lane) => this.lane(lane));
  }

  /** Stops issuing requests and waits for those in flight to settle. */
  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.lanes);
  }

  /** Resolves with the first record (already made or still to come) that matches; rejects at the deadline. */
  async waitFor(predicate: (record: RequestRecord) => boolean, timeoutMs: number, what: string): Promise<RequestRecord> {
    const seen = this.records.find(predicate);
    if (seen) return seen;
    let listener: ((record: RequestRecord) => void) | undefined;
    try {
      const found = new Promise<RequestRecord>((resolve) => {
        listener = (record) => {
          if (predicate(record)) resolve(record);
        };
        this.onRecord.add(listener);
      });
      return await withTimeout(found, timeoutMs, () => `timed out after ${timeoutMs} ms waiting for ${what}; last answers: ${JSON.stringify(this.records.slice(-5))}`);
    } finally {
      if (listener) this.onRecord.delete(listener);
    }
  }

  private async lane(lane: number): Promise<void> {
    const { baseUrl, connectionId, token, getEvery = 4, pauseAfterErrorMs = 50, requestTimeoutMs = 5000 } = this.options;
    const collection = `${baseUrl}/v1.0/external/connections/${connectionId}/operations`;
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    for (let n = 1; this.running; n++) {
      const known = this.acknowledged.length;
      let record: RequestRecord;
      if (n % getEvery === 0 && known > 0) {
        const id = this.acknowledged[(n * 7919 + lane) % known]!.operationId!;
        record = await timedRequest('get', `${collection}/${id}`, { headers }, requestTimeoutMs);
        record.operationId = id;
      } else {
        record = await timedRequest('create', collection, { method: 'POST', headers, body: '{}' }, requestTimeoutMs);
        if (record.status === 201) this.acknowledged.push(record);
      }
      this.records.push(record);
      for (const listener of this.onRecord) listener(record);
      if (record.status === undefined || record.status >= 300) {
        await sleep(pauseAfterErrorMs);
      }
    }
  }
}

/** GETs one URL at an interval until stopped (a load balancer's or kubelet's probe). */
export class Prober {
  readonly records: RequestRecord[] = [];
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    readonly name: string,
    private readonly url: string,
    private readonly intervalMs = 200,
    private readonly timeoutMs = 3000,
  ) {}

  start(): void {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        this.records.push(await timedRequest('probe', this.url, {}, this.timeoutMs));
        await sleep(this.intervalMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}
