"""`python -m executor`: the command line (see executor.cli)."""

import sys

from executor.cli import main

sys.exit(main())
