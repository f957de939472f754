"""``python -m bae`` is the ``bae`` command."""

import sys

from control.cli import main

sys.exit(main())
