import { Redis } from 'ioredis';

/**
 * Whether a Redis answers PING at `url` within a second, asked once, without retries. Not a
 * command of its own: scripts/dev.ts uses it to choose its Redis, and the tests import it too
 * (test/global-setup.ts to choose theirs, test/dev.test.ts to see the dev script's Redis stopped).
 */
export async function redisAnswers(url: string): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 1000 });
  client.on('error', () => {}); // a refused connection is an answer too: "no"
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}
