// DEVELOPMENT ONLY. oidc-provider 9 targets Node 22 (and 20.18+), but Debian 12 and
// Ubuntu 24.04 ship Node 18, which lacks three things it uses: URL.parse (Node 20.18),
// crypto.hash (Node 20.12) and, unless flagged, the WebCrypto global that jose needs.
// Each is added here only when missing, with the same meaning as the real one; on a
// current Node this module changes nothing. server.mjs imports oidc-provider after it.
import { register } from 'node:module';
import * as nodeCrypto from 'node:crypto';

const added = [];
if (typeof URL.parse !== 'function') {
  URL.parse = (input, base) => {
    try {
      return new URL(input, base);
    } catch {
      return null;
    }
  };
  added.push('URL.parse');
}
if (!globalThis.crypto) {
  Object.defineProperty(globalThis, 'crypto', { value: nodeCrypto.webcrypto, configurable: true, enumerable: true });
  added.push('globalThis.crypto');
}
if (typeof nodeCrypto.hash !== 'function') {
  // `import * as crypto from 'node:crypto'` gives a frozen namespace: the only way to add
  // `hash` is to resolve node:crypto to a module that re-exports it with hash added.
  register('./compat-hooks.mjs', import.meta.url);
  added.push('crypto.hash');
}
if (added.length) {
  console.error(`dev issuer: Node ${process.versions.node} lacks ${added.join(', ')}; added compatible versions (devissuer/compat.mjs)`);
}
