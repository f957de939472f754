"""help, version, whoami, config:show, serve, router:stop and registry:stop."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as pkg_version

import click

from bae.access import require_admin
from bae.config import render
from bae.console import Console
from bae.errors import Invalid
from control.commands import Invocation, command, command_help, dispatch, visible

_TITLES = {
    "apps": "Apps", "deployments": "Deployments", "access": "Access", "users": "Users",
    "keys": "SSH keys", "builds": "Builds", "buildpacks": "Buildpacks", "ps": "Processes (units)",
    "releases": "Releases", "config": "Config vars", "logs": "Logs", "domains": "Domains",
    "plans": "Processes (units)", "run": "One-off units", "stack": "Stacks", "stacks": "Stacks",
}


def _topic(name: str) -> str:
    if name == "config:show":
        return "Platform"
    head = name.split(":", 1)[0]
    return _TITLES.get(head, "Platform")


@command("help")
@click.argument("name", required=False, metavar="[COMMAND]")
def help_(inv: Invocation, name: str | None) -> None:
    """Show the commands, or one command's usage and options."""
    if name:
        if name not in visible(inv):
            raise Invalid(f"'{name[:60]}' is not a bae command", f"See `{inv.prog} help` for the list.")
        inv.console.out(command_help(inv, name))
        return
    inv.console.out(f"Usage: {inv.prog} COMMAND [ARGS]...\n")
    groups: dict[str, list[tuple[str, str]]] = {}
    for cmd_name, cmd in visible(inv).items():
        groups.setdefault(_topic(cmd_name), []).append((cmd_name, cmd.get_short_help_str(70)))
    width = max(len(n) for n in visible(inv))
    for title in sorted(groups, key=lambda t: (t == "Platform", t)):
        inv.console.out(title)
        for cmd_name, short in groups[title]:
            inv.console.out(f"  {cmd_name.ljust(width)}  {short}")
        inv.console.out()
    inv.console.out(f"Run `{inv.prog} help COMMAND` (or COMMAND --help) for a command's details.")


@command("version")
def version(inv: Invocation) -> None:
    """Show the version of bae."""
    try:
        inv.console.out(f"bae {pkg_version('bae')}")
    except PackageNotFoundError:
        inv.console.out("bae (not installed as a package)")


@command("whoami")
def whoami(inv: Invocation) -> None:
    """Show who you are to bae (user name, admin or not)."""
    caller = inv.caller
    if caller.local:
        inv.console.out("admin (local operator on the platform host)")
    else:
        inv.console.out(f"{caller.name}{' (admin)' if caller.admin else ''}")


@command("config:show")
def config_show(inv: Invocation) -> None:
    """Print the platform's effective settings as TOML, with descriptions (admins)."""
    require_admin(inv.caller, "see the platform settings")
    inv.console.raw(render(inv.platform.settings).encode())


@command("serve", local_only=True)
def serve(inv: Invocation) -> int:
    """Run the platform in the foreground: SSH server, scheduler and router."""
    # imported here: the SSH server, router and scheduler are not loaded for the other commands
    from control.daemon import serve as run_daemon, ssh_prog

    prog = ssh_prog(inv.platform)

    def run_command(caller, argv, stdin, stdout, stderr, request) -> int:
        return dispatch(Invocation(inv.platform, caller, Console(stdout, stderr), stdin, prog=prog, request=request,
                                   alive=request.alive), argv)

    return run_daemon(inv.platform, inv.console, run_command)


@command("router:stop", local_only=True)
def router_stop(inv: Invocation) -> None:
    """Stop the router's nginx (host only): it outlives `bae serve`, which adopts it when it starts."""
    from control.daemon import make_router  # as for serve: the router is loaded only here

    if inv.platform.notify():
        raise Invalid("bae serve is running and would start the router again",
                      "Stop bae serve first, then run router:stop.")
    if make_router(inv.platform).stop():
        inv.console.step("The router stopped (requests in flight were answered)")
    else:
        inv.console.out("The router was not running.")


@command("registry:stop", local_only=True)
def registry_stop(inv: Invocation) -> None:
    """Stop the swarm runtime's image registry (host only): it outlives `bae serve`, which adopts it."""
    if getattr(inv.platform.runtime, "name", "") != "swarm":
        raise Invalid("this platform runs no image registry (scheduler.runtime is \"docker\")")
    if inv.platform.notify():
        raise Invalid("bae serve is running and would start the registry again",
                      "Stop bae serve first, then run registry:stop.")
    if inv.platform.runtime.registry.stop():
        inv.console.step("The image registry stopped (nodes cannot pull new units' images until bae serve runs)")
    else:
        inv.console.out("The image registry was not running.")
