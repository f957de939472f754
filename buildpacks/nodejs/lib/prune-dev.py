"""python3 prune-dev.py DIR [LIST]: `npm prune --omit=dev` after `npm ci` from a lockfile v2/v3,
without starting npm (seconds) or node (a few tenths of a second on a busy host; the stack's
python3 starts in a few hundredths): removes each package the lockfile marks "dev" (needed only
for development), the node_modules/.bin links left dangling, and npm's hidden lockfile (npm reads
the tree itself without it). Exits 2, touching nothing, when the lockfile has links or workspaces
(then bin/compile runs npm prune). Prints how many packages it removed; with LIST, also writes
what it removed there, one "P path" (a package) or "F path" (a link or file) a line, relative to
DIR: the next build from the same lockfile and tree removes the same without starting anything
(bin/compile). Keys with empty, "." or ".." parts are never followed.
"""

import json
import os
import shutil
import sys


def main() -> int:
    root = sys.argv[1]
    listing = sys.argv[2] if len(sys.argv) > 2 else None
    lock = None
    for name in ("npm-shrinkwrap.json", "package-lock.json"):
        try:
            with open(os.path.join(root, name), encoding="utf-8") as fh:
                lock = json.load(fh)
            break
        except (OSError, ValueError):
            continue
    packages = lock.get("packages") if isinstance(lock, dict) else None
    if not isinstance(packages, dict) or not packages or any(
            not isinstance(p, dict) or p.get("link") or (k and not k.startswith("node_modules/"))
            for k, p in packages.items()):
        return 2
    safe = {k for k in packages if k and all(part not in ("", ".", "..") for part in k.split("/"))}
    record, gone = [], []
    for key in sorted(k for k in safe if packages[k].get("dev") and not packages[k].get("inBundle")):
        if any(key.startswith(g + "/") for g in gone):
            continue  # inside a package already removed
        path = os.path.join(root, key)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
        gone.append(key)
        record.append("P " + key)

    def drop_dangling(bin_dir: str) -> None:
        try:
            names = sorted(os.listdir(bin_dir))
        except OSError:
            return
        for name in names:
            link = os.path.join(bin_dir, name)
            try:
                os.stat(link)
            except FileNotFoundError:
                os.unlink(link)
                record.append("F " + os.path.relpath(link, root))
            except OSError:
                pass

    drop_dangling(os.path.join(root, "node_modules", ".bin"))
    for key in packages:
        if key in safe and not any(key == g or key.startswith(g + "/") for g in gone):
            drop_dangling(os.path.join(root, key, "node_modules", ".bin"))
    if gone:
        try:
            os.unlink(os.path.join(root, "node_modules", ".package-lock.json"))
        except FileNotFoundError:
            pass
        record.append("F node_modules/.package-lock.json")
    if listing:
        with open(listing, "w", encoding="utf-8") as fh:
            fh.write("\n".join(record) + "\n")
    print(len(gone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
