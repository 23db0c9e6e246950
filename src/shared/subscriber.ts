import { Cluster } from 'ioredis';
import type { Logger } from './logger.js';
import type { RedisClient } from './redis.js';

/** Sharded pub/sub (SSUBSCRIBE: a channel lives in one cluster slot) or classic (SUBSCRIBE). */
export type ChannelKind = 'sharded' | 'classic';
export type MessageHandler = (message: string) => void;

interface Channel {
  kind: ChannelKind;
  handlers: Set<MessageHandler>;
  /** Settles when Redis confirmed the subscription. */
  subscribed: Promise<unknown>;
}

/**
 * A process's one pub/sub connection, shared by everything in it that listens (on a Redis
 * Cluster, ioredis keeps one per master for sharded channels). Listeners are counted per
 * channel: a channel is subscribed when its first listener comes and unsubscribed when its last
 * one leaves, and each message is handed to the channel's listeners in memory.
 *
 * Messages published while the connection is down are lost; ioredis subscribes again when it
 * reconnects, and then `onResubscribed` callbacks run, so a listener can read what it missed.
 */
export class Subscriber {
  private readonly channels = new Map<string, Channel>();
  private readonly resubscribed = new Set<() => void>();
  /** The connection closed since it was last ready: the next 'ready' is a reconnect. */
  private lostSinceReady = false;

  constructor(
    private readonly client: RedisClient,
    private readonly log: Pick<Logger, 'warn' | 'debug'>,
  ) {
    const deliver = (channel: string, message: string) => {
      for (const handler of this.channels.get(channel)?.handlers ?? []) handler(message);
    };
    client.on('smessage', deliver);
    client.on('message', deliver);
    client.on('error', (error: Error) => log.warn({ err: error.message }, 'pub/sub connection error'));
    if (client instanceof Cluster) {
      // A sharded subscriber (re)connected to a master: it subscribed its channels again.
      client.on('+subscriber', () => this.afterReconnect());
    } else {
      // A connection that closed, whether or not it had ever been ready: a watcher may have
      // registered while it was connecting, and what was published meanwhile reached nobody.
      client.on('close', () => {
        this.lostSinceReady = true;
      });
      client.on('ready', () => {
        if (!this.lostSinceReady) return;
        this.lostSinceReady = false;
        // ioredis sent the subscriptions again before 'ready'; a PING answered after them means
        // Redis has taken them, so a read made now misses nothing published from here on.
        client.ping().then(() => this.afterReconnect(), () => undefined);
      });
    }
  }

  /**
   * Hands every message on `channel` to `handler` until the returned function is called.
   * Resolves once Redis confirmed the subscription: a message published after that reaches the
   * handler. Rejects when the subscription fails (the listener is then removed).
   */
  async listen(channel: string, kind: ChannelKind, handler: MessageHandler): Promise<() => void> {
    let entry = this.channels.get(channel);
    if (!entry) {
      const subscribed = kind === 'sharded' ? this.client.ssubscribe(channel) : this.client.subscribe(channel);
      entry = { kind, handlers: new Set(), subscribed };
      this.channels.set(channel, entry);
    }
    entry.handlers.add(handler);
    const stop = () => this.leave(channel, handler);
    try {
      await entry.subscribed;
    } catch (error) {
      stop();
      throw error;
    }
    return stop;
  }

  /** Runs after each reconnect, once the channels are subscribed again. */
  onResubscribed(callback: () => void): () => void {
    this.resubscribed.add(callback);
    return () => this.resubscribed.delete(callback);
  }

  /** Channels with listeners now (for tests and metrics). */
  get channelCount(): number {
    return this.channels.size;
  }

  async close(): Promise<void> {
    this.channels.clear();
    await this.client.quit().catch(() => this.client.disconnect());
  }

  private leave(channel: string, handler: MessageHandler): void {
    const entry = this.channels.get(channel);
    if (!entry?.handlers.delete(handler) || entry.handlers.size > 0) return;
    this.channels.delete(channel);
    // Commands on one connection run in order, so a listener that subscribes this channel again
    // right after gets its SUBSCRIBE behind this UNSUBSCRIBE, and stays subscribed.
    const unsubscribed = entry.kind === 'sharded' ? this.client.sunsubscribe(channel) : this.client.unsubscribe(channel);
    unsubscribed.catch((error: unknown) => this.log.debug({ err: error, channel }, 'unsubscribe failed; the connection will drop it'));
  }

  private afterReconnect(): void {
    for (const callback of this.resubscribed) callback();
  }
}
