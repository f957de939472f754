"""Platform settings: read from TOML, every field defaulted and described.

``load()`` is called once at start-up by the CLI and by ``bae serve``; unknown
keys and wrong types are refused with the key's dotted name. ``render()`` is
what ``bae config:show`` prints: the effective settings with their descriptions.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from bae.errors import ConfigError

__all__ = ["Settings", "Plan", "load", "render", "ENV_VAR"]

ENV_VAR = "BAE_CONFIG"


def setting(default, doc: str, **kw):
    """A settings field: its default and the one-line description config:show prints."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return list(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value)
    return value


@dataclass
class SSH:
    host: str = setting("0.0.0.0", "address the SSH server (git push, commands) listens on")
    port: int = setting(2222, "TCP port of the SSH server")
    max_connections: int = setting(200, "SSH connections served at once; more are refused")
    idle_timeout: float = setting(60.0, "seconds a connection may stay open running no command or git request (e.g. ssh -N) before it is closed")
    public_host: str = setting("", "host name shown in git remote URLs; empty: this machine's host name")


_SIZE = re.compile(r"(\d+)\s*([kmg]?)", re.I)
_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@dataclass
class Git:
    max_push_size: str = setting("1g", "largest pack one git push may send (500m, 1g); larger pushes are refused as soon as they pass it; 0: no limit")

    @property
    def max_push_bytes(self) -> int:
        match = _SIZE.fullmatch(self.max_push_size.strip())
        if not match:
            raise ConfigError(f"setting 'git.max_push_size' is not a size: {self.max_push_size!r}",
                              "Write it like 500m or 2g (0: no limit).")
        return int(match.group(1)) * _SCALE[match.group(2).lower()]


@dataclass
class Router:
    host: str = setting("0.0.0.0", "address nginx listens on for end-user HTTP traffic")
    http_port: int = setting(80, "TCP port nginx listens on for end-user HTTP traffic")
    https_port: int = setting(443, "TCP port nginx listens on for HTTPS (TLS 1.2/1.3, HTTP/2); 0: no HTTPS")
    nginx: str = setting("nginx", "nginx binary the router runs")
    client_max_body_size: str = setting("100m", "largest request body nginx accepts (nginx size syntax)")
    connect_timeout: float = setting(3.0, "seconds to wait for a unit to accept a connection before trying another")
    read_timeout: float = setting(60.0, "seconds a unit may take to answer before the user gets a 504")
    send_timeout: float = setting(60.0, "seconds a unit may take to read a request body")
    keepalive: int = setting(32, "idle keep-alive connections nginx keeps per app to its units")
    keepalive_timeout: float = setting(1.0, "seconds nginx keeps an idle connection to a unit; keep it below the app "
                                       "servers' own idle timeouts (gunicorn 2 s, Node.js 5 s), or a request sent as "
                                       "the unit closes the connection fails (a POST is not retried: 502)")
    worker_processes: int = setting(1, "nginx worker processes (0: one per CPU core); one leaves the CPU to the units on small hosts")


@dataclass
class TLS:
    acme_directory: str = setting("https://acme-v02.api.letsencrypt.org/directory",
                                  "ACME directory URL certs:auto obtains certificates from")
    acme_email: str = setting("", "contact address registered with the ACME CA (expiry notices); empty: none")
    acme_ca_bundle: str = setting("", "CA bundle that verifies the ACME directory's HTTPS (a private or test CA); empty: the system's")
    acme_timeout: float = setting(90.0, "seconds an ACME order (validation and issuance) may take before it fails")
    challenge_port: int = setting(80, "port the CA and the pre-flight check reach this router's HTTP-01 answers on (80 for public CAs)")
    resolver: str = setting("", "DNS server (HOST or HOST:PORT) the pre-flight check resolves hostnames with; empty: the system's")
    retry_min: float = setting(60.0, "seconds before the first retry of a failed certificate order; doubles per failure")
    retry_max: float = setting(21600.0, "longest wait, in seconds, between retries of a failing certificate order")
    check_interval: float = setting(3600.0, "seconds between certificate checks when nothing is due sooner")
    hsts_max_age: int = setting(31536000, "max-age of the Strict-Transport-Security header certs:redirect --hsts sends")


@dataclass
class Build:
    stack_image: str = setting("", "image builds and units run on; empty: the stack image bae builds itself (stack:build)")
    base_image: str = setting("", "registry image to build the stacks from instead of debootstrap, {suite} replaced by the stack's Debian suite (e.g. 'debian:{suite}'); empty: debootstrap")
    debian_mirror: str = setting("", "Debian mirror debootstrap and apt use when building the stacks; empty: the one in the host's apt sources")
    ca_bundle: str = setting("/etc/ssl/certs/ca-certificates.crt", "CA bundle builds and units trust (for TLS-intercepting proxies); empty: the stack's own")
    pip_index_url: str = setting("", "PIP_INDEX_URL passed to builds; empty: the index of the host's pip configuration, if any")
    npm_registry: str = setting("", "npm registry passed to builds; empty: the registry of the host's npm configuration, if any")
    memory: str = setting("2g", "memory limit of a build container (docker size syntax)")
    timeout: int = setting(900, "seconds a build may take before it is stopped and fails")
    keep_builds: int = setting(50, "build logs kept per deployment; older ones are deleted")


@dataclass
class Plan:
    memory: str = setting("256m", "memory limit (docker size syntax); swap is not allowed beyond it")
    cpu: float = setting(0.5, "CPU cores the unit may use")
    pids: int = setting(256, "most processes and threads the unit may run")


def _default_plans() -> dict[str, Plan]:
    return {
        "s1": Plan("256m", 0.5, 256),
        "s2": Plan("512m", 1.0, 512),
        "m1": Plan("1g", 1.0, 1024),
        "l1": Plan("2g", 2.0, 2048),
    }


@dataclass
class Scheduler:
    interval: float = setting(2.0, "seconds between reconcile passes when nothing wakes the loop")
    boot_timeout: int = setting(60, "seconds a web unit has to accept connections on $PORT")
    stop_grace: int = setting(30, "seconds between SIGTERM and SIGKILL when a unit stops")
    default_plan: str = setting("s1", "plan of a process type until ps:resize changes it")
    max_units: int = setting(20, "most units one process type may be scaled to")
    rollout_batch: int = setting(5, "web units started at once during a deploy, resize or restart")
    runtime: str = setting("docker", "where units run: \"docker\" (this machine's Docker Engine) or \"swarm\" (the nodes of the Docker Swarm this engine manages)")
    backoff_max: int = setting(300, "longest wait, in seconds, before restarting a crash-looping unit")
    backoff_reset: float = setting(30.0, "seconds a unit must stay up before its process type's crash count resets")
    keep_releases: int = setting(5, "releases whose images are kept for rollback; older images are removed")
    release_timeout: int = setting(600, "seconds a Procfile release: command may run before the release fails")


@dataclass
class Swarm:
    advertise_addr: str = setting("", "the manager's address on the nodes' network (the registry listens there); empty: the swarm's advertise address")
    registry_port: int = setting(5000, "TCP port of the platform's image registry on advertise_addr (1-65535)")
    registry_dir: str = setting("", "where the registry keeps its CA, certificate, password and images; empty: data_dir/registry")
    heartbeat: float = setting(5.0, "Swarm dispatcher heartbeat in seconds: a node missing about three is declared down and its units re-placed (1-300)")


@dataclass
class Logs:
    retention_lines: int = setting(20000, "log lines kept per deployment, across unit replacements")
    router_max_mb: float = setting(20.0, "size at which a deployment's router access log is rotated (one old file kept)")


@dataclass
class Settings:
    data_dir: str = setting("/var/lib/bae", "repos, state, caches, router config")
    base_domain: str = setting("bae.localhost", "apps are served at APP.BASE_DOMAIN (bae.localhost resolves to loopback)")
    ssh: SSH = setting(SSH(), "the SSH server")
    git: Git = setting(Git(), "receiving pushes")
    router: Router = setting(Router(), "the HTTP router (nginx)")
    tls: TLS = setting(TLS(), "HTTPS certificates: uploaded, or from an ACME CA (certs:auto)")
    build: Build = setting(Build(), "building releases")
    scheduler: Scheduler = setting(Scheduler(), "running units")
    plans: dict[str, Plan] = setting(_default_plans(), "unit sizes ps:resize chooses from")
    logs: Logs = setting(Logs(), "app logs")
    swarm: Swarm = setting(Swarm(), "the cluster (when scheduler.runtime is \"swarm\")")

    source: str = field(default="(defaults)", metadata={"internal": True})

    @property
    def data(self) -> Path:
        return Path(self.data_dir)


def _check(value, hint, key: str):
    """Return ``value`` converted to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"setting '{key}' must be a table ([{key}]), not {type(value).__name__}")
        return _build(hint, value, key + ".")
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"setting '{key}' must be a table ([{key}]), not {type(value).__name__}")
        return {name: _check(sub, item, f"{key}.{name}") for name, sub in value.items()}
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"setting '{key}' must be a list, not {type(value).__name__}")
        return [_check(sub, item, f"{key}[]") for sub in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"setting '{key}' must be an integer, not a boolean")
    if not isinstance(value, hint):
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        raise ConfigError(
            f"setting '{key}' must be {names.get(hint, hint.__name__)}, not {value!r}"
        )
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            where = f"[{prefix[:-1]}]" if prefix else "the top level"
            raise ConfigError(
                f"unknown setting '{prefix}{key}'",
                f"Known settings at {where}: {', '.join(sorted(known))}.",
            )
        kwargs[key] = _check(value, hints[key], prefix + key)
    if cls is Settings and "plans" in kwargs and not kwargs["plans"]:
        raise ConfigError("setting 'plans' must name at least one plan")
    return cls(**kwargs)


def load(path: str | os.PathLike | None = None) -> Settings:
    """Read settings from ``path``, else ``$BAE_CONFIG``, else use the defaults."""
    path = path or os.environ.get(ENV_VAR) or None
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} does not exist", f"Create it or unset {ENV_VAR}.") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from None
    settings = _build(Settings, data)
    if settings.scheduler.default_plan not in settings.plans:
        raise ConfigError(
            f"setting 'scheduler.default_plan' names plan {settings.scheduler.default_plan!r}, which is not in [plans]",
            f"Known plans: {', '.join(sorted(settings.plans))}.",
        )
    settings.git.max_push_bytes  # noqa: B018 (a bad size stops start-up, naming the key)
    if settings.scheduler.runtime not in ("docker", "swarm"):
        raise ConfigError(f"setting 'scheduler.runtime' is {settings.scheduler.runtime!r}",
                          "Use \"docker\" (this machine) or \"swarm\" (a Docker Swarm cluster).")
    for key in ("connect_timeout", "read_timeout", "send_timeout", "keepalive_timeout"):
        if getattr(settings.router, key) <= 0:
            raise ConfigError(f"setting 'router.{key}' is {getattr(settings.router, key)!r}",
                              "Give a number of seconds greater than 0.")
    for key, low, high, what in (("heartbeat", 1.0, 300.0, "seconds"), ("registry_port", 1, 65535, "a TCP port")):
        value = getattr(settings.swarm, key)
        if not low <= value <= high:
            raise ConfigError(f"setting 'swarm.{key}' is {value!r}, outside the allowed range {low:g} to {high:g}",
                              f"Give {what} from {low:g} to {high:g}.")
    settings.source = str(path)
    return settings


def _toml_value(value) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def render(settings: Settings) -> str:
    """The effective settings as TOML, each key preceded by its description."""
    out = [f"# effective settings (from {settings.source})"]
    tables = []
    for f in dataclasses.fields(settings):
        if f.metadata.get("internal"):
            continue
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            tables.append((f, value))
            continue
        out += [f"# {f.metadata['doc']}", f"{f.name} = {_toml_value(value)}"]
    for f, value in tables:
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, section in items:
            name = f.name if sub is None else f"{f.name}.{sub}"
            out += ["", f"[{name}]" + (f"  # {f.metadata['doc']}" if sub is None else "")]
            for g in dataclasses.fields(section):
                out += [f"# {g.metadata['doc']}", f"{g.name} = {_toml_value(getattr(section, g.name))}"]
    return "\n".join(out) + "\n"
