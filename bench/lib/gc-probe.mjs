// Preloaded (`node --expose-gc --import bench/lib/gc-probe.mjs …`) into the processes of the RSS
// test only: on SIGUSR2 it runs a full GC and writes one line to stderr,
// `GCPROBE {"seq":n,"rss":…,"heapUsed":…,"heapTotal":…}`, so the bench can tell a leak (heap
// that survives a full GC grows) from V8 merely growing its heap lazily.
import { writeSync } from 'node:fs';

let seq = 0;
process.on('SIGUSR2', () => {
  globalThis.gc?.();
  const { rss, heapUsed, heapTotal } = process.memoryUsage();
  writeSync(2, `GCPROBE ${JSON.stringify({ seq: ++seq, rss, heapUsed, heapTotal })}\n`);
});
