"""SSH server (paramiko), git receive/upload-pack (dulwich), keys and repositories.

Modules: ``sshd`` (SSH policy and accept loop, for bae serve), ``session`` (what
runs on a channel), ``receive`` (receive-pack with the deploy hook), ``repos``
(repositories, quarantine, ``CommitSource``), ``keys`` (public keys, for keys:add).
Import the module you need: keys:add should not pay for importing the SSH server.
"""

__all__: list[str] = []
