// DEVELOPMENT ONLY: a real OpenID Provider (panva/oidc-provider) for jitgate's
// local stack and tests. It signs genuine ID tokens (RS256 and ES256) published
// through standard discovery and JWKS, but it will issue a token for any user
// and groups it is asked for. Never expose it beyond loopback.
//
// Usage: node server.mjs --port 0 --issuer-file <path>   (writes {"issuer":...} once listening)
// Token:  POST /token grant_type=urn:jitgate:params:grant-type:dev-login
//         client_id=jitgate-dev&client_secret=...&username=alice@example.com&groups=sre,dba
//         [&ttl=SECONDS][&alg=RS256|ES256][&audience=...]
// Browser sign-in (the review console): authorization code + PKCE for the public client
// jitgate-review (any http://127.0.0.1:<port>/auth/callback); /interaction/<uid> asks for a
// user name and groups and signs that person in, no password (DEV ONLY, like the grant above).
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
const REVIEW_CLIENT = 'jitgate-review';
// Groups each browser-signed-in user chose at the login form, by account id (the user name).
const accountGroups = new Map();

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
    }, {
      // The review console: a public client (no secret; PKCE is then mandatory). As a native
      // application its loopback redirect URI matches any port, so the console's port is free.
      client_id: REVIEW_CLIENT,
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/auth/callback'],
      id_token_signed_response_alg: 'RS256',
    }],
    jwks,
    // ID tokens of the code flow carry email and groups (the console reads them from the ID token).
    conformIdTokenClaims: false,
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    features: { devInteractions: { enabled: false } },
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      claims: async () => ({
        sub,
        email: sub.includes('@') ? sub : undefined,
        email_verified: sub.includes('@') ? true : undefined,
        groups: accountGroups.get(sub) || [],
      }),
    }),
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

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// The login step of the browser flow: a form for who to be (DEV ONLY: no password).
async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'consent' && details.params.client_id === REVIEW_CLIENT) {
    // The console is first-party: its scopes are granted without a consent screen (oidc-provider
    // always asks native clients, so this step answers for the person who just signed in).
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: REVIEW_CLIENT });
    grant.addOIDCScope('openid email groups');
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store',
      'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http://127.0.0.1:*" });
    res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>jitgate dev sign-in</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}label{display:block;margin-top:1em}input{width:100%}</style></head>
<body><h1>jitgate dev issuer</h1><p><strong>DEVELOPMENT ONLY</strong>: signs in anyone, with the groups typed here.</p>
<p>Client: ${escapeHtml(details.params.client_id)} · step: ${escapeHtml(details.prompt.name)} (${escapeHtml(details.prompt.reasons.join(', '))})</p>
<form method="post" action="/interaction/${escapeHtml(details.uid)}">
<label for="username">User (email)</label><input id="username" name="username" autocomplete="username" required autofocus>
<label for="groups">Groups (comma-separated)</label><input id="groups" name="groups">
<p><button type="submit">Sign in</button></p></form></body></html>`);
    return;
  }
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 8192) { res.writeHead(413); res.end(); return; }
  }
  const form = new URLSearchParams(body);
  const username = String(form.get('username') || '').trim().toLowerCase();
  if (!username) { res.writeHead(400, { 'content-type': 'text/plain' }); res.end('username is required'); return; }
  accountGroups.set(username, String(form.get('groups') || '').split(',').map((g) => g.trim()).filter(Boolean));
  await provider.interactionFinished(req, res, { login: { accountId: username } }, { mergeWithLastSubmission: false });
}

const server = createServer();
server.listen(port, host, () => {
  const issuer = `http://${host}:${server.address().port}`;
  let provider = buildProvider(issuer);
  server.on('request', (req, res) => {
    if (req.url.startsWith('/interaction/')) {
      interaction(provider, req, res).catch((err) => {
        res.writeHead(400, { 'content-type': 'text/plain' });
        res.end(`sign-in failed: ${err.message}`);
      });
      return;
    }
    provider.callback()(req, res);
  });
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
