"""The unit contract: what every unit, one-off unit and build can rely on (see DESIGN.md).

Constants only, shared by the build runner, the stack recipe and every runtime,
so that no component imports another for them.
"""

from __future__ import annotations

__all__ = ["USER", "UID", "HOME", "APP_DIR", "CA_PATH", "ENTRYPOINT", "PORT", "RESERVED_VARS", "RESERVED_PREFIX"]

USER = "bae"
UID = 1100  # the `bae` user in the stack image: units, builds and unpacked code run as and belong to it
HOME = "/home/bae"
APP_DIR = f"{HOME}/app"
CA_PATH = "/etc/ssl/certs/ca-certificates.crt"  # where builds and units see the platform's CA bundle
ENTRYPOINT = ["/usr/bin/tini", "-g", "--", "/usr/local/bin/bae-launch"]  # PID 1 forwards SIGTERM; profile.d, bash -c
PORT = 5000  # each unit has its own network namespace, so every web unit listens on the same $PORT
RESERVED_VARS = frozenset({"PORT", "DYNO", "HOME"})  # set by the platform, never by config vars
RESERVED_PREFIX = "BAE_"
