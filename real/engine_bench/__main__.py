"""``python -m real.engine_bench`` (see the package docstring)."""

import sys

from real.engine_bench.runner import main

sys.exit(main())
