"""How big a fused group may be, and which nets ``engine="auto"`` fuses at all.

On a CPU a fused step of a big net is bound by its arithmetic, not by per-step overhead, so
above some size training K nets together is no faster than one after the other, and a group
whose state leaves the cache loses its gain. The two limits here were measured on the machine
that built skhpo (docs/fused.md); ``skhpo calibrate`` (:mod:`skhpo.bench.calibrate`) measures
the first on yours, and ``SKHPO_MAX_WEIGHTS=<n>`` / ``SKHPO_MAX_GROUP_WEIGHTS=<n>`` in the
environment set them.

A threshold, not a timing at fit time: the engine a task trains with must not depend on how
busy the machine was at that moment, or the same ``random_state`` could give different
results (a fused model equals its own fit only to float32 rounding).
"""

import contextlib
import os

__all__ = ["ENV", "GROUP_ENV", "MAX_GROUP_WEIGHTS", "MAX_WEIGHTS", "MEMORY_ENV",
           "MEMORY_SHARE", "group_size", "max_group_weights", "max_weights", "memory_budget",
           "model_bytes", "proc_kib"]

#: the environment variable that sets ``engine="auto"``'s threshold (a number of weights)
ENV = "SKHPO_MAX_WEIGHTS"
#: the environment variable that sets the weights one fused group holds at most
GROUP_ENV = "SKHPO_MAX_GROUP_WEIGHTS"
#: ``engine="auto"``: nets with more weights train alone. Measured on one thread of the
#: machine that built skhpo: groups of 2-8 trained 1.6-1.8x faster than one at a time at 85k
#: weights, 1.1-1.2x at 176k and 0.9-1.1x at 301k (``benchmarks/fused.py --depth 2
#: --width 512``)
MAX_WEIGHTS = 150_000
#: measured on the machine that built skhpo (one thread, docs/fused.md): the gain per model
#: peaks while a group holds up to about 1.4 million weights (85k-weight nets: 1.53x at 8
#: models, 1.47x at 16, 1.22x at 32; 177k: 1.20x at 8, 0.92x at 16, 0.69x at 32)
MAX_GROUP_WEIGHTS = 1_500_000
#: the environment variable that sets the bytes a fused group may hold (its models' state,
#: row orders and activations; the data, shared, not counted)
MEMORY_ENV = "SKHPO_GROUP_MEMORY"
#: without it: this share of the memory available when the group starts
MEMORY_SHARE = 0.5


def _env_int(name, default, minimum, unit="weights", hint=" (as `skhpo calibrate` prints it)"):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        n = int(value)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise ValueError(f"{name} must be a whole number of {unit} >= {minimum}{hint}; got "
                         f"{value!r}")
    return n


def max_weights():
    """The largest net (in weights) that ``engine="auto"`` fuses: ``$SKHPO_MAX_WEIGHTS`` if set,
    else :data:`MAX_WEIGHTS`. A bad value is a ``ValueError``."""
    return _env_int(ENV, MAX_WEIGHTS, 0)


def max_group_weights():
    """The weights one fused group holds at most: ``$SKHPO_MAX_GROUP_WEIGHTS`` if set, else
    :data:`MAX_GROUP_WEIGHTS`."""
    return _env_int(GROUP_ENV, MAX_GROUP_WEIGHTS, 1)


def group_size(n_weights, max_group=64):
    """Models per fused group for a net of ``n_weights``: as many as
    :func:`max_group_weights` allows, at least 2, at most ``max_group``."""
    return int(max(2, min(max_group, max_group_weights() // max(1, n_weights))))



def model_bytes(n_weights, n_rows, batch, n_features, n_units):
    """Bytes one model adds to a fused group (an estimate, on the generous side): its
    weights four times over in float32 (the stacked weights, their gradient, two optimiser
    moments), its row order in int64 (``n_rows``: the rows it trains on, reshuffled every
    epoch), its gathered batch (``batch`` x ``n_features``) and its activations three times
    over (forward, the graph kept for backward, the gradient: ``batch`` x ``n_units``, the
    outputs of its layers together). The training data is not in it: one copy serves every
    model of every group."""
    return 16 * n_weights + 8 * n_rows + 4 * batch * (n_features + 3 * n_units)


def proc_kib(path, field):
    """The value of ``field`` (in kB) in a ``/proc`` file such as ``/proc/meminfo``, or None
    where there is no such file or field (not Linux)."""
    with contextlib.suppress(OSError):
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    return None


def _available():
    """Bytes of memory available now (None where the system does not say)."""
    kib = proc_kib("/proc/meminfo", "MemAvailable")
    if kib is not None:
        return kib * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget():
    """The bytes one fused group may take: ``$SKHPO_GROUP_MEMORY`` if set, else
    :data:`MEMORY_SHARE` of the memory available now (None where the system does not say)."""
    if os.environ.get(MEMORY_ENV, "").strip():
        return _env_int(MEMORY_ENV, 0, 1, unit="bytes", hint="")
    available = _available()
    return None if available is None else int(MEMORY_SHARE * available)
