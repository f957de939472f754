"""Add-ons: Redis, PostgreSQL and MySQL (MariaDB) services owned by apps (issue 12).

One module per job: ``kinds`` (what differs between the services), ``images``
(service images from Debian packages, like the stack), ``engine`` (the only
module here that imports docker), ``service`` (containers, data directories,
the app's network), ``backups`` (capture, verify, restore, prune), ``plan``
(the pure healing decision) and ``healer`` (its loop in `bae serve`, plus
scheduled backups). The addons:* commands live in ``control/commands/addons.py``.
"""

from addons.kinds import KINDS, Kind, kind_for
from addons.service import Services, network_name

__all__ = ["KINDS", "Kind", "kind_for", "Services", "network_name"]
