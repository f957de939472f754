"""SSH server (paramiko), git receive/upload-pack (dulwich), keys and repositories.

Public surface: ``SSHServer`` and ``SessionContext`` (for bae serve),
``parse_public_key`` (for keys:add), ``Repositories`` and ``Source`` (for the
pipeline), ``PushTarget``/``Progress`` (the deploy hook's arguments).
"""

__all__ = ["SSHServer", "SessionContext", "parse_public_key", "Repositories", "Source", "PushTarget", "Progress"]


def __getattr__(name):  # lazy: keys:add should not pay for importing the SSH server
    if name in ("SSHServer",):
        from gitserver.sshd import SSHServer
        return SSHServer
    if name == "SessionContext":
        from gitserver.session import SessionContext
        return SessionContext
    if name == "parse_public_key":
        from gitserver.keys import parse_public_key
        return parse_public_key
    if name in ("Repositories", "Source"):
        from gitserver import repos
        return getattr(repos, name)
    if name in ("PushTarget", "Progress"):
        from gitserver import receive
        return getattr(receive, name)
    raise AttributeError(name)
