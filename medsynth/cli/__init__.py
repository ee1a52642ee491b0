"""The ``medsynth`` command line: one module per library package, each registering its commands on one app.

See :mod:`medsynth.cli.main` for the exit statuses and the one-line errors.
"""

from medsynth.cli.main import main

__all__ = ["main"]
