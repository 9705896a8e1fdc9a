"""`python -m parity.benchmark`."""

import sys

from parity.benchmark.run import main

sys.exit(main())
