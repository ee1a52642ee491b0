"""``python -m medsynth.cli`` (and ``torchrun -m medsynth.cli``) runs the command line."""

import sys

from medsynth.cli.main import main

sys.exit(main())
