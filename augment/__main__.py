"""``python -m augment`` (and ``accelerate launch -m augment``) run the CLI."""

import sys

from augment.cli import main

sys.exit(main())
