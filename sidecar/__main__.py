"""``python -m sidecar``: the same command as ``mistral-sidecar``."""

import sys

from sidecar.cli import main

sys.exit(main())
