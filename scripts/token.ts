import '../src/load-env-file.js'; // first: reads .env, as the service does
import { parseArgs } from 'node:util';
import { SignJWT } from 'jose';
import { loadConfig } from '../src/shared/config.js';

/**
 * `npm run token -- --scope ExternalConnection.ReadWrite.All --tenant <guid>` prints an HS256
 * token signed with AUTH_JWT_SECRET (and carrying AUTH_AUDIENCE/AUTH_ISSUER when set), for
 * trying the API with curl. A developer convenience, not an identity provider: a script run with
 * tsx, not part of the build. Like the service, it reads .env from the working directory, and
 * the shell's variables win over it.
 */
const DEFAULT_SCOPE = 'ExternalConnection.ReadWrite.All';
const DEFAULT_TENANT = '11111111-1111-4111-8111-111111111111';

const HELP = `Usage: npm run token -- [options]

Prints an HS256 access token signed with AUTH_JWT_SECRET (from the environment or .env), with
AUTH_AUDIENCE / AUTH_ISSUER as aud / iss when they are set.

Options:
  --tenant <id>      the tid claim (default ${DEFAULT_TENANT})
  --scope <scopes>   the scp claim, space-separated delegated permissions (default ${DEFAULT_SCOPE})
  --role <role>      an application permission, in roles instead of scp; repeat for several
  --expires <time>   lifetime, as jose reads it: 1h, 30m, 2d (default 1h)
  -h, --help         this text
`;

let values;
try {
  ({ values } = parseArgs({
    options: {
      scope: { type: 'string', default: DEFAULT_SCOPE },
      role: { type: 'string', multiple: true },
      tenant: { type: 'string', default: DEFAULT_TENANT },
      expires: { type: 'string', default: '1h' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (error) {
  // An unknown option or a missing value: say which, then how to call it, without a stack trace.
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n\n${HELP}`);
  process.exit(2);
}
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const config = loadConfig();
if (!config.AUTH_JWT_SECRET) {
  process.stderr.write('AUTH_JWT_SECRET is not set: export the same secret the API uses.\n');
  process.exit(1);
}
const claims: Record<string, unknown> = { tid: values.tenant };
if (values.role?.length) claims.roles = values.role;
else claims.scp = values.scope;

let token = new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt().setExpirationTime(values.expires);
if (config.AUTH_AUDIENCE) token = token.setAudience(config.AUTH_AUDIENCE);
if (config.AUTH_ISSUER) token = token.setIssuer(config.AUTH_ISSUER);
process.stdout.write(`${await token.sign(new TextEncoder().encode(config.AUTH_JWT_SECRET))}\n`);
