"""The SSH server's persistent ed25519 host key, generated on first start."""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gitserver.keys import fingerprint

__all__ = ["load_host_key", "host_fingerprint"]


def load_host_key(path: Path) -> paramiko.PKey:
    """Read the host key at ``path``, creating it (mode 0600) if it does not exist."""
    path = Path(path)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, path)  # if two processes race, the first key wins
        except FileExistsError:
            pass
        os.unlink(tmp)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def host_fingerprint(key: paramiko.PKey) -> str:
    return fingerprint(key.asbytes())
