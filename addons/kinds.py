"""What differs between Redis, PostgreSQL and MySQL (MariaDB) add-ons.

Each kind names its image recipe (``images/KIND``), the major versions it can
run, its port, how its URL looks, which config var it takes first, what its
backups are and which client ``addons:connect`` opens. The scripts inside each
image (``bae-service``, ``bae-backup``, ``bae-verify``) share one contract, so the
code in service.py and backups.py never branches on the kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from bae.errors import Invalid

__all__ = ["Kind", "KINDS", "kind_for"]


@dataclass(frozen=True)
class Kind:
    name: str            # what users type: redis, postgres, mysql
    title: str
    recipe: str          # images/<recipe>
    versions: tuple[str, ...]  # major versions this platform builds, oldest first
    unavailable: str     # why other majors are not offered
    port: int
    scheme: str
    first_var: str       # the config var the app's first add-on of this family takes
    family: str          # "redis" or "sql": which add-ons compete for first_var
    backup_ext: str
    backup_format: str
    backup_user: str     # who runs bae-backup inside the service container
    client: tuple[str, ...]  # addons:connect runs this inside the service container
    images: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()  # (version, Debian suite, build args)
    # how bae knows the service takes the app's password: the port accepts (Redis reads it from its
    # config before it listens), the server's greeting arrives (MariaDB runs its --init-file before it
    # greets), or bae-service wrote /bae/ready after setting it over the local socket (PostgreSQL)
    ready: str = "port"  # port, greeting, marker
    template: bool = False  # the image holds an empty data directory (/var/lib/bae-template/data) to copy

    def image_recipe(self, version: str) -> tuple[str, dict[str, str]]:
        """(Debian suite, build args) of ``version``'s image (default: the stack's bookworm, no args)."""
        for v, suite, args in self.images:
            if v == version:
                return suite, dict(args)
        return "bookworm", {}

    def url(self, host: str, password: str) -> str:
        if self.family == "redis":
            return f"{self.scheme}://:{password}@{host}:{self.port}"
        return f"{self.scheme}://app:{password}@{host}:{self.port}/app"

    def client_env(self, password: str) -> dict[str, str]:
        return {"REDISCLI_AUTH": password, "PGPASSWORD": password, "MYSQL_PWD": password}


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("redis", "Redis", "redis", ("7",), "other majors need another Debian release's packages (trixie)", 6379,
         "redis", "REDIS_URL", "redis", "rdb", "Redis RDB", "root",
         ("redis-cli", "--no-auth-warning", "-h", "127.0.0.1")),
    Kind("postgres", "PostgreSQL", "postgres", ("15", "17"),
         "15 comes from Debian bookworm (the stack's release), 17 from trixie; others are not packaged there", 5432,
         "postgresql", "DATABASE_URL", "sql", "dump", "pg_dump custom format", "postgres",
         ("psql", "-h", "127.0.0.1", "-U", "app", "app"),
         (("15", "bookworm", (("SUITE", "bookworm"), ("PG", "15"))), ("17", "trixie", (("SUITE", "trixie"), ("PG", "17")))),
         ready="marker", template=True),
    Kind("mysql", "MySQL (MariaDB)", "mysql", ("10.11",),
         "bookworm packages MariaDB 10.11 only (trixie has 11.8; not built here)", 3306,
         "mysql", "DATABASE_URL", "sql", "sql", "mariadb-dump --single-transaction", "root",
         ("mariadb", "-h", "127.0.0.1", "-u", "app", "app"), ready="greeting", template=True),
)}


def kind_for(name: str, version: str | None = None) -> tuple[Kind, str]:
    """The kind called ``name`` and the version to run (default: the stack's release's); Invalid otherwise."""
    kind = KINDS.get(name)
    if kind is None:
        raise Invalid(f"'{name[:40]}' is not an add-on kind", f"Kinds: {', '.join(KINDS)}.")
    if version is None:
        return kind, kind.versions[0]
    major = version.strip()
    for v in kind.versions:
        if major == v or (kind.name == "mysql" and major in ("10", "10.11")) or (kind.name == "redis" and major.startswith("7")):
            return kind, v
    raise Invalid(f"{kind.title} {version[:20]} is not available here",
                  f"Available: {', '.join(kind.versions)}; {kind.unavailable}.")
