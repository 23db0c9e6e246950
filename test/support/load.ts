import type { RunningProcess } from './processes.js';
import { pollUntil } from './wait.js';
import type { ProcessorCall, ProcessorServer } from './processor-server.js';
import { logMessage } from './log-messages.js';

/**
 * Client-side helpers for process tests that create operations through a real API and check
 * what became of them: create bodies, one create, one status read, tallies of the workers'
 * logs and the processor's calls, and a worker killed mid-load.
 */

export type CreateBody = { id?: string };

export interface CreateOutcome {
  connectionId: string;
  body: CreateBody;
  status?: number;
  operationId?: string;
  /** Set when no answer came (the API died mid-request). */
  error?: string;
}

/** A mix of client ids (one made only of digits, as BullMQ job ids must never be) and
 *  server-generated ones. `series` keeps the client ids of several calls apart. */
export function createBodies(count: number, series = 0): CreateBody[] {
  const base = series * 1_000_000;
  return Array.from({ length: count }, (_, i): CreateBody => {
    if (i === 0) return { id: String(base + 12345) };
    if (i % 4 === 1) return { id: String(base + 900_000 + i) };
    if (i % 4 === 2) return { id: `op.${series}.${i}_x~y-z` };
    return {};
  });
}

export async function createOperation(baseUrl: string, token: string, connectionId: string, body: CreateBody): Promise<CreateOutcome> {
  try {
    const response = await fetch(`${baseUrl}/v1.0/external/connections/${connectionId}/operations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const json = (await response.json().catch(() => ({}))) as { id?: string };
    return { connectionId, body, status: response.status, ...(json.id ? { operationId: json.id } : {}) };
  } catch (error) {
    return { connectionId, body, error: error instanceof Error ? `${error.message} (${String(error.cause)})` : String(error) };
  }
}

/** The operation's status as a client reads it, or `http <status>` when the read is not a 200. */
export async function getStatus(baseUrl: string, token: string, connectionId: string, operationId: string): Promise<string> {
  const response = await fetch(`${baseUrl}/v1.0/external/connections/${connectionId}/operations/${operationId}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5000),
  });
  const json = (await response.json().catch(() => ({}))) as { status?: string };
  return response.status === 200 ? String(json.status) : `http ${response.status}`;
}

/** How many `operation finished` lines the workers logged per operation (connection/id). */
export function finishLogCounts(workers: readonly RunningProcess[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const worker of workers) {
    for (const line of worker.logs) {
      if (line.msg !== logMessage('operation finished')) continue;
      const key = `${String(line.connectionId)}/${String(line.operationId)}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
  }
  return counts;
}

/** Processor calls per worker (the URL path segment each worker was given). */
export function callsPerWorker(processor: ProcessorServer): Map<string, number> {
  const calls = new Map<string, number>();
  for (const call of processor.calls) calls.set(call.worker, (calls.get(call.worker) ?? 0) + 1);
  return calls;
}

/** Operation ids the processor was called for more than once. The processor server records
 *  the operation id only, so a load gives every id it creates a distinct value (`series`). */
export function seenMoreThanOnce(processor: ProcessorServer): string[] {
  return [...processor.timesSeen()].filter(([, times]) => times > 1).map(([id]) => id);
}

export interface KillMidLoad {
  killedAt: number;
  /** The victim's calls in flight when it was killed: it certainly died holding these. */
  inFlightAtKill: ProcessorCall[];
}

/**
 * Arms `processor` to SIGKILL `victim` from inside its request handler, once `afterCalls` calls
 * came in and the victim holds 5 calls in flight (1 once `lateAfterCalls` came in: how many it
 * holds depends on how fast the API takes creates on a busy machine). Nothing can answer those
 * calls between the snapshot and the signal. The victim's PROCESSOR_URL must be
 * `processor.urlFor(victim.name, …)`. `waitForKill` resolves once the signal was sent.
 */
export function killWhenHolding(
  processor: ProcessorServer,
  victim: RunningProcess,
  { afterCalls, lateAfterCalls }: { afterCalls: number; lateAfterCalls: number },
): { waitForKill(timeoutMs: number): Promise<KillMidLoad> } {
  let kill: KillMidLoad | undefined;
  processor.onCall = () => {
    if (kill !== undefined || processor.calls.length < afterCalls) return;
    const inFlight = processor.inFlight(victim.name);
    if (inFlight.length < (processor.calls.length < lateAfterCalls ? 5 : 1)) return;
    kill = { killedAt: Date.now(), inFlightAtKill: inFlight };
    victim.signal('SIGKILL');
  };
  return {
    waitForKill: (timeoutMs) =>
      pollUntil(() => kill, {
        timeoutMs,
        what: `${victim.name} to have calls in flight to kill it`,
        context: () => `calls: ${processor.calls.length}, in flight: ${processor.inFlight().length}`,
      }),
  };
}
