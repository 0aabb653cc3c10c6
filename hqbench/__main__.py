"""``python -m hqbench ...`` is ``hqbench ...``."""

import sys

from .cli import main

sys.exit(main())
