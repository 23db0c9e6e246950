import type { Context } from 'hono';
import type { Config } from '../shared/config.js';

type UrlConfig = Pick<Config, 'PUBLIC_BASE_URL' | 'TRUST_PROXY'>;

const FORWARDED_PROTO = /^https?$/;
const FORWARDED_HOST = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/;

/**
 * The scheme, host and path prefix that clients reach this service at, for absolute URLs
 * (Location, @odata.nextLink): PUBLIC_BASE_URL when set; else the X-Forwarded-Proto/-Host a
 * trusted proxy sent (TRUST_PROXY=true); else the request's own scheme and Host.
 */
export function publicBaseUrl(c: Context, config: UrlConfig): string {
  if (config.PUBLIC_BASE_URL) return config.PUBLIC_BASE_URL.replace(/\/+$/, '');
  const own = new URL(c.req.url);
  if (config.TRUST_PROXY) {
    const proto = firstValue(c.req.header('x-forwarded-proto'));
    const host = firstValue(c.req.header('x-forwarded-host'));
    const scheme = proto && FORWARDED_PROTO.test(proto) ? proto : own.protocol.replace(':', '');
    const authority = host && FORWARDED_HOST.test(host) ? host : own.host;
    return `${scheme}://${authority}`;
  }
  return own.origin;
}

/** Proxies append to these headers: the first value is the one the client used. */
function firstValue(header: string | undefined): string | undefined {
  return header?.split(',')[0]?.trim().toLowerCase() || undefined;
}
