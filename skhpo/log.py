"""Progress messages of the searches, through :mod:`logging`.

Every search with ``verbose > 0`` reports through the ``"skhpo"`` logger, one child per
method (``skhpo.flatness``, ``skhpo.autohyper``, ``skhpo.population``,
``skhpo.cutting_plane``, ``skhpo.hyperlocal``), at level INFO. The library adds only a
``NullHandler``, as a library should; where the messages go is the application's choice:

* nothing configured (no handler on the logger, its parents or the root): they are printed
  to standard output, as scikit-learn's searches print with ``verbose``;
* a handler configured (``logging.basicConfig()``, a file handler, ...): they go to it, also
  when the root's level is above INFO, since ``verbose`` asked for them;
* a level set on the ``"skhpo"`` logger (or a child) decides, e.g.
  ``logging.getLogger("skhpo").setLevel(logging.WARNING)`` silences every search.
"""

import logging

__all__ = ["report"]

logger = logging.getLogger("skhpo")
logger.addHandler(logging.NullHandler())


def report(name, verbose, message):
    """With ``verbose`` > 0, ``message`` at INFO on the ``skhpo.<name>`` logger (see the
    module docstring for where it goes)."""
    if not verbose:
        return
    child = logger.getChild(name)
    if not _has_handler(child):
        print(message, flush=True)
    elif logger.level == logging.NOTSET and child.level == logging.NOTSET:
        # no level set on skhpo's loggers: verbose > 0 is the request to see INFO
        child.handle(child.makeRecord(child.name, logging.INFO, "skhpo", 0, message, None,
                                      None))
    else:
        child.info(message)


def _has_handler(log):
    """Whether a handler other than a ``NullHandler`` would receive ``log``'s records."""
    while log is not None:
        if any(not isinstance(h, logging.NullHandler) for h in log.handlers):
            return True
        log = log.parent if log.propagate else None
    return False
