"""All state that is not in git or Docker: SQLite through sqlite-utils.

The daemon and CLI processes open the same file at once: WAL mode, a busy
timeout, and write transactions that take the write lock up front
(``BEGIN IMMEDIATE``) so two writers queue instead of failing. Each thread gets
its own connection. Schema changes are sqlite-utils migrations, applied when
the store is opened. This is the only module that imports sqlite_utils.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import sqlite_utils
from sqlite_utils import Migrations

from bae.errors import Conflict, NotFound
from bae.model import (DEFAULT_DEPLOYMENT, Addon, App, Backup, Build, Certificate, Deployment, FormationEntry,
                       PublicKey, Release, TlsState, User, now)

__all__ = ["Store"]

migrations = Migrations("bae")


@migrations()
def m001_foundation(db: sqlite_utils.Database) -> None:
    db["users"].create(
        {"id": int, "name": str, "admin": int, "created_at": str},
        pk="id", not_null={"name", "admin", "created_at"},
    )
    db["users"].create_index(["name"], unique=True)
    db["keys"].create(
        {"fingerprint": str, "user_id": int, "kind": str, "bits": int, "comment": str,
         "openssh": str, "created_at": str},
        pk="fingerprint", foreign_keys=[("user_id", "users", "id")],
    )
    db["keys"].create_index(["user_id"])
    db["apps"].create(
        {"id": int, "name": str, "owner_id": int, "created_at": str},
        pk="id", foreign_keys=[("owner_id", "users", "id")], not_null={"name"},
    )
    db["apps"].create_index(["name"], unique=True)
    db["collaborators"].create(
        {"app_id": int, "user_id": int, "created_at": str},
        pk=("app_id", "user_id"),
        foreign_keys=[("app_id", "apps", "id"), ("user_id", "users", "id")],
    )
    db["deployments"].create(
        {"id": int, "app_id": int, "name": str, "created_at": str, "buildpacks": str},
        pk="id", foreign_keys=[("app_id", "apps", "id")], defaults={"buildpacks": "[]"},
    )
    db["deployments"].create_index(["app_id", "name"], unique=True)
    db["builds"].create(
        {"id": int, "deployment_id": int, "number": int, "commit_sha": str, "old_commit": str,
         "status": str, "user": str, "started_at": str, "finished_at": str, "log": str,
         "image": str, "process_types": str, "error": str},
        pk="id", foreign_keys=[("deployment_id", "deployments", "id")],
        defaults={"log": "", "process_types": "{}"},
    )
    db["builds"].create_index(["deployment_id", "number"], unique=True)


@migrations()
def m002_build_reuse(db: sqlite_utils.Database) -> None:
    # What a later build needs to know to reuse this one's output (see buildpacks.runner).
    db["builds"].add_column("reuse", str)


@migrations()
def m003_releases_and_formation(db: sqlite_utils.Database) -> None:
    db["releases"].create(
        {"id": int, "deployment_id": int, "version": int, "image": str, "config": str, "process_types": str,
         "build_id": int, "commit_sha": str, "user": str, "description": str, "status": str, "error": str,
         "created_at": str},
        pk="id", foreign_keys=[("deployment_id", "deployments", "id")],
    )
    db["releases"].create_index(["deployment_id", "version"], unique=True)
    db["formation"].create(
        {"deployment_id": int, "process": str, "quantity": int, "plan": str, "generation": int},
        pk=("deployment_id", "process"), foreign_keys=[("deployment_id", "deployments", "id")],
    )
    db["backoff"].create(
        {"deployment_id": int, "process": str, "failures": int, "not_before": str, "reason": str},
        pk=("deployment_id", "process"), foreign_keys=[("deployment_id", "deployments", "id")],
    )
    # the release the scheduler should run (None: nothing deployed)
    db["deployments"].add_column("release_version", int)


@migrations()
def m004_domains(db: sqlite_utils.Database) -> None:
    db["domains"].create({"hostname": str, "deployment_id": int, "created_at": str}, pk="hostname",
                         foreign_keys=[("deployment_id", "deployments", "id")])
    db["domains"].create_index(["deployment_id"])


@migrations()
def m005_config_vars(db: sqlite_utils.Database) -> None:
    # scope 0: set on the app, shared by its deployments; else the deployment's id (overrides)
    db["config_vars"].create({"app_id": int, "scope": int, "key": str, "value": str, "updated_at": str},
                             pk=("app_id", "scope", "key"), foreign_keys=[("app_id", "apps", "id")])


@migrations()
def m006_certificates(db: sqlite_utils.Database) -> None:
    # TLS certificates the router serves. deployment_id NULL: the platform's own (a *.BASE_DOMAIN
    # wildcard). The PEM files live under data_dir/tls/NAME.{pem,key} (root-only); rows hold what
    # `certs` shows and the renewal plan decides on.
    db["certificates"].create(
        {"id": int, "name": str, "deployment_id": int, "source": str, "hostnames": str, "issuer": str,
         "serial": str, "fingerprint": str, "not_before": str, "not_after": str, "created_at": str},
        pk="id", foreign_keys=[("deployment_id", "deployments", "id")], not_null={"name", "source"},
    )
    db["certificates"].create_index(["name"], unique=True)
    db["certificates"].create_index(["deployment_id"])
    # Per deployment: automatic certificates on/off, the HTTP->HTTPS redirect, and the renewal's
    # progress and backoff (stored, so a restart neither forgets a failure nor hammers the CA).
    db["tls_state"].create(
        {"deployment_id": int, "auto": int, "redirect": int, "hsts": int, "failures": int, "not_before": str,
         "last_attempt": str, "last_error": str, "last_success": str},
        pk="deployment_id", foreign_keys=[("deployment_id", "deployments", "id")],
        defaults={"auto": 0, "redirect": 0, "hsts": 0, "failures": 0},
    )
    db["acme_accounts"].create({"directory": str, "uri": str, "email": str, "created_at": str}, pk="directory")


@migrations()
def m007_scheduler_decisions(db: sqlite_utils.Database) -> None:
    # what the scheduler's decisions depend on, so a restart of `bae serve` decides as before:
    # per unit (by the runtime's id) when it was first up and whether its crash was counted;
    # per backoff the shape (release, plan, generation) its failures were counted under
    db["unit_state"].create({"unit_id": str, "deployment_id": int, "up_since": float, "crash_counted": int},
                            pk="unit_id")
    db["backoff"].add_column("shape", str)
    # a failed deploy's hint (what to do about it), next to its error
    db["releases"].add_column("hint", str)


@migrations()
def m008_buildpacks_set_by_admin(db: sqlite_utils.Database) -> None:
    # 1: the list was set by an admin, whose git URLs may name hosts on private networks
    db["deployments"].add_column("buildpacks_admin", int, not_null_default=0)


@migrations()
def m009_swarm_placement(db: sqlite_utils.Database) -> None:
    # Swarm placement constraints of a process type (ps:place), JSON list; [] places anywhere
    db["formation"].add_column("placement", str)


@migrations()
def m010_stopping_units(db: sqlite_utils.Database) -> None:
    # units the scheduler is stopping (by the runtime's id), so that `ps` in any process says so
    db["stopping_units"].create({"unit_id": str, "deployment_id": int, "since": float, "reason": str}, pk="unit_id")


@migrations()
def m011_addons(db: sqlite_utils.Database) -> None:
    # Add-ons of apps (issue 12) and their backups; the service's data lives under data_dir/addons.
    db["addons"].create(
        {"id": int, "app_id": int, "name": str, "kind": str, "version": str, "plan": str, "password": str,
         "config_var": str, "created_at": str, "generation": int, "schedule": str, "retention": int,
         "failures": int, "not_before": str},
        pk="id", foreign_keys=[("app_id", "apps", "id")], defaults={"generation": 0, "retention": 7, "failures": 0},
    )
    db["addons"].create_index(["app_id", "name"], unique=True)
    db["addon_backups"].create(
        {"id": int, "app_id": int, "addon": str, "number": int, "kind": str, "version": str, "file": str, "status": str,
         "size": int, "created_at": str, "finished_at": str, "counts": str, "sha256": str, "scheduled": int,
         "error": str},
        pk="id", foreign_keys=[("app_id", "apps", "id")], defaults={"size": 0, "counts": "{}", "scheduled": 0},
    )  # by the add-on's name, not its row: backups outlive addons:destroy, so a new add-on can restore them
    db["addon_backups"].create_index(["app_id", "addon", "number"], unique=True)


@migrations()
def m012_stacks(db: sqlite_utils.Database) -> None:
    # the stack a deployment builds on ('' = chosen from its Python pins) and, per build,
    # the stack used and why (shown by apps:info and the build log); each column only once:
    # a database may have them from before this migration was renumbered
    if "stack" not in db["deployments"].columns_dict:
        db["deployments"].add_column("stack", str, not_null_default="")
    for column in ("stack", "stack_reason"):
        if column not in db["builds"].columns_dict:
            db["builds"].add_column(column, str)


@migrations()
def m013_addon_schedule_since(db: sqlite_utils.Database) -> None:
    # when an add-on's backup schedule was set (UTC ISO): it fires at the first HH:MM after that,
    # not at once for a time that already passed today
    if "schedule_since" not in db["addons"].columns_dict:
        db["addons"].add_column("schedule_since", str)


class Store:
    """Typed access to the platform's SQLite database."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if self.db.journal_mode != "wal":
            self.db.enable_wal()
        # One write transaction around all pending migrations: two processes
        # starting at once queue here instead of both creating the same table
        # (apply looks again under the lock). Read-only commands take no lock.
        if migrations.pending(self.db):
            with self.write() as db:
                migrations.apply(db)

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction holding SQLite's write lock from its first statement."""
        db = self.db
        if db.conn.in_transaction:
            with db.atomic():
                yield db
            return
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")

    def _one(self, sql: str, params=()) -> dict | None:
        return next(self.db.query(sql, params), None)

    # -- users ---------------------------------------------------------------

    def add_user(self, name: str, admin: bool = False) -> User:
        with self.write() as db:
            if self._one("select id from users where name = ?", [name]):
                raise Conflict(f"user '{name}' already exists", "Pick another name, or see `users:list`.")
            db["users"].insert({"name": name, "admin": int(admin), "created_at": now()})
        return self.user(name)

    def user(self, name: str) -> User:
        row = self._one("select * from users where name = ?", [name])
        if not row:
            raise NotFound(f"no user named '{name}'", "See `users:list` for the registered users.")
        return _user(row)

    def users(self) -> list[User]:
        return [_user(r) for r in self.db.query("select * from users order by name")]

    def remove_user(self, name: str) -> None:
        user = self.user(name)
        with self.write() as db:
            owned = [r["name"] for r in db.query("select name from apps where owner_id = ?", [user.id])]
            if owned:
                raise Conflict(
                    f"user '{name}' still owns {len(owned)} app(s): {', '.join(owned)}",
                    "Destroy those apps first (apps:destroy APP --confirm APP).",
                )
            db.execute("delete from keys where user_id = ?", [user.id])
            db.execute("delete from collaborators where user_id = ?", [user.id])
            db.execute("delete from users where id = ?", [user.id])

    # -- keys ----------------------------------------------------------------

    def add_key(self, user: User, key: PublicKey) -> PublicKey:
        with self.write() as db:
            existing = self._one(
                "select users.name as user from keys join users on users.id = keys.user_id "
                "where fingerprint = ?", [key.fingerprint])
            if existing:
                owner = "you" if existing["user"] == user.name else f"user '{existing['user']}'"
                raise Conflict(
                    f"key {key.fingerprint} is already registered to {owner}",
                    "A key may belong to one user only; generate a new key with ssh-keygen.",
                )
            db["keys"].insert({
                "fingerprint": key.fingerprint, "user_id": user.id, "kind": key.kind,
                "bits": key.bits, "comment": key.comment, "openssh": key.openssh,
                "created_at": now(),
            })
        return self.key(key.fingerprint)

    def key(self, fingerprint: str) -> PublicKey:
        row = self._one(
            "select keys.*, users.name as user from keys join users on users.id = keys.user_id "
            "where fingerprint = ?", [fingerprint])
        if not row:
            raise NotFound(f"no key with fingerprint {fingerprint}", "See `keys:list` for the registered keys.")
        return _key(row)

    def user_for_key(self, fingerprint: str) -> User | None:
        row = self._one(
            "select users.* from keys join users on users.id = keys.user_id where fingerprint = ?",
            [fingerprint])
        return _user(row) if row else None

    def keys(self, user: User | None = None) -> list[PublicKey]:
        sql = "select keys.*, users.name as user from keys join users on users.id = keys.user_id"
        params: list = []
        if user:
            sql += " where keys.user_id = ?"
            params.append(user.id)
        return [_key(r) for r in self.db.query(sql + " order by users.name, keys.created_at", params)]

    def remove_key(self, user: User, fingerprint: str) -> None:
        with self.write() as db:
            cur = db.execute("delete from keys where user_id = ? and fingerprint = ?", [user.id, fingerprint])
            if cur.rowcount == 0:
                raise NotFound(
                    f"user '{user.name}' has no key with fingerprint {fingerprint}",
                    f"See `keys:list {user.name}` for that user's keys.",
                )

    # -- apps and deployments ------------------------------------------------

    def create_app(self, name: str, owner: User | None) -> App:
        with self.write() as db:
            if self._one("select id from apps where name = ?", [name]):
                raise Conflict(f"app '{name}' already exists", "Pick another name; app names are global.")
            app_id = db["apps"].insert({
                "name": name, "owner_id": owner.id if owner else None, "created_at": now(),
            }).last_pk
            db["deployments"].insert({
                "app_id": app_id, "name": DEFAULT_DEPLOYMENT, "created_at": now(), "buildpacks": "[]",
            })
        return self.app(name)

    def _apps(self, where: str, params: dict) -> list[App]:
        """Apps with their owner and collaborators, in one query (user names have no spaces)."""
        rows = self.db.query(
            "select apps.*, owner.name as owner, (select group_concat(users.name, ' ') from collaborators "
            "join users on users.id = collaborators.user_id where collaborators.app_id = apps.id) as collaborators "
            f"from apps left join users as owner on owner.id = apps.owner_id where {where} order by apps.name",
            params)
        return [App(r["id"], r["name"], r["owner"], r["created_at"], tuple(sorted((r["collaborators"] or "").split())))
                for r in rows]

    def app(self, name: str) -> App:
        found = self._apps("apps.name = :name", {"name": name})
        if not found:
            raise NotFound(f"no app named '{name}'", "See `apps:list` for the apps you can use.")
        return found[0]

    def apps(self, visible_to: User | None = None) -> list[App]:
        """All apps, or only those ``visible_to`` owns or collaborates on."""
        if visible_to is None:
            return self._apps("1", {})
        return self._apps("apps.owner_id = :u or apps.id in (select app_id from collaborators where user_id = :u)",
                          {"u": visible_to.id})

    def destroy_app(self, app: App) -> None:
        with self.write() as db:
            dep_ids = [r["id"] for r in db.query("select id from deployments where app_id = ?", [app.id])]
            for dep_id in dep_ids:
                self._delete_deployment_rows(db, dep_id)
            db.execute("delete from collaborators where app_id = ?", [app.id])
            db.execute("delete from config_vars where app_id = ?", [app.id])
            db.execute("delete from addon_backups where app_id = ?", [app.id])
            db.execute("delete from addons where app_id = ?", [app.id])
            db.execute("delete from apps where id = ?", [app.id])

    def add_collaborator(self, app: App, user: User) -> None:
        if app.owner == user.name:
            raise Conflict(f"user '{user.name}' owns app '{app.name}' already")
        with self.write() as db:
            if user.name in app.collaborators:
                raise Conflict(f"user '{user.name}' has access to app '{app.name}' already")
            db["collaborators"].insert({"app_id": app.id, "user_id": user.id, "created_at": now()})

    def remove_collaborator(self, app: App, user: User) -> None:
        with self.write() as db:
            cur = db.execute("delete from collaborators where app_id = ? and user_id = ?", [app.id, user.id])
            if cur.rowcount == 0:
                raise NotFound(
                    f"user '{user.name}' is not a collaborator on app '{app.name}'",
                    f"See `access:list {app.name}`.",
                )

    def create_deployment(self, app: App, name: str) -> Deployment:
        with self.write() as db:
            if self._one("select id from deployments where app_id = ? and name = ?", [app.id, name]):
                raise Conflict(f"app '{app.name}' has a deployment named '{name}' already")
            db["deployments"].insert({"app_id": app.id, "name": name, "created_at": now(), "buildpacks": "[]"})
        return self.deployment(app.name, name)

    def deployment(self, app: str, name: str) -> Deployment:
        row = self._one(
            "select deployments.*, apps.name as app from deployments join apps on apps.id = deployments.app_id "
            "where apps.name = ? and deployments.name = ?", [app, name])
        if not row:
            self.app(app)  # says "no app" when that is the problem
            raise NotFound(
                f"app '{app}' has no deployment named '{name}'",
                f"See `deployments:list {app}`.",
            )
        return _deployment(row)

    def deployments(self, app: App | None = None) -> list[Deployment]:
        sql = ("select deployments.*, apps.name as app from deployments "
               "join apps on apps.id = deployments.app_id")
        params: list = []
        if app:
            sql += " where app_id = ?"
            params.append(app.id)
        return [_deployment(r) for r in self.db.query(sql + " order by apps.name, deployments.id", params)]

    def destroy_deployment(self, dep: Deployment) -> None:
        with self.write() as db:
            self._delete_deployment_rows(db, dep.id)

    def _delete_deployment_rows(self, db, dep_id: int) -> None:
        db.execute("delete from config_vars where scope = ?", [dep_id])
        for table in _DEPLOYMENT_TABLES:
            db.execute(f"delete from {table} where deployment_id = ?", [dep_id])
        db.execute("delete from deployments where id = ?", [dep_id])

    def set_buildpacks(self, dep: Deployment, buildpacks: list[str], admin: bool = False) -> None:
        with self.write() as db:
            db.execute("update deployments set buildpacks = ?, buildpacks_admin = ? where id = ?",
                       [json.dumps(buildpacks), int(admin), dep.id])

    def set_stack(self, dep: Deployment, stack: str) -> None:
        """Pin ``dep`` to a stack by name; '' chooses from the app's Python pins."""
        with self.write() as db:
            db.execute("update deployments set stack = ? where id = ?", [stack, dep.id])

    # -- builds --------------------------------------------------------------

    def start_build(self, dep: Deployment, commit: str, old_commit: str, user: str) -> Build:
        with self.write() as db:
            row = self._one("select max(number) as n from builds where deployment_id = ?", [dep.id])
            number = (row["n"] or 0) + 1
            build_id = db["builds"].insert({
                "deployment_id": dep.id, "number": number, "commit_sha": commit,
                "old_commit": old_commit, "status": "running", "user": user,
                "started_at": now(), "log": "", "process_types": "{}",
            }).last_pk
        return self.build_by_id(build_id)

    def finish_build(self, build: Build, status: str, log: str, image: str | None = None,
                     process_types: dict | None = None, error: str | None = None,
                     keep: int | None = None, reuse: dict | None = None,
                     stack: str | None = None, stack_reason: str | None = None) -> Build:
        with self.write() as db:
            db["builds"].update(build.id, {
                "status": status, "log": log, "finished_at": now(), "image": image,
                "process_types": json.dumps(process_types or {}), "error": error,
                "reuse": json.dumps(reuse) if reuse else None, "stack": stack, "stack_reason": stack_reason,
            })
            if keep:
                db.execute(  # a build a release still refers to stays
                    "delete from builds where deployment_id = ? and number <= ? "
                    "and id not in (select build_id from releases where build_id is not null)",
                    [build.deployment_id, build.number - keep])
        return self.build_by_id(build.id)

    def running_builds(self) -> list[Build]:
        return [_build(r) for r in self.db.query("select * from builds where status = 'running' order by id")]

    def build_by_id(self, build_id: int) -> Build:
        row = self._one("select * from builds where id = ?", [build_id])
        if not row:
            raise NotFound(f"no build with id {build_id}")
        return _build(row)

    def build(self, dep: Deployment, number: int) -> Build:
        row = self._one("select * from builds where deployment_id = ? and number = ?", [dep.id, number])
        if not row:
            raise NotFound(f"{dep.slug} has no build {number}", f"See `builds {dep.slug}` for its builds.")
        return _build(row)

    def last_successful_build(self, dep: Deployment) -> Build | None:
        row = self._one("select * from builds where deployment_id = ? and status = 'succeeded' "
                        "order by number desc limit 1", [dep.id])
        return _build(row) if row else None

    def builds(self, dep: Deployment, limit: int = 20) -> list[Build]:
        rows = self.db.query(
            "select * from builds where deployment_id = ? order by number desc limit ?", [dep.id, limit])
        return [_build(r) for r in rows]


    # -- releases ------------------------------------------------------------

    def create_release(self, dep: Deployment, *, image: str, config: dict, process_types: dict,
                       build_id: int | None, commit: str | None, user: str, description: str,
                       status: str = "pending") -> Release:
        with self.write() as db:
            row = self._one("select max(version) as v from releases where deployment_id = ?", [dep.id])
            release_id = db["releases"].insert({
                "deployment_id": dep.id, "version": (row["v"] or 0) + 1, "image": image,
                "config": json.dumps(config), "process_types": json.dumps(process_types), "build_id": build_id,
                "commit_sha": commit, "user": user, "description": description, "status": status,
                "error": None, "created_at": now(),
            }).last_pk
        return self.release_by_id(release_id)

    def release_by_id(self, release_id: int) -> Release:
        row = self._one("select * from releases where id = ?", [release_id])
        if not row:
            raise NotFound(f"no release with id {release_id}")
        return _release(row)

    def release(self, dep: Deployment, version: int) -> Release:
        row = self._one("select * from releases where deployment_id = ? and version = ?", [dep.id, version])
        if not row:
            raise NotFound(f"{dep.slug} has no release v{version}", f"See `releases {dep.slug}`.")
        return _release(row)

    def releases(self, dep: Deployment, limit: int = 20) -> list[Release]:
        rows = self.db.query("select * from releases where deployment_id = ? order by version desc limit ?",
                             [dep.id, limit])
        return [_release(r) for r in rows]

    def active_release(self, dep: Deployment) -> Release | None:
        row = self._one("select * from releases where deployment_id = ? and status = 'active' "
                        "order by version desc limit 1", [dep.id])
        return _release(row) if row else None

    def set_target(self, dep_id: int, version: int | None) -> None:
        """Which release the scheduler should run for the deployment."""
        with self.write() as db:
            db.execute("update deployments set release_version = ? where id = ?", [version, dep_id])

    def activate(self, release: Release) -> None:
        """Mark ``release`` active and the deployment's previous active release superseded."""
        with self.write() as db:
            db.execute("update releases set status = 'superseded' where deployment_id = ? and status = 'active' "
                       "and id != ?", [release.deployment_id, release.id])
            db["releases"].update(release.id, {"status": "active", "error": None})

    def fail_release(self, release: Release, reason: str, hint: str | None = None) -> int | None:
        """Mark a pending ``release`` failed and point the deployment back at its active release
        (returned). A release that went live meanwhile is left alone."""
        with self.write() as db:
            cur = db.execute("update releases set status = 'failed', error = ?, hint = ? where id = ? "
                             "and status = 'pending'", [reason, hint, release.id])
            row = self._one("select version from releases where deployment_id = ? and status = 'active' "
                            "order by version desc limit 1", [release.deployment_id])
            version = row["version"] if row else None
            if cur.rowcount:
                db.execute("update deployments set release_version = ? where id = ? and release_version = ?",
                           [version, release.deployment_id, release.version])
        return version

    # -- formation and backoff -----------------------------------------------

    def formation(self, dep: Deployment) -> dict[str, FormationEntry]:
        rows = self.db.query("select * from formation where deployment_id = ? order by process", [dep.id])
        return {r["process"]: FormationEntry(r["process"], r["quantity"], r["plan"], r["generation"]) for r in rows}

    def ensure_formation(self, dep: Deployment, process_types: dict, default_plan: str) -> None:
        """Give new process types a formation row: web=1 on the first deploy, others 0 (Heroku's rule)."""
        with self.write() as db:
            known = {r["process"] for r in db.query("select process from formation where deployment_id = ?", [dep.id])}
            for process in process_types:
                if process not in known and process != "release":
                    db["formation"].insert({"deployment_id": dep.id, "process": process,
                                            "quantity": 1 if process == "web" else 0, "plan": default_plan,
                                            "generation": 0})

    def set_formation(self, dep: Deployment, process: str, *, quantity: int | None = None, plan: str | None = None,
                      restart: bool = False, default_plan: str = "s1") -> None:
        with self.write() as db:
            row = self._one("select * from formation where deployment_id = ? and process = ?", [dep.id, process])
            if row is None:
                row = {"deployment_id": dep.id, "process": process, "quantity": 0, "plan": default_plan, "generation": 0}
            if quantity is not None:
                row["quantity"] = quantity
            if plan is not None:
                row["plan"] = plan
            if restart:
                row["generation"] = row["generation"] + 1
            db["formation"].upsert(row, pk=("deployment_id", "process"))

    def placement(self, app: str, deployment: str, process: str) -> list[str]:
        """The Swarm placement constraints of a process type (ps:place), [] when it may run anywhere."""
        row = self._one("select formation.placement from formation join deployments on deployments.id = "
                        "formation.deployment_id join apps on apps.id = deployments.app_id where apps.name = ? "
                        "and deployments.name = ? and formation.process = ?", [app, deployment, process])
        return json.loads(row["placement"]) if row and row["placement"] else []

    def set_placement(self, dep: Deployment, process: str, constraints: list[str], default_plan: str = "s1") -> None:
        """Constrain where a process type's units run; its units are replaced (a restart generation). One
        transaction: the scheduler never sees the new generation with the old placement (or the reverse)."""
        with self.write() as db:
            self.set_formation(dep, process, restart=True, default_plan=default_plan)
            db.execute("update formation set placement = ? where deployment_id = ? and process = ?",
                       [json.dumps(constraints), dep.id, process])

    def backoffs(self) -> dict[tuple[int, str], dict]:
        """Crash backoff by (deployment id, process type): failures, not_before (ISO time), reason, shape."""
        return {(r["deployment_id"], r["process"]): r for r in self.db.query("select * from backoff")}

    def set_backoff(self, dep_id: int, process: str, failures: int, not_before: str | None, reason: str | None,
                    shape: list | None = None) -> None:
        with self.write() as db:
            if failures == 0:
                db.execute("delete from backoff where deployment_id = ? and process = ?", [dep_id, process])
            else:
                db["backoff"].upsert({"deployment_id": dep_id, "process": process, "failures": failures,
                                      "not_before": not_before, "reason": reason,
                                      "shape": json.dumps(shape) if shape is not None else None},
                                     pk=("deployment_id", "process"))

    def unit_states(self) -> dict[str, dict]:
        """What the scheduler recorded per unit id: up_since (epoch seconds or None), crash_counted."""
        return {r["unit_id"]: r for r in self.db.query("select * from unit_state")}

    def set_unit_state(self, unit_id: str, dep_id: int | None, *, up_since: float | None = None,
                       crash_counted: bool = False) -> None:
        with self.write() as db:
            db["unit_state"].upsert({"unit_id": unit_id, "deployment_id": dep_id, "up_since": up_since,
                                     "crash_counted": int(crash_counted)}, pk="unit_id")

    def forget_units(self, unit_ids: list[str]) -> None:
        """Units that no longer exist: their recorded state goes."""
        with self.write() as db:
            for unit_id in unit_ids:
                db.execute("delete from unit_state where unit_id = ?", [unit_id])

    def stopping_units(self, dep_id: int | None = None) -> dict[str, dict]:
        """Units being stopped, by unit id: since (epoch seconds) and the reason."""
        where, args = ("where deployment_id = ?", [dep_id]) if dep_id is not None else ("", [])
        return {r["unit_id"]: r for r in self.db.query(f"select * from stopping_units {where}", args)}

    def set_stopping(self, unit_id: str, dep_id: int | None, reason: str) -> None:
        with self.write() as db:
            db["stopping_units"].upsert({"unit_id": unit_id, "deployment_id": dep_id, "since": time.time(),
                                         "reason": reason}, pk="unit_id")

    def forget_stopping(self, unit_ids: list[str] | None = None) -> None:
        """Units that are gone (all of them: at start-up, the scheduler decides again)."""
        with self.write() as db:
            if unit_ids is None:
                db.execute("delete from stopping_units")
            for unit_id in unit_ids or []:
                db.execute("delete from stopping_units where unit_id = ?", [unit_id])

    def fail_interrupted(self, reason: str) -> tuple[list[Release], int]:
        """At start-up: deploys and builds that were under way when the platform stopped have failed."""
        pending = [_release(r) for r in self.db.query("select * from releases where status = 'pending'")]
        for release in pending:
            self.fail_release(release, reason)
        with self.write() as db:
            cur = db.execute("update builds set status = 'failed', error = ?, finished_at = ? where status = 'running'",
                             [reason, now()])
        return pending, cur.rowcount

    def targets(self) -> list[tuple[Deployment, Release | None, dict[str, FormationEntry]]]:
        """Every deployment with the release it should run and its formation: the scheduler's input."""
        # three queries however many deployments there are: every reconcile pass calls this
        deps = self.deployments()
        releases = {(r["deployment_id"], r["version"]): _release(r) for r in self.db.query(
            "select releases.* from releases join deployments on deployments.id = releases.deployment_id "
            "and releases.version = deployments.release_version")}
        formation: dict[int, dict[str, FormationEntry]] = {}
        for r in self.db.query("select * from formation order by process"):
            formation.setdefault(r["deployment_id"], {})[r["process"]] = FormationEntry(
                r["process"], r["quantity"], r["plan"], r["generation"])
        out = []
        for dep in deps:
            release = None
            if dep.release_version:  # a target changed between the queries: look it up on its own
                release = releases.get((dep.id, dep.release_version)) or self.release(dep, dep.release_version)
            out.append((dep, release, formation.get(dep.id, {}) if release else {}))
        return out


    # -- custom domains --------------------------------------------------------

    def add_domain(self, dep: Deployment, hostname: str,
                   under: Callable[[str, App], None] | None = None) -> None:
        """Route ``hostname`` to ``dep``. In the same transaction, ``under(wildcard, app)``
        is called for each wildcard another app holds that covers ``hostname`` (it may raise)."""
        with self.write() as db:
            row = self._one("select deployment_id from domains where hostname = ?", [hostname])
            if row:
                where = "this deployment" if row["deployment_id"] == dep.id else "another deployment"
                raise Conflict(f"{hostname} already routes to {where}",
                               "A hostname belongs to one deployment; remove it there first (domains:remove).")
            if under is not None:
                labels = hostname.removeprefix("*.").split(".")
                covering = ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]
                rows = db.query(
                    "select domains.hostname, apps.name from domains join deployments on deployments.id = "
                    "domains.deployment_id join apps on apps.id = deployments.app_id where domains.hostname in "
                    f"({', '.join('?' * len(covering))})", covering)
                for found in list(rows):
                    app = self.app(found["name"])
                    if app.name != dep.app:
                        under(found["hostname"], app)
            db["domains"].insert({"hostname": hostname, "deployment_id": dep.id, "created_at": now()})

    def remove_domain(self, dep: Deployment, hostname: str) -> None:
        with self.write() as db:
            cur = db.execute("delete from domains where hostname = ? and deployment_id = ?", [hostname, dep.id])
            if cur.rowcount == 0:
                raise NotFound(f"{dep.slug} has no domain {hostname}", f"See `domains {dep.slug}`.")

    def domains(self, dep: Deployment | None = None) -> dict[int, list[str]]:
        """Custom hostnames by deployment id."""
        sql, params = "select * from domains", []
        if dep is not None:
            sql, params = sql + " where deployment_id = ?", [dep.id]
        out: dict[int, list[str]] = {}
        for row in self.db.query(sql + " order by hostname", params):
            out.setdefault(row["deployment_id"], []).append(row["hostname"])
        return out


    # -- config vars -----------------------------------------------------------

    def config_vars(self, app: App, scope: int = 0) -> dict[str, str]:
        rows = self.db.query("select key, value from config_vars where app_id = ? and scope = ? order by key",
                             [app.id, scope])
        return {r["key"]: r["value"] for r in rows}

    def effective_config(self, dep: Deployment) -> dict[str, tuple[str, str]]:
        """KEY -> (value, where it comes from: "app" or "deployment") for one deployment."""
        out: dict[str, tuple[str, str]] = {}
        for r in self.db.query(  # the app's (scope 0) first, the deployment's override them
                "select key, value, scope from config_vars where scope in (0, :dep) and "
                "app_id = (select app_id from deployments where id = :dep) order by scope", {"dep": dep.id}):
            out[r["key"]] = (r["value"], "deployment" if r["scope"] else "app")
        return dict(sorted(out.items()))

    def set_config(self, app: App, scope: int, values: dict[str, str]) -> None:
        with self.write() as db:
            for key, value in values.items():
                db["config_vars"].upsert({"app_id": app.id, "scope": scope, "key": key, "value": value,
                                          "updated_at": now()}, pk=("app_id", "scope", "key"))

    def unset_config(self, app: App, scope: int, keys: list[str]) -> list[str]:
        """Remove ``keys``; returns those that were set."""
        removed = []
        with self.write() as db:
            for key in keys:
                cur = db.execute("delete from config_vars where app_id = ? and scope = ? and key = ?",
                                 [app.id, scope, key])
                if cur.rowcount:
                    removed.append(key)
        return removed

    # -- add-ons and their backups ----------------------------------------------

    def add_addon(self, app: App, **fields) -> Addon:
        with self.write() as db:
            if self._one("select id from addons where app_id = ? and name = ?", [app.id, fields["name"]]):
                raise Conflict(f"app '{app.name}' has an add-on named '{fields['name']}' already",
                               "Pick another name with --as NAME, or see `addons " + app.name + "`.")
            db["addons"].insert({"app_id": app.id, "created_at": now(), **fields})
        return self.addon(app.name, fields["name"])

    def addons(self, app: App | None = None) -> list[Addon]:
        where, params = ("where apps.id = ?", [app.id]) if app else ("", [])
        rows = self.db.query("select addons.*, apps.name as app from addons join apps on apps.id = addons.app_id "
                             f"{where} order by apps.name, addons.name", params)
        return [_addon(r) for r in rows]

    def addon(self, app: str, name: str) -> Addon:
        row = self._one("select addons.*, apps.name as app from addons join apps on apps.id = addons.app_id "
                        "where apps.name = ? and addons.name = ?", [app, name])
        if row is None:
            raise NotFound(f"app '{app}' has no add-on named '{name[:40]}'", f"See `addons {app}`.")
        return _addon(row)

    def update_addon(self, addon: Addon, **fields) -> Addon:
        with self.write() as db:
            db["addons"].update(addon.id, fields)
        return self.addon(addon.app, addon.name)

    def remove_addon(self, addon: Addon) -> None:
        with self.write() as db:
            db.execute("delete from addons where id = ?", [addon.id])

    def start_backup(self, addon: Addon, file_for, scheduled: bool = False) -> Backup:
        """A new backup row (status capturing); ``file_for(number)`` names its file."""
        with self.write() as db:
            row = self._one("select max(number) as n from addon_backups where app_id = "
                            "(select app_id from addons where id = ?) and addon = ?", [addon.id, addon.name])
            number = (row["n"] or 0) + 1
            app_id = self._one("select app_id from addons where id = ?", [addon.id])["app_id"]
            pk = db["addon_backups"].insert({
                "app_id": app_id, "addon": addon.name, "number": number, "kind": addon.kind, "version": addon.version,
                "file": str(file_for(number)), "status": "capturing", "created_at": now(),
                "scheduled": int(scheduled)}).last_pk
        return self.backup_by_id(pk)

    def finish_backup(self, backup: Backup, **fields) -> Backup:
        if "counts" in fields:
            fields["counts"] = json.dumps(fields["counts"])
        with self.write() as db:
            db["addon_backups"].update(backup.id, {"finished_at": now(), **fields})
        return self.backup_by_id(backup.id)

    def backup_by_id(self, backup_id: int) -> Backup:
        row = self._one("select addon_backups.*, apps.name as app from addon_backups join apps on "
                        "apps.id = addon_backups.app_id where addon_backups.id = ?", [backup_id])
        if row is None:
            raise NotFound(f"no backup with id {backup_id}")
        return _backup(row)

    def backups(self, app: str, addon: str) -> list[Backup]:
        """The backups of add-on name ``addon`` of ``app`` (present or destroyed), newest first."""
        rows = self.db.query("select addon_backups.*, apps.name as app from addon_backups join apps on "
                             "apps.id = addon_backups.app_id where apps.name = ? and addon = ? order by number desc",
                             [app, addon])
        return [_backup(r) for r in rows]

    def remove_backup(self, backup: Backup) -> None:
        with self.write() as db:
            db.execute("delete from addon_backups where id = ?", [backup.id])


    def add_certificate(self, cert: Certificate, replace: tuple[str, ...] = ()) -> Certificate:
        """Record ``cert`` (its files are written already); rows named in ``replace`` go in the same
        transaction, so the router never sees neither or both."""
        with self.write() as db:
            for name in replace:
                db.execute("delete from certificates where name = ?", [name])
            db["certificates"].insert({
                "name": cert.name, "deployment_id": cert.deployment_id, "source": cert.source,
                "hostnames": json.dumps(list(cert.hostnames)), "issuer": cert.issuer, "serial": cert.serial,
                "fingerprint": cert.fingerprint, "not_before": cert.not_before, "not_after": cert.not_after,
                "created_at": now(),
            })
        return self.certificate(cert.name)

    def certificate(self, name: str) -> Certificate:
        row = self._one("select * from certificates where name = ?", [name])
        if not row:
            raise NotFound(f"no certificate {name}")
        return _certificate(row)

    def certificates(self, dep: Deployment | None = None, *, platform: bool = False) -> list[Certificate]:
        """All certificates; or one deployment's; or (platform=True) the platform's own."""
        sql, params = "select * from certificates", []
        if platform:
            sql += " where deployment_id is null"
        elif dep is not None:
            sql, params = sql + " where deployment_id = ?", [dep.id]
        return [_certificate(r) for r in self.db.query(sql + " order by id", params)]

    def remove_certificate(self, name: str) -> None:
        with self.write() as db:
            db.execute("delete from certificates where name = ?", [name])

    def tls_states(self) -> dict[int, TlsState]:
        return {r["deployment_id"]: _tls_state(r) for r in self.db.query("select * from tls_state")}

    def tls_state(self, dep: Deployment) -> TlsState:
        row = self._one("select * from tls_state where deployment_id = ?", [dep.id])
        return _tls_state(row) if row else TlsState(dep.id)

    def update_tls_state(self, dep_id: int, **values) -> None:
        """Set some fields of a deployment's TLS state (auto, redirect, hsts, failures, not_before, last_*)."""
        with self.write() as db:
            if not self._one("select 1 as x from tls_state where deployment_id = ?", [dep_id]):
                db["tls_state"].insert({"deployment_id": dep_id, "auto": 0, "redirect": 0, "hsts": 0, "failures": 0})
            db["tls_state"].update(dep_id, {k: int(v) if isinstance(v, bool) else v for k, v in values.items()})

    def acme_account(self, directory: str) -> dict | None:
        return self._one("select * from acme_accounts where directory = ?", [directory])

    def save_acme_account(self, directory: str, uri: str, email: str) -> None:
        with self.write() as db:
            db["acme_accounts"].upsert({"directory": directory, "uri": uri, "email": email, "created_at": now()},
                                       pk="directory")


_DEPLOYMENT_TABLES = ["domains", "backoff", "unit_state", "formation", "releases", "builds", "certificates",
                      "tls_state"]


def _certificate(row: dict) -> Certificate:
    return Certificate(name=row["name"], deployment_id=row["deployment_id"], source=row["source"],
                       hostnames=tuple(json.loads(row["hostnames"] or "[]")), issuer=row["issuer"] or "",
                       serial=row["serial"] or "", fingerprint=row["fingerprint"] or "",
                       not_before=row["not_before"], not_after=row["not_after"], created_at=row["created_at"] or "")


def _tls_state(row: dict) -> TlsState:
    return TlsState(row["deployment_id"], bool(row["auto"]), bool(row["redirect"]), bool(row["hsts"]),
                    row["failures"] or 0, row["not_before"], row["last_attempt"], row["last_error"], row["last_success"])


def _release(row: dict) -> Release:
    return Release(
        id=row["id"], deployment_id=row["deployment_id"], version=row["version"], image=row["image"],
        config=json.loads(row["config"] or "{}"), process_types=json.loads(row["process_types"] or "{}"),
        build_id=row["build_id"], commit=row["commit_sha"], user=row["user"], description=row["description"],
        status=row["status"], created_at=row["created_at"], error=row["error"], hint=row.get("hint"),
    )


def _user(row: dict) -> User:
    return User(row["id"], row["name"], bool(row["admin"]), row["created_at"])


def _key(row: dict) -> PublicKey:
    return PublicKey(row["fingerprint"], row["kind"], row["bits"], row["comment"] or "",
                     row["openssh"], row.get("user", ""), row["created_at"])


def _deployment(row: dict) -> Deployment:
    return Deployment(row["id"], row["app"], row["name"], row["created_at"],
                      tuple(json.loads(row["buildpacks"] or "[]")), row.get("release_version"),
                      bool(row.get("buildpacks_admin")), row.get("stack") or "")


def _build(row: dict) -> Build:
    return Build(
        id=row["id"], deployment_id=row["deployment_id"], number=row["number"],
        commit=row["commit_sha"], old_commit=row["old_commit"] or "", status=row["status"],
        user=row["user"], started_at=row["started_at"], finished_at=row["finished_at"],
        log=row["log"] or "", image=row["image"], process_types=json.loads(row["process_types"] or "{}"),
        error=row["error"], reuse=json.loads(row["reuse"]) if row.get("reuse") else None,
        stack=row.get("stack"), stack_reason=row.get("stack_reason"),
    )


def _addon(row: dict) -> Addon:
    return Addon(id=row["id"], app=row["app"], name=row["name"], kind=row["kind"], version=row["version"],
                 plan=row["plan"], password=row["password"], config_var=row["config_var"],
                 created_at=row["created_at"], generation=row["generation"] or 0, schedule=row["schedule"],
                 retention=row["retention"] or 7, failures=row["failures"] or 0, not_before=row["not_before"],
                 schedule_since=row.get("schedule_since"))


def _backup(row: dict) -> Backup:
    return Backup(id=row["id"], app=row["app"], addon=row["addon"], number=row["number"], kind=row["kind"],
                  version=row["version"], file=row["file"], status=row["status"], size=row["size"] or 0,
                  created_at=row["created_at"], finished_at=row["finished_at"],
                  counts=json.loads(row["counts"] or "{}"), sha256=row["sha256"] or "",
                  scheduled=bool(row["scheduled"]), error=row["error"])


    # -- certificates and TLS state -------------------------------------------
