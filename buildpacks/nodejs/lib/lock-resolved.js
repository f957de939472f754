// node lock-resolved.js LOCKFILE NPM_CACHE [NPM_DIR]: before npm 7+ installs from a lockfile (v2/v3) whose
// entries lack "resolved" (written with omit-lockfile-registry-resolved), add each registry
// package's tarball URL, as npm writes it by default. npm then takes a tarball the cache has by
// its sha512 (bae seeds the cache from the platform's store) and fetches the others straight
// away; without a URL it fetches every package's metadata and tarball, and fails to rewrite a
// cached file that is the platform's (read-only): such files are removed for the entries left
// as they were (scoped packages, and all of them when the project's .npmrc names a registry).
// Prints how many entries got a URL. The caller keeps the original lockfile and restores it.
// The registry: npm_config_registry, else the default of the npm that installs (NPM_DIR, its
// npm-registry-fetch's defaults: one small file), else pacote's (loading pacote costs ~0.5 s).
"use strict";
const fs = require("fs");
const path = require("path");

// Also a module: bin/compile's first node run (package.json's facts) calls resolveLock with an
// OUT file when the lockfile needs URLs, which saves starting node again for it.

// Add the URLs to lockfile FILE; write the result to OUT (default: FILE) when any was added.
function resolveLock(file, cache, npmDir, out) {
  const lock = JSON.parse(fs.readFileSync(file, "utf8"));
  let npmrc = "";
  try { npmrc = fs.readFileSync(path.join(path.dirname(file), ".npmrc"), "utf8"); } catch (err) {}
  const ownRegistry = /^\s*(@[^:\s]+:)?registry\s*=/m.test(npmrc);  // the project chooses: leave it be
  let registry = null;
  let added = 0;
  for (const [key, p] of Object.entries(lock.packages || {})) {
    if (!key || p.resolved || p.link || p.inBundle || !p.version || !p.integrity) continue;
    const name = p.name || key.slice(key.lastIndexOf("node_modules/") + "node_modules/".length);
    if (!ownRegistry && !name.startsWith("@") && /^[0-9]+\.[0-9]+\.[0-9]+/.test(p.version)) {
      if (registry === null) {
        registry = process.env.npm_config_registry || defaultRegistry(npmDir);
        if (!registry.endsWith("/")) registry += "/";
      }
      p.resolved = `${registry}${name}/-/${name}-${p.version}.tgz`;
      added++;
      continue;
    }
    const sha = String(p.integrity).split(/\s+/).find((s) => s.startsWith("sha512-"));
    if (!sha) continue;
    const hex = Buffer.from(sha.slice(7), "base64").toString("hex");
    const content = path.join(cache, "_cacache", "content-v2", "sha512", hex.slice(0, 2), hex.slice(2, 4), hex.slice(4));
    try {
      if (fs.lstatSync(content).uid !== process.getuid()) fs.unlinkSync(content);
    } catch (err) {}
  }
  if (added) fs.writeFileSync(out || file, JSON.stringify(lock, null, 2) + "\n");
  return added;
}

function defaultRegistry(npmDir) {
  if (npmDir) {
    try {
      const found = require(path.join(npmDir, "node_modules", "npm-registry-fetch", "lib", "default-opts.js")).registry;
      if (typeof found === "string" && /^https?:\/\//.test(found)) return found;
    } catch (err) {}
  }
  return new (require("pacote").RegistryFetcher)("npm", {}).registry;
}

module.exports = { resolveLock };

if (require.main === module) {
  const [file, cache, npmDir] = process.argv.slice(2);
  console.log(resolveLock(file, cache, npmDir));
}
