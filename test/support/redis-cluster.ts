import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from '../../scripts/lib/free-port.js';
import { waitForPing } from '../../scripts/lib/redis-server.js';
import { pollUntil, withTimeout } from './wait.js';

/**
 * A real Redis Cluster of three masters (no replicas) on free loopback ports, each node a
 * `redis-server --cluster-enabled yes` in its own temporary directory, joined by
 * `redis-cli --cluster create`. For tests that must show the service works on a cluster:
 * hash slots, MOVED redirections, scripts that must stay in one slot.
 */

export interface ClusterNode {
  port: number;
  url: string;
  dir: string;
}

export interface RedisCluster {
  /** The comma-separated node URLs, as REDIS_URL takes a cluster. */
  url: string;
  nodes: ClusterNode[];
  /** The node that serves a hash slot (from CLUSTER SLOTS, read once the cluster was ok). */
  nodeOfSlot(slot: number): ClusterNode;
  /** SIGKILL every node and remove their directories. */
  destroy(): Promise<void>;
}

/** Deadlines for a busy two-core machine; a healthy start takes well under a second each. */
const NODE_START_TIMEOUT_MS = 10_000;
const CREATE_TIMEOUT_MS = 20_000;
const CLUSTER_OK_TIMEOUT_MS = 20_000;

interface RunningNode extends ClusterNode {
  child: ChildProcess;
  exited: Promise<unknown>;
}

export async function startRedisCluster(masters = 3): Promise<RedisCluster> {
  const nodes: RunningNode[] = [];
  const destroy = async () => {
    await Promise.all(
      nodes.map(async (node) => {
        if (node.child.exitCode === null && node.child.signalCode === null) node.child.kill('SIGKILL');
        await node.exited;
        rmSync(node.dir, { recursive: true, force: true });
      }),
    );
  };

  try {
    for (let i = 0; i < masters; i++) {
      const port = await freePort();
      // The cluster bus defaults to port + 10000, which for an ephemeral port can be taken or
      // past 65535: give it a free port of its own.
      const busPort = await freePort();
      const dir = mkdtempSync(join(tmpdir(), 'cops-cluster-'));
      const child = spawn(
        'redis-server',
        [
          '--port', String(port),
          '--cluster-port', String(busPort),
          '--bind', '127.0.0.1',
          '--dir', dir,
          '--cluster-enabled', 'yes',
          '--cluster-config-file', `nodes-${port}.conf`,
          '--cluster-node-timeout', '2000',
          '--appendonly', 'no',
          '--save', '',
          // BullMQ and the store need it (the service warns otherwise).
          '--maxmemory-policy', 'noeviction',
        ],
        { cwd: dir, stdio: 'ignore' },
      );
      const exited = new Promise((resolve) => {
        child.once('exit', resolve);
        child.once('error', resolve);
      });
      nodes.push({ port, url: `redis://127.0.0.1:${port}`, dir, child, exited });
    }
    await Promise.all(nodes.map((node) => waitForPing(node.port, NODE_START_TIMEOUT_MS)));

    await runRedisCli(
      ['--cluster', 'create', ...nodes.map((node) => `127.0.0.1:${node.port}`), '--cluster-replicas', '0', '--cluster-yes'],
      CREATE_TIMEOUT_MS,
    );
    const slots = await waitUntilClusterOk(nodes, CLUSTER_OK_TIMEOUT_MS);

    return {
      url: nodes.map((node) => node.url).join(','),
      nodes: nodes.map(({ port, url, dir }) => ({ port, url, dir })),
      nodeOfSlot(slot) {
        const range = slots.find(([from, to]) => slot >= from && slot <= to);
        const node = range && nodes.find((candidate) => candidate.port === range[2]);
        if (!node) throw new Error(`no node serves slot ${slot}`);
        return { port: node.port, url: node.url, dir: node.dir };
      },
      destroy,
    };
  } catch (error) {
    await destroy();
    throw error;
  }
}

async function runRedisCli(args: string[], timeoutMs: number): Promise<string> {
  const child = spawn('redis-cli', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  try {
    const exited = new Promise<number | null>((resolve, reject) => {
      child.once('exit', resolve);
      child.once('error', reject);
    });
    const code = await withTimeout(exited, timeoutMs, () => `redis-cli ${args.join(' ')} still runs after ${timeoutMs} ms\n${output}`);
    if (code !== 0) throw new Error(`redis-cli ${args.join(' ')} exited ${code}\n${output}`);
    return output;
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

/** Polls until every node says `cluster_state:ok` and knows every master; returns the slot
 *  ranges as [from, to, port]. */
async function waitUntilClusterOk(nodes: ClusterNode[], timeoutMs: number): Promise<[number, number, number][]> {
  const clients = nodes.map((node) => new Redis({ port: node.port, host: '127.0.0.1', maxRetriesPerRequest: 1 }));
  for (const client of clients) client.on('error', () => {});
  let last = '';
  try {
    return await pollUntil(
      async () => {
        const infos = await Promise.all(clients.map((client) => client.call('CLUSTER', 'INFO') as Promise<string>));
        last = infos.join('\n---\n');
        const ok = infos.every((info) => /cluster_state:ok/.test(info) && new RegExp(`cluster_known_nodes:${nodes.length}\\b`).test(info));
        if (!ok) return undefined;
        const ranges = (await clients[0]!.call('CLUSTER', 'SLOTS')) as [number, number, [string, number, string]][];
        return ranges.map(([from, to, [, port]]): [number, number, number] => [from, to, port]);
      },
      { timeoutMs, intervalMs: 100, what: 'the cluster to be ok on every node', context: () => last },
    );
  } finally {
    for (const client of clients) client.disconnect();
  }
}
