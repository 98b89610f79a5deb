"""``python -m metricwise``: the ``metricwise`` command."""

import sys

from metricwise.cli import main

sys.exit(main())
