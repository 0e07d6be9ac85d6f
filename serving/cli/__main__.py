"""`python -m serving.cli` is `lethe`."""

import sys

from . import main

sys.exit(main())
