"""``python -m bae`` is the ``bae`` command."""

import sys

from bae.cli import main

sys.exit(main())
