"""Backups that are proven: capture, verify in a throw-away container, restore, prune.

Capture runs the image's ``bae-backup`` inside the add-on's container (pg_dump
-Fc in one snapshot, mariadb-dump --single-transaction, a Redis RDB as a replica
receives it) into ``backups/.N.EXT.partial``, which becomes ``backups/N.EXT`` only
when complete (a full disk leaves no partial file and the previous backups as
they were). ``bae-backup`` also prints what the dump holds (rows per table, or
keys); the dump is then restored into a throw-away container of the same image
(``bae-verify``), and the backup counts only if the restored counts equal those.
Restores refuse anything not verified or whose checksum changed before any data
is touched, load into a staging database and swap it in (``bae-restore``); Redis
data is staged in a new directory and switched by a container restart.
Called by the addons:backups* commands, addons:upgrade and the healer's schedule.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from addons.engine import engine
from addons.kinds import KINDS
from addons.service import Services
from bae.errors import BaeError, Invalid
from bae.model import Addon, Backup

__all__ = ["capture", "verify", "restore", "prune", "parse_counts", "human", "VERIFY_TIMEOUT"]

log = logging.getLogger("bae.addons.backups")

VERIFY_TIMEOUT = 3600.0


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def parse_counts(text: str) -> dict[str, int]:
    """``name count`` lines (what bae-backup, bae-verify and bae-restore print) as a dict."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.strip().rsplit(" ", 1)
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = max(counts.get(parts[0], 0), int(parts[1]))
    return counts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _compare(expected: dict[str, int], found: dict[str, int]) -> str | None:
    """What differs between the counts captured and those restored, or None."""
    problems = []
    for name, count in sorted(expected.items()):
        if name not in found:
            problems.append(f"{name} missing")
        elif found[name] != count:
            problems.append(f"{name} has {found[name]} rows, the dump {count}")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"{name} unexpected")
    return "; ".join(problems[:5]) or None


def _summary(counts: dict[str, int]) -> str:
    if list(counts) == ["keys"]:
        return f"{counts['keys']} keys"
    return f"{len(counts)} tables, {sum(counts.values())} rows"


def capture(services: Services, addon: Addon, out: Callable[[str], None], *, scheduled: bool = False) -> Backup:
    """Dump ``addon``, verify the dump by restoring it elsewhere, record it; the Backup (verified or failed)."""
    store = services.platform.store
    kind = KINDS[addon.kind]
    folder = services.dir(addon.app, addon.name) / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    backup = store.start_backup(addon, lambda n: folder / f"{n}.{kind.backup_ext}", scheduled=scheduled)
    final = Path(backup.file)
    partial = folder / f".{final.name}.partial"
    out(f"Capturing b{backup.number} of {addon.name} ({kind.backup_format})")
    done = threading.Event()

    def progress() -> None:
        shown = 0
        while not done.wait(2.0):
            size = partial.stat().st_size if partial.exists() else 0
            if size - shown >= 1 << 20:
                out(f"{human(size)} written")
                shown = size

    watcher = threading.Thread(target=progress, daemon=True)
    watcher.start()
    try:
        code, stdout, stderr = services.exec(addon, ["bae-backup", f"/bae/backups/{partial.name}"],
                                             user=kind.backup_user, env={"BAE_PASSWORD": addon.password})
    except BaeError as exc:
        code, stdout, stderr = -1, "", exc.message
    finally:
        done.set()
        watcher.join(5)
    if code != 0:
        stat = os.statvfs(folder)
        full = ("No space left" in stderr or "ENOSPC" in stderr or "short write" in stderr
                or stat.f_bavail * stat.f_frsize < 1 << 20)  # what is left with the partial file still there
        partial.unlink(missing_ok=True)
        reason = ("the disk holding the backups is full" if full else
                  f"the dump failed (exit {code}): " + " ".join(stderr.strip().splitlines()[-3:])[:400])
        store.finish_backup(backup, status="failed", error=reason)
        raise BaeError(f"backup b{backup.number} of {addon.name} failed: {reason}",
                       "Nothing was kept of it; earlier backups are unchanged (see `addons:backups "
                       f"{addon.app} {addon.name}`)." + (" Free some space under data_dir and capture again." if full else ""))
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    expected = parse_counts(stdout)
    size = final.stat().st_size
    backup = store.finish_backup(backup, status="verifying", size=size, counts=expected, sha256=_sha256(final))
    out(f"Captured {human(size)} ({_summary(expected)}); verifying by restoring it into a throw-away container")
    return verify(services, backup, out)


def verify(services: Services, backup: Backup, out: Callable[[str], None]) -> Backup:
    """Restore ``backup`` into a throw-away container and compare what it holds; record the outcome."""
    store = services.platform.store
    kind = KINDS[backup.kind]
    path = Path(backup.file)
    plan = services.settings.plans[_verify_plan(services)]
    code, stdout, stderr = engine().run_throwaway(
        image=services.image_for(kind, backup.version), cmd=["/usr/local/bin/bae-verify", f"/backup/{path.name}"],
        mounts=[(str(path), f"/backup/{path.name}", True)],
        labels={"bae.platform": services.instance, "bae.role": "addon-verify", "bae.app": backup.app},
        memory=plan.memory, cpu=plan.cpu, timeout=VERIFY_TIMEOUT)
    found = parse_counts(stdout)
    problem = (f"restoring it failed (exit {code}): " + " ".join(stderr.strip().splitlines()[-3:])[:300]
               if code != 0 else _compare(backup.counts, found))
    if problem:
        store.finish_backup(backup, status="failed", error=f"not restorable: {problem}")
        raise BaeError(f"backup b{backup.number} of {backup.addon} did not restore as captured: {problem}",
                       "It does not count as a backup; earlier backups are unchanged. Capture again; if it fails "
                       "again, look at the add-on's logs.")
    backup = store.finish_backup(backup, status="verified")
    out(f"Verified b{backup.number}: restored {_summary(found)}, as captured")
    return backup


def _verify_plan(services: Services) -> str:
    plans = services.settings.plans
    return "m1" if "m1" in plans else services.settings.scheduler.default_plan


def check_restorable(backup: Backup) -> None:
    """Refuse a backup that was not verified, or whose file is gone or changed since."""
    path = Path(backup.file)
    if backup.status != "verified":
        raise Invalid(f"backup b{backup.number} of {backup.addon} is {backup.status}, not verified",
                      "Only verified backups are restored; pick another (see addons:backups).")
    if not path.exists():
        raise BaeError(f"the file of backup b{backup.number} of {backup.addon} is gone ({path.name})",
                       "Pick another backup.")
    if path.stat().st_size != backup.size or _sha256(path) != backup.sha256:
        raise BaeError(f"backup b{backup.number} of {backup.addon} is corrupt: its file changed since it was verified",
                       "Nothing was touched. Pick another backup (see addons:backups).")


def restore(services: Services, addon: Addon, backup: Backup, out: Callable[[str], None]) -> dict[str, int]:
    """Replace ``addon``'s data with ``backup``'s (checked first; staged, then switched); the counts restored."""
    if backup.kind != addon.kind:
        raise Invalid(f"b{backup.number} is a {KINDS[backup.kind].title} backup and {addon.name} is "
                      f"{KINDS[addon.kind].title}", "Restore it into an add-on of the same kind.")
    if KINDS[addon.kind].versions.index(addon.version) < KINDS[backup.kind].versions.index(backup.version):
        raise Invalid(f"b{backup.number} comes from version {backup.version}, newer than {addon.name}'s {addon.version}")
    out(f"Checking b{backup.number} of {backup.app}/{backup.addon}")
    check_restorable(backup)
    folder = services.dir(addon.app, addon.name)
    staged = folder / "backups" / f".restore-{time.time_ns()}{Path(backup.file).suffix}"
    shutil.copyfile(backup.file, staged)
    try:
        if addon.kind == "redis":
            found = _restore_redis(services, addon, staged, out)
        else:
            out(f"Loading it into a staging database of {addon.name}, then swapping it in")
            code, stdout, stderr = services.exec(addon, ["bae-restore", f"/bae/backups/{staged.name}"],
                                                 user=KINDS[addon.kind].backup_user)
            if code != 0:
                raise BaeError(f"restoring into {addon.name} failed (exit {code}): " +
                               " ".join(stderr.strip().splitlines()[-3:])[:400],
                               "The add-on's data was not switched; it is as it was.")
            found = parse_counts(stdout)
    finally:
        staged.unlink(missing_ok=True)
    problem = _compare(backup.counts, found)
    if problem:
        raise BaeError(f"after the restore {addon.name} differs from b{backup.number}: {problem}")
    out(f"Restored b{backup.number} into {addon.name}: {_summary(found)}")
    return found


def _restore_redis(services: Services, addon: Addon, staged: Path, out) -> dict[str, int]:
    """Stage a data directory holding only the RDB, switch it in with a container restart, keep the
    old directory until the restarted server answers with the backup's keys."""
    folder = services.dir(addon.app, addon.name)
    fresh = folder / "data.restore"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    shutil.copyfile(staged, fresh / "dump.rdb")
    old = folder / "data.old"
    shutil.rmtree(old, ignore_errors=True)
    out(f"Restarting {addon.name} on the restored data")
    for info in services.containers(addon.app, addon.name):
        engine().stop(info.id, 30)
        engine().remove(info.id)
    os.replace(folder / "data", old)
    os.replace(fresh, folder / "data")
    try:
        services.start(addon)
        services.wait_ready(addon)
        code, stdout, _ = services.exec(addon, ["sh", "-c", 'REDISCLI_AUTH="$BAE_PASSWORD" redis-cli --no-auth-warning dbsize'],
                                        env={"BAE_PASSWORD": addon.password})
        if code != 0 or not stdout.strip().isdigit():
            raise BaeError(f"{addon.name} did not answer after the restore")
    except BaeError:
        for info in services.containers(addon.app, addon.name):
            engine().remove(info.id)
        shutil.rmtree(folder / "data", ignore_errors=True)
        os.replace(old, folder / "data")
        services.start(addon)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return {"keys": int(stdout.strip())}


def prune(services: Services, addon: Addon) -> list[Backup]:
    """Remove verified backups beyond the add-on's retention and failed ones older than the newest verified."""
    store = services.platform.store
    backups = store.backups(addon.app, addon.name)
    verified = [b for b in backups if b.status == "verified"]
    removed = verified[addon.retention:]
    if verified:
        removed += [b for b in backups if b.status == "failed" and b.number < verified[0].number]
    for b in removed:
        Path(b.file).unlink(missing_ok=True)
        store.remove_backup(b)
    return removed


def age_seconds(stamp: str) -> float:
    return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()
