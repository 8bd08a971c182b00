"""``python -m captioner`` (and ``torchrun -m captioner``) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
