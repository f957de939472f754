"""bae: a self-hosted, git-push platform-as-a-service.

The shared base (model, store, config, errors) and the composition root
(cli, daemon, pipeline). See DESIGN.md for the vocabulary.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
