/** The longest a request may be held by `Prefer: wait`, in seconds; larger values count as this. */
export const MAX_WAIT_SECONDS = 60;

/**
 * The `wait` preference of a Prefer header (RFC 7240), in whole seconds from 1 to
 * MAX_WAIT_SECONDS; undefined when there is none or its value is not one (ignored, as RFC 7240
 * lets a server ignore any preference). Preferences are comma-separated, each `name[=value]`
 * with `;`-parameters; names are case-insensitive, values may be quoted, and when one is given
 * twice the first counts. Several Prefer headers arrive joined by commas, which parses the same.
 */
export function preferredWaitSeconds(header: string | undefined): number | undefined {
  if (!header) return undefined;
  for (const preference of splitOutsideQuotes(header, ',')) {
    const [nameAndValue = ''] = splitOutsideQuotes(preference, ';');
    const equals = nameAndValue.indexOf('=');
    const name = (equals === -1 ? nameAndValue : nameAndValue.slice(0, equals)).trim().toLowerCase();
    if (name !== 'wait') continue;
    const value = equals === -1 ? '' : unquote(nameAndValue.slice(equals + 1).trim());
    if (!/^\d{1,10}$/.test(value)) return undefined;
    const seconds = Number(value);
    return seconds >= 1 ? Math.min(seconds, MAX_WAIT_SECONDS) : undefined;
  }
  return undefined;
}

function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (char === '\\' && quoted) i++;
    else if (char === '"') quoted = !quoted;
    else if (char === separator && !quoted) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

function unquote(value: string): string {
  return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1).replace(/\\(.)/g, '$1') : value;
}
