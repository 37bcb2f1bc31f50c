"""`python -m facerco` is the same as `facerco`."""

import sys

from facerco.cli import main

sys.exit(main())
