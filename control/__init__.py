"""The composition root: it assembles the components and runs them; nothing below imports it.

``platform`` (settings, store, repositories, logs and runtime, built once per
process), ``cli`` (the ``bae`` command), ``commands/`` (the command table, one
module per topic, shared by the CLI and SSH), ``daemon`` (``bae serve``),
``pipeline`` (push → build → release) and ``deploy`` (releases and rollouts).
"""

__all__: list[str] = []
