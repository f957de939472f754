"""Who may do what: the authorization rules, in one place.

Admins (and the operator running ``bae`` on the host) may do anything. An app's
owner may do anything to it; collaborators may push, fetch and operate it but
not destroy it, add deployments or manage who has access. Users manage their
own keys. Commands and the git server call these before they act.
"""

from __future__ import annotations

from bae.errors import AccessDenied
from bae.model import App, Caller, Deployment, User, parse_target, validate_name
from bae.store import Store

__all__ = ["require_admin", "app_for", "deployment_for", "user_for_keys", "OWNER", "MEMBER"]

OWNER = "owner"
MEMBER = "member"


def require_admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise AccessDenied(f"only admins may {what}", "Ask a platform admin to do it for you.")


def _check(caller: Caller, app: App, role: str) -> App:
    if caller.admin or (caller.user and app.owner == caller.user.name):
        return app
    member = bool(caller.user and caller.user.name in app.collaborators)
    if role == MEMBER and member:
        return app
    if not member:
        raise AccessDenied(
            f"you ({caller.name}) do not have access to app '{app.name}'",
            f"Its owner can grant it: access:add {app.name} {caller.name}",
        )
    raise AccessDenied(
        f"only the owner of app '{app.name}' or an admin may do this",
        "Collaborators may push and operate the app, not change who has access or destroy it.",
    )


def app_for(caller: Caller, store: Store, name: str, role: str = MEMBER) -> App:
    """The app named ``name`` if ``caller`` holds ``role`` on it."""
    return _check(caller, store.app(validate_name("app", name)), role)


def deployment_for(caller: Caller, store: Store, target: str, role: str = MEMBER) -> Deployment:
    """The deployment ``APP`` or ``APP/NAME`` if ``caller`` holds ``role`` on its app."""
    app_name, dep_name = parse_target(target)
    app_for(caller, store, app_name, role)
    return store.deployment(app_name, dep_name)


def user_for_keys(caller: Caller, store: Store, name: str) -> User:
    """The user whose keys ``caller`` wants to manage: themselves, or anyone for admins."""
    validate_name("user", name)
    if not caller.admin and (caller.user is None or caller.user.name != name):
        raise AccessDenied(
            f"you ({caller.name}) may manage only your own keys, not those of '{name}'",
            f"Use keys:add {caller.name} …",
        )
    return store.user(name)
