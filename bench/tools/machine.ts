import { closeSync, openSync, writeSync } from 'node:fs';
import { Redis } from 'ioredis';
import { parseFlags, runSession } from '../lib/session.js';
import { median } from '../lib/stats.js';

/**
 * An investigation tool, not a target: what a system call and a Redis round trip cost on this
 * machine, the two costs every request and every batch pays before any JavaScript runs.
 *   npx tsx bench/tools/machine.ts
 * On a virtual machine whose kernel isolates page tables, or that virtualizes without hardware
 * help, both can be several times what they are on bare metal, and then they, not the code,
 * decide most of a process's CPU per request: read the bench's ratios of two days knowing this.
 * Five samples of each, one after the other, in this process alone; the medians are reported.
 */
const USAGE = `npx tsx bench/tools/machine.ts [flags]`;
const values = parseFlags({}, USAGE);

const SAMPLES = 5;
const WRITES = 100_000;
const ROUND_TRIPS = 5_000;

/** CPU µs (user, system) per call of `each`, over `count` calls, and wall µs. */
async function cpuPer(count: number, each: () => unknown): Promise<{ user: number; system: number; wall: number }> {
  const cpu = process.cpuUsage();
  const started = performance.now();
  for (let i = 0; i < count; i++) await each();
  const spent = process.cpuUsage(cpu);
  return { user: spent.user / count, system: spent.system / count, wall: ((performance.now() - started) * 1000) / count };
}

runSession(values, { results: 'machine', defaultRetries: 0 }, async (ctx) => {
  const fd = openSync('/dev/null', 'w');
  const byte = Buffer.alloc(1);
  const writes = [];
  for (let i = 0; i < SAMPLES; i++) writes.push(await cpuPer(WRITES, () => writeSync(fd, byte)));
  closeSync(fd);

  const redis = new Redis(ctx.redisUrl);
  ctx.harness.onCleanup(() => redis.disconnect());
  await redis.echo('warm-up');
  const roundTrips = [];
  for (let i = 0; i < SAMPLES; i++) roundTrips.push(await cpuPer(ROUND_TRIPS, () => redis.echo('0123456789')));

  const summarize = (samples: { user: number; system: number; wall: number }[]) => ({
    cpuUs: median(samples.map((s) => s.user + s.system)),
    userUs: median(samples.map((s) => s.user)),
    systemUs: median(samples.map((s) => s.system)),
    wallUs: median(samples.map((s) => s.wall)),
  });
  const write = summarize(writes);
  const roundTrip = summarize(roundTrips);
  ctx.log(`\n== what a system call and a Redis round trip cost here (medians of ${SAMPLES}) ==`);
  ctx.log(`  write(2) of 1 byte to /dev/null          ${write.cpuUs.toFixed(2)} µs CPU (user ${write.userUs.toFixed(2)}, system ${write.systemUs.toFixed(2)})`);
  ctx.log(
    `  Redis ECHO over loopback, one at a time  ${roundTrip.cpuUs.toFixed(1)} µs of the client's CPU (user ${roundTrip.userUs.toFixed(1)}, ` +
      `system ${roundTrip.systemUs.toFixed(1)}), ${roundTrip.wallUs.toFixed(1)} µs wall`,
  );
  return { write, roundTrip };
});
