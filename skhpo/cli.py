"""The ``skhpo`` command (see :mod:`skhpo.bench.commands`)."""

import sys

from .bench.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
