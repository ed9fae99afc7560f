// DEVELOPMENT ONLY (see compat.mjs): resolve node:crypto to crypto-shim.mjs, which adds
// crypto.hash, for every importer but the shim itself.
const SHIM = new URL('./crypto-shim.mjs', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if ((specifier === 'node:crypto' || specifier === 'crypto') && context.parentURL !== SHIM) {
    return { url: SHIM, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
