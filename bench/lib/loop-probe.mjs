// Preloaded (`node --import bench/lib/loop-probe.mjs …`) into the API of the `waits` scenario
// only: it samples the event-loop delay the way prom-client's default metrics do
// (perf_hooks.monitorEventLoopDelay at a 10 ms resolution, so an idle loop reads about 10 ms), and
// on SIGWINCH writes what it recorded since the previous SIGWINCH to stderr, in milliseconds,
// `LOOPPROBE {"seq":n,"samples":…,"p50":…,"p99":…,"max":…}`, then starts over. The bench thus
// chooses each window itself; /metrics resets the same figures at every scrape, and watching a
// gauge there means scraping often.
import { writeSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const histogram = monitorEventLoopDelay({ resolution: 10 });
histogram.enable();
let seq = 0;
process.on('SIGWINCH', () => {
  const ms = (ns) => ns / 1e6;
  const samples = histogram.count;
  const line = {
    seq: ++seq,
    samples,
    p50: samples ? ms(histogram.percentile(50)) : null,
    p99: samples ? ms(histogram.percentile(99)) : null,
    max: samples ? ms(histogram.max) : null,
  };
  histogram.reset();
  writeSync(2, `LOOPPROBE ${JSON.stringify(line)}\n`);
});
