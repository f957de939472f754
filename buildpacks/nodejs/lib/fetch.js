// Registry packages for bin/compile, with the stack's own npm libraries (pacote), in one node run:
//   node fetch.js SPEC...                   prints "NAME VERSION TARBALL" per SPEC (TARBALL: in the npm cache)
//   node fetch.js --resolve SPEC            print the version SPEC resolves to (nothing if none)
//   node fetch.js --peek SPEC...            as the first, but fetch nothing: TARBALL is where the npm
//                                           cache keeps it, there or not (its name is its sha512)
// A tarball is taken by its sha512 from the npm cache when it is there (bae seeds the cache from
// the platform's store, buildpacks/tarballs.py), else fetched into it — without npm's start-up,
// and without rewriting a cached file (npm's own fetch would, and fail on a shared, read-only one).
"use strict";
const path = require("path");
const fs = require("fs");
const pacote = require("pacote");

const opts = {
  cache: path.join(process.env.npm_config_cache, "_cacache"),
  registry: process.env.npm_config_registry || undefined,
  fullMetadata: false,
};

// The cached tarball of SPEC (fetched into the npm cache first if it is not there): its path and
// "NAME VERSION". Unpacking is left to GNU tar, several times faster than node's tar here.
async function tarball(spec, peek) {
  const m = await pacote.manifest(spec, opts);
  const file = contentPath(m._integrity);
  if (peek && file) return `${m.name} ${m.version} ${file}`;
  if (!file || !fs.existsSync(file)) {
    await pacote.tarball(`${m.name}@${m.version}`, { ...opts, integrity: m._integrity, resolved: m._resolved });
  }
  if (!file || !fs.existsSync(file)) throw Object.assign(new Error(`${spec}: no sha512 tarball in the cache`), { code: "ENOCACHE" });
  return `${m.name} ${m.version} ${file}`;
}

function contentPath(integrity) {
  const sha = String(integrity || "").split(/\s+/).find((s) => s.startsWith("sha512-"));
  if (!sha) return null;
  const hex = Buffer.from(sha.slice(7), "base64").toString("hex");
  return path.join(opts.cache, "content-v2", "sha512", hex.slice(0, 2), hex.slice(2, 4), hex.slice(4));
}

async function main(args) {
  if (args[0] === "--resolve") {
    try {
      console.log((await pacote.manifest(args[1], opts)).version);
    } catch (err) {
      if (err.code !== "ETARGET" && err.code !== "E404") throw err;
    }
    return;
  }
  const peek = args[0] === "--peek";
  if (peek) args = args.slice(1);
  for (const line of await Promise.all(args.map((spec) => tarball(spec, peek)))) console.log(line);
}

main(process.argv.slice(2)).catch((err) => {
  console.error(`${err.code || "error"}: ${err.message}`);
  process.exit(1);
});
