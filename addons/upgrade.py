"""Major version upgrades: a verified backup, restored into the new version beside the old data.

``upgrade`` captures a verified backup of the add-on, starts the new version's
image on a new data directory (``upgrade-V/data``) in a throw-away container
without a network, restores the backup there and checks its tables and row
counts, and only then switches: the old data directory becomes ``data-OLD`` and
stays untouched, the add-on (same name, URL and password) runs the new version.
``confirm`` deletes the old data; ``revert`` switches back to it (writes made
since the upgrade are lost, which the command says). Called by addons:upgrade.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from addons.backups import _compare, capture, parse_counts
from addons.engine import engine
from addons.kinds import KINDS
from addons.service import Services
from bae.errors import BaeError, Invalid
from bae.model import Addon

__all__ = ["upgrade", "confirm", "revert", "kept_versions"]

# Start the new server on the staged data, restore the backup into it as bae-restore does for
# a running add-on, print the counts, stop the server cleanly.
_STAGE = r"""
set -euo pipefail
/usr/local/bin/bae-service &
for _ in $(seq 1 600); do
  setpriv --reuid=postgres --regid=postgres --init-groups pg_isready -h /run/postgresql -q 2>/dev/null && break
  sleep 0.1
done
setpriv --reuid=postgres --regid=postgres --init-groups /usr/local/bin/bae-restore "/bae/backups/$1"
setpriv --reuid=postgres --regid=postgres --init-groups "$(echo /usr/lib/postgresql/*/bin)/pg_ctl" -D /bae/data \
  -m fast -w stop >/dev/null
"""


def kept_versions(services: Services, addon: Addon) -> list[str]:
    """Versions whose data an upgrade kept beside the current data (``data-V``)."""
    folder = services.dir(addon.app, addon.name)
    return sorted(p.name[5:] for p in folder.glob("data-*") if p.is_dir())


def upgrade(services: Services, addon: Addon, version: str, out: Callable[[str], None]) -> Addon:
    kind = KINDS[addon.kind]
    if kind.name != "postgres":
        raise Invalid(f"{kind.title} {addon.version} is the only version offered here", kind.unavailable + ".")
    if kind.versions.index(version) <= kind.versions.index(addon.version):
        raise Invalid(f"{addon.name} runs {kind.title} {addon.version}; {version} is not newer",
                      "Downgrades are not possible; restore a backup into a new add-on instead.")
    if kept_versions(services, addon):
        raise Invalid(f"{addon.name} still keeps the data of its previous version",
                      f"Confirm or revert that upgrade first: addons:upgrade {addon.app} {addon.name} --confirm / --revert")
    store = services.platform.store
    folder = services.dir(addon.app, addon.name)
    out(f"Capturing a verified backup of {addon.name} ({kind.title} {addon.version}) first")
    backup = capture(services, addon, out)
    image = services.image_for(kind, version, out)
    staged = folder / f"upgrade-{version}"
    shutil.rmtree(staged, ignore_errors=True)
    (staged / "data").mkdir(parents=True)
    (staged / "backups").mkdir()
    name = Path(backup.file).name
    shutil.copyfile(backup.file, staged / "backups" / name)
    out(f"Restoring b{backup.number} into {kind.title} {version} beside the current data")
    plan = services.settings.plans[addon.plan]
    code, stdout, stderr = engine().run_throwaway(
        image=image, cmd=["bash", "-c", _STAGE, "stage", name], mounts=[(str(staged), "/bae", False)],
        labels={"bae.platform": services.instance, "bae.role": "addon-verify", "bae.app": addon.app},
        memory=plan.memory, cpu=plan.cpu, timeout=3600, env={"BAE_PASSWORD": addon.password, "BAE_MEMORY_MB": "256"})
    (staged / "backups" / name).unlink(missing_ok=True)
    problem = (f"the restore failed (exit {code}): " + " ".join(stderr.strip().splitlines()[-3:])[:300]
               if code != 0 else _compare(backup.counts, parse_counts(stdout)))
    if problem:
        shutil.rmtree(staged, ignore_errors=True)
        raise BaeError(f"upgrading {addon.name} to {version} failed: {problem}",
                       f"Nothing was switched: {addon.name} runs {addon.version} on its data as before.")
    out(f"Checked: {kind.title} {version} holds the same tables and rows; switching {addon.name} to it")
    old = addon.version
    for info in services.containers(addon.app, addon.name):
        engine().stop(info.id, 30)
        engine().remove(info.id)
    os.replace(folder / "data", folder / f"data-{old}")
    os.replace(staged / "data", folder / "data")
    shutil.rmtree(staged, ignore_errors=True)
    upgraded = store.update_addon(addon, version=version, generation=addon.generation + 1, failures=0, not_before=None)
    try:
        services.start(upgraded)
        services.wait_ready(upgraded)
    except BaeError:
        revert(services, upgraded, old)
        raise
    return upgraded


def confirm(services: Services, addon: Addon) -> list[str]:
    """Delete the data kept by the last upgrade; the versions it held."""
    kept = kept_versions(services, addon)
    if not kept:
        raise Invalid(f"{addon.name} keeps no data of an earlier version", "Nothing to confirm.")
    for version in kept:
        shutil.rmtree(services.dir(addon.app, addon.name) / f"data-{version}")
    return kept


def revert(services: Services, addon: Addon, version: str | None = None) -> Addon:
    """Switch back to the data the last upgrade kept (what was written since is set aside, not deleted)."""
    kept = kept_versions(services, addon)
    version = version or (kept[-1] if kept else None)
    if version is None:
        raise Invalid(f"{addon.name} keeps no data of an earlier version", "Nothing to revert to.")
    folder = services.dir(addon.app, addon.name)
    for info in services.containers(addon.app, addon.name):
        engine().stop(info.id, 30)
        engine().remove(info.id)
    aside = folder / f"upgrade-{addon.version}-reverted"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder / "data", aside)
    os.replace(folder / f"data-{version}", folder / "data")
    reverted = services.platform.store.update_addon(addon, version=version, generation=addon.generation + 1)
    services.start(reverted)
    services.wait_ready(reverted)
    shutil.rmtree(aside, ignore_errors=True)
    return reverted
