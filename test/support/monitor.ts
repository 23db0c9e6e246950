import { connect } from 'node:net';

/**
 * Every command Redis runs, in the order it runs them, from every client and from inside
 * scripts (Redis's MONITOR), each as its arguments joined by spaces. Read on a plain socket:
 * ioredis's own monitor mode can mistake a line that arrives before its mode switch for the
 * reply to a command ("Command queue state error") while other clients are busy.
 */
export async function monitorRedis(url: string): Promise<{ commands: string[]; stop(): void }> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port || 6379), hostname);
  const commands: string[] = [];
  let buffered = '';
  let started = false;
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      const lines = buffered.split('\r\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        if (!started) {
          if (line !== '+OK') reject(new Error(`MONITOR answered ${line}`));
          started = true;
          resolve();
          continue;
        }
        // 1764691200.123456 [0 127.0.0.1:5000] "command" "arg" ... with \" and \\ escaped
        const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((match) => match[1]!.replace(/\\(.)/g, '$1'));
        if (args.length > 0) commands.push(args.join(' '));
      }
    });
    socket.write('MONITOR\r\n');
  });
  return { commands, stop: () => socket.destroy() };
}
