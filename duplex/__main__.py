"""``python -m duplex``: the same as the ``duplex`` command."""

import sys

from .cli import main

sys.exit(main())
