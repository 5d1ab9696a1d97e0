"""Progress messages of the searches, through :mod:`logging`.

Every search with ``verbose > 0`` reports through the ``"skhpo"`` logger (one child per
method: ``skhpo.flatness``, ``skhpo.autohyper``, ``skhpo.population``, ``skhpo.cutting_plane``,
``skhpo.hyperlocal``), at level INFO. Configure it like any logger, e.g.
``logging.getLogger("skhpo").setLevel(logging.WARNING)`` to silence it, or add a handler to
write to a file. If nothing is configured (no handler on it or on the root logger), a handler
that writes the bare message to standard output is attached the first time a verbose search
reports, so ``verbose=1`` shows its messages as scikit-learn's searches do.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["report"]

logger = logging.getLogger("skhpo")


def report(name, verbose, message):
    """Log ``message`` on ``skhpo.<name>`` at INFO when ``verbose`` > 0."""
    if not verbose:
        return
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.getChild(name).info(message)
