import type { Processor } from '../processor.js';

/** Completes every operation. For trying the service out and for benchmarks: the worker warns
 *  at startup when it runs this one. */
export const completeEverything: Processor = async () => {};
