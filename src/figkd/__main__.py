"""``python -m figkd ...`` runs the ``figkd`` command line (useful where the script is not on PATH)."""

import sys

from figkd.cli import main

sys.exit(main())
