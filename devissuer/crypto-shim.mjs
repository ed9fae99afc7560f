// DEVELOPMENT ONLY (see compat.mjs): node:crypto plus crypto.hash (Node 20.12+) for Node 18.
import crypto from 'node:crypto';

export * from 'node:crypto';
export default crypto;

// crypto.hash(algorithm, data[, outputEncoding = 'hex']): a one-shot digest.
export function hash(algorithm, data, outputEncoding = 'hex') {
  const digest = crypto.createHash(algorithm).update(data);
  return outputEncoding === 'buffer' ? digest.digest() : digest.digest(outputEncoding);
}
