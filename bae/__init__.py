"""bae: a self-hosted, git-push platform-as-a-service.

This package is the base every component stands on: the vocabulary (``model``),
``errors``, ``store``, ``config``, ``console``, ``logstore``, ``access`` and the
unit contract (``unit``). It imports nothing of ours outside itself; the
composition root is the sibling package ``control``. See DESIGN.md.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
