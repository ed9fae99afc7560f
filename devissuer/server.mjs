// DEVELOPMENT ONLY: a real OpenID Provider (panva/oidc-provider) for jitgate's
// local stack and tests. It signs genuine ID tokens (RS256 and ES256) published
// through standard discovery and JWKS, but it will issue a token for any user
// and groups it is asked for. Never expose it beyond loopback.
//
// Usage: node server.mjs --port 0 --issuer-file <path>   (writes {"issuer":...} once listening)
// Token:  POST /token grant_type=urn:jitgate:params:grant-type:dev-login
//         client_id=jitgate-dev&client_secret=...&username=alice@example.com&groups=sre,dba
//         [&ttl=SECONDS][&alg=RS256|ES256][&audience=...]
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFileSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import './compat.mjs';

// Imported after compat.mjs has run, so its additions are in place on Node 18.
const { default: Provider } = await import('oidc-provider');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, cur, i, all) => (cur.startsWith('--') ? [...acc, [cur.slice(2), all[i + 1]]] : acc), []),
);
const host = args.host || '127.0.0.1';
const port = Number(args.port || 0);
const audience = args.audience || 'jitgate';
const clientSecret = args['client-secret'] || 'jitgate-dev-secret';
const keysFile = args['keys-file'];
const GRANT = 'urn:jitgate:params:grant-type:dev-login';

function newKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const stamp = randomBytes(4).toString('hex');
  return [
    { ...rsa, kid: `rsa-${stamp}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `ec-${stamp}`, alg: 'ES256', use: 'sig' },
  ];
}

// Keys persist in --keys-file so a restarted stack keeps verifying earlier tokens;
// SIGHUP rotates them (tests use this to exercise JWKS refresh on an unknown kid).
let jwks = keysFile && existsSync(keysFile) ? JSON.parse(readFileSync(keysFile, 'utf8')) : { keys: newKeys() };
if (keysFile) writeFileSync(keysFile, JSON.stringify(jwks), { mode: 0o600 });

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'jitgate-dev',
      client_secret: clientSecret,
      grant_types: [GRANT, 'authorization_code'],
      redirect_uris: ['http://127.0.0.1/callback'],
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
    }, {
      // Same user population, ES256-signed ID tokens (the policy may list several audiences).
      client_id: 'jitgate-dev-es256',
      client_secret: clientSecret,
      grant_types: [GRANT],
      redirect_uris: ['http://127.0.0.1/es256'],
      response_types: [],
      id_token_signed_response_alg: 'ES256',
    }, {
      // A second relying party, so tests can obtain a genuine token minted for another audience.
      client_id: 'some-other-app',
      client_secret: clientSecret,
      grant_types: [GRANT],
      redirect_uris: ['http://127.0.0.1/other'],
      response_types: [],
      id_token_signed_response_alg: 'RS256',
    }],
    jwks,
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    features: { devInteractions: { enabled: false } },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  });
  provider.registerGrantType(GRANT, async (ctx) => {
    const { params } = ctx.oidc;
    let { client } = ctx.oidc;
    if (params.audience && params.audience !== client.clientId) {
      client = await provider.Client.find(String(params.audience));
      if (!client) {
        ctx.status = 400;
        ctx.body = { error: 'invalid_request', error_description: 'unknown audience' };
        return;
      }
    }
    const username = String(params.username || '').trim();
    if (!username) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'username is required' };
      return;
    }
    const groups = String(params.groups || '').split(',').map((g) => g.trim()).filter(Boolean);
    const ttl = params.ttl === undefined ? 3600 : Number(params.ttl);
    const alg = params.alg || 'RS256';
    const token = new provider.IdToken({ sub: username }, { ctx, client });
    token.scope = 'openid';
    token.set('email', username.includes('@') ? username : undefined);
    token.set('email_verified', username.includes('@') ? true : undefined);
    token.set('groups', groups);
    token.set('jitgate_dev', true);
    const now = Math.floor(Date.now() / 1000);
    // A negative ttl issues an already-expired token, for tests of expiry handling.
    const idToken = await token.issue({ use: 'idtoken', expiresAt: now + ttl, alg });
    ctx.body = { id_token: idToken, token_type: 'Bearer', expires_in: ttl };
  }, ['username', 'groups', 'ttl', 'alg', 'audience']);
  return provider;
}

const server = createServer();
server.listen(port, host, () => {
  const issuer = `http://${host}:${server.address().port}`;
  let provider = buildProvider(issuer);
  server.on('request', (req, res) => provider.callback()(req, res));
  process.on('SIGHUP', () => {
    jwks = { keys: newKeys() };
    if (keysFile) writeFileSync(keysFile, JSON.stringify(jwks), { mode: 0o600 });
    provider = buildProvider(issuer);
    console.log(JSON.stringify({ event: 'keys_rotated', kids: jwks.keys.map((k) => k.kid) }));
  });
  if (args['issuer-file']) writeFileSync(args['issuer-file'], JSON.stringify({ issuer, audience }));
  console.log(JSON.stringify({ event: 'listening', issuer, audience, dev_only: true }));
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
