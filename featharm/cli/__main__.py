"""``python -m featharm.cli ...``: the ``featharm`` command."""

import sys

from . import main

sys.exit(main())
