// node prune-dev.js DIR: `npm prune --omit=dev` after `npm ci` from a lockfile v2/v3, without
// starting npm (which takes seconds): removes each package the lockfile marks "dev" (needed only
// for development), the node_modules/.bin links left dangling, and npm's hidden lockfile (npm
// reads the tree itself without it). Exits 2, touching nothing, when the lockfile has links or
// workspaces (then bin/compile runs npm prune). Prints how many packages it removed; with LIST
// (node prune-dev.js DIR LIST), also writes what it removed there, one "P path" (a package) or
// "F path" (a link or file) a line, relative to DIR: the next build from the same lockfile and
// tree removes the same without starting node (bin/compile).
"use strict";
const fs = require("fs");
const path = require("path");

const dir = process.argv[2];
const list = process.argv[3];
const record = [];
let lock;
for (const name of ["npm-shrinkwrap.json", "package-lock.json"]) {
  try { lock = JSON.parse(fs.readFileSync(path.join(dir, name), "utf8")); break; } catch (err) {}
}
const packages = (lock && lock.packages) || null;
if (!packages || Object.entries(packages).some(([k, p]) => p.link || (k && !k.startsWith("node_modules/")))) {
  process.exit(2);
}
const dev = Object.keys(packages).filter((k) => k && packages[k].dev && !packages[k].inBundle).sort();
let removed = 0;
const gone = [];
for (const key of dev) {
  if (gone.some((g) => key.startsWith(g + "/"))) continue;  // inside a package already removed
  fs.rmSync(path.join(dir, key), { recursive: true, force: true });
  gone.push(key);
  record.push("P " + key);
  removed++;
}
function dropDangling(binDir) {
  let names;
  try { names = fs.readdirSync(binDir); } catch (err) { return; }
  for (const name of names) {
    const link = path.join(binDir, name);
    try { fs.statSync(link); } catch (err) {
      if (err.code === "ENOENT") { fs.rmSync(link, { force: true }); record.push("F " + path.relative(dir, link)); }
    }
  }
}
dropDangling(path.join(dir, "node_modules", ".bin"));
for (const key of Object.keys(packages)) {
  if (key && !gone.some((g) => key === g || key.startsWith(g + "/"))) dropDangling(path.join(dir, key, "node_modules", ".bin"));
}
if (removed) {
  fs.rmSync(path.join(dir, "node_modules", ".package-lock.json"), { force: true });
  record.push("F node_modules/.package-lock.json");
}
if (list) fs.writeFileSync(list, record.join("\n") + "\n");
console.log(removed);
