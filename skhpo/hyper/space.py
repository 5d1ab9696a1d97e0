"""One search-space vocabulary for every skhpo search.

Every class takes its space in scikit-learn's grammar: a dict (or a list of dicts) mapping
parameter names to a list of values or a ``scipy.stats`` distribution, exactly as
``RandomizedSearchCV`` does. This module reads that grammar once, for all of them:

* **names** (:func:`parse_name`): the estimator's own ``get_params`` keys (``lr``,
  ``optimizer__weight_decay``, ``module__dropout``, ``net__lr`` in a Pipeline) plus skhpo's
  layer names ``l2[i]`` / ``l1[i]`` (the penalty of the i-th linear layer of a skhpo model) and
  ``dropout[path]`` (the dropout layer at ``path`` of ``module_.named_modules()``), and the
  training-data augmentations ``input_noise``, ``cutout_holes``, ``cutout_length``;
* **domains** (:func:`check_domain`): a learning rate is > 0, a dropout rate in [0, 1),
  penalties, decays and augmentations >= 0;
* **discrete spaces** (:func:`check_space`): the searches that sample candidates;
* **continuous dimensions** (:func:`read_dimension`): the methods that move a value
  continuously read its range and scale from the distribution (``loguniform(lo, hi)``: a log
  box, ``uniform(lo, width)``: a linear box) and a start value from a one-value list
  (``[0.1]``); the shorthand ``(low, high)`` / ``(low, high, init)`` tuples give the same;
* **penalties** (:func:`penalty_term`, :func:`penalty_gradient`): the one L2 / L1 / coupled
  weight-decay formula used by the models' training loss, the look-ahead hypergradient and the
  LP hyper local search.

Every error names the parameter, the value and the accepted forms, and is raised before any
training.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch

from .transforms import Box

__all__ = ["AUGMENTATIONS", "Dimension", "ParamName", "check_domain", "check_space",
           "parse_name", "penalty_gradient", "penalty_term", "read_dimension"]

#: hyper-parameters that act on the training inputs rather than on the net
AUGMENTATIONS = ("input_noise", "cutout_holes", "cutout_length")
_LAYER_NAME = re.compile(r"^(l2|l1|dropout)\[(.*)\]$")
#: kind -> (lowest value, whether it is excluded, highest value, whether it is excluded)
_DOMAINS = {
    "lr": (0.0, True, math.inf, True),
    "weight_decay": (0.0, False, math.inf, True),
    "l2": (0.0, False, math.inf, True),
    "l1": (0.0, False, math.inf, True),
    "dropout": (0.0, False, 1.0, True),
    "input_noise": (0.0, False, math.inf, True),
    "cutout_holes": (0.0, False, math.inf, True),
    "cutout_length": (0.0, False, math.inf, True),
}
_LABELS = {"lr": "learning rate", "weight_decay": "weight decay", "l2": "l2 coefficient",
           "l1": "l1 coefficient", "dropout": "dropout rate", "input_noise": "noise scale",
           "cutout_holes": "number of cutout holes", "cutout_length": "cutout length"}
_RANGE_FORMS = ("a range: scipy.stats.loguniform(low, high) (log scale), "
                "scipy.stats.uniform(low, width) (linear scale), or a (low, high) or (low, high, "
                "init) tuple")
_DISTRIBUTION_BOXES = {"uniform": False, "loguniform": True, "reciprocal": True}


# -- names ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamName:
    """A hyper-parameter name, parsed.

    ``name`` is the user's name (with the Pipeline prefix), ``bare`` the name without it,
    ``kind`` how the value enters training (``lr``, ``weight_decay``, ``l2``, ``l1``,
    ``dropout``, ``input_noise``, ``cutout_holes``, ``cutout_length``, or ``other``), ``index``
    the layer of ``l2[i]`` / ``l1[i]`` and ``path`` the layer of ``dropout[path]``.
    """

    name: str
    bare: str
    kind: str
    index: int | None = None
    path: str | None = None

    @property
    def per_layer(self):
        """Whether the name picks one layer (``l2[i]``, ``l1[i]``, ``dropout[path]``)."""
        return self.index is not None or self.path is not None


def parse_name(name, prefix="", where="param_distributions"):
    """Parse ``name`` (``prefix``: the Pipeline prefix of the net, e.g. ``"net__"``)."""
    if not isinstance(name, str):
        raise ValueError(f"{where}: parameter names must be strings; got {name!r}")
    if prefix and not name.startswith(prefix):
        raise ValueError(f"{where}: {name!r} must start with the Pipeline prefix {prefix!r} "
                         f"(the net is the step {prefix[:-2]!r}), e.g. {prefix}lr")
    bare = name[len(prefix):]
    match = _LAYER_NAME.match(bare)
    if match:
        kind, key = match.groups()
        if kind == "dropout":
            if not key:
                raise ValueError(f"{where}: {name!r} names no layer; write dropout[<path>] with "
                                 "a path of module_.named_modules(), e.g. dropout[layers.2]")
            return ParamName(name, bare, kind, path=key)
        if not key.isdigit():
            raise ValueError(f"{where}: {name!r}: the layer of {kind}[i] is an integer index "
                             f"into the net's linear layers, e.g. {kind}[0]")
        return ParamName(name, bare, kind, index=int(key))
    if bare in ("lr", "optimizer__lr"):
        kind = "lr"
    elif bare == "optimizer__weight_decay":
        kind = "weight_decay"
    elif bare in ("l2", "l1"):
        kind = bare
    elif bare in ("dropout", "module__dropout"):
        kind = "dropout"
    elif bare in AUGMENTATIONS:
        kind = bare
    else:
        kind = "other"
    return ParamName(name, bare, kind)


# -- domains -------------------------------------------------------------------------------

def _domain_text(kind):
    lo, lo_open, hi, hi_open = _DOMAINS[kind]
    low = f"{'>' if lo_open else '>='} {lo:g}"
    return low if math.isinf(hi) else f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_domain(where, pname, low, high=None, *, what="value"):
    """Raise a ``ValueError`` if ``[low, high]`` (or the value ``low``) leaves the domain of
    ``pname``'s kind. A box may touch an open end it never reaches (a log box of ``lr`` never
    reaches 0, a box up to ``inf``); values may not, and a dropout box must end below 1."""
    if pname.kind not in _DOMAINS:
        return
    lo, lo_open, hi, hi_open = _DOMAINS[pname.kind]
    high = low if high is None else high
    is_box = what == "box"
    bad_low = low < lo or (lo_open and low == lo and not is_box)
    bad_high = high > hi or (hi_open and high == hi and not (is_box and math.isinf(hi)))
    if bad_low or bad_high:
        shown = f"({low:g}, {high:g})" if is_box else f"{low!r}"
        label = _LABELS.get(pname.kind, pname.kind)
        raise ValueError(f"{where}[{pname.name!r}]: a {label} must be "
                         f"{_domain_text(pname.kind)}; got the {what} {shown}")


def _numbers(value):
    """The numbers in a value (a per-layer list of coefficients counts each), or None if it
    is not numeric."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Real):
        return [float(value)]
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) and all(
            isinstance(v, Real) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return None


# -- discrete spaces (scikit-learn's grammar) ------------------------------------------------

def check_space(space, name="param_distributions", prefix=""):
    """Validate a ``RandomizedSearchCV``-style space; return it as a list of dicts.

    Accepted: a dict (or list of dicts) mapping parameter names to a non-empty list of values
    or to a scipy.stats distribution. Values and ranges of known kinds (learning rates,
    decays, penalties, dropout rates) are checked against their domain.
    """
    dicts = [space] if isinstance(space, Mapping) else space
    if not isinstance(dicts, Sequence) or isinstance(dicts, str) or not dicts:
        raise ValueError(f"{name}: expected a non-empty dict of parameter name -> list or "
                         f"distribution (or a list of such dicts); got {space!r}")
    for d in dicts:
        if not isinstance(d, Mapping) or not d:
            raise ValueError(f"{name}: every entry must be a non-empty dict of parameter name "
                             f"-> list or distribution; got {d!r} (an empty space has nothing "
                             "to search)")
        for key, values in d.items():
            own = prefix if prefix and isinstance(key, str) and key.startswith(prefix) else ""
            pname = parse_name(key, own, where=name)
            if hasattr(values, "rvs"):
                low, high = _support(name, key, values)
                check_domain(name, pname, low, high, what="range")
            elif isinstance(values, str) or not isinstance(values, (Sequence, np.ndarray)):
                raise ValueError(f"{name}[{key!r}]: expected a non-empty list of values or a "
                                 f"scipy.stats distribution; got {values!r}")
            elif len(values) == 0:
                raise ValueError(f"{name}[{key!r}]: the list of values is empty")
            else:
                for v in values:
                    for number in _numbers(v) or ():
                        check_domain(name, pname, number)
    return list(dicts)


def _support(where, key, dist):
    """``(low, high)`` of a distribution; a clear error for an empty or inverted one."""
    support = getattr(dist, "support", None)
    if support is None:
        return -math.inf, math.inf
    try:
        low, high = (float(v) for v in support())
    except (TypeError, ValueError):
        return -math.inf, math.inf
    if not (low < high) or math.isnan(low) or math.isnan(high):
        raise ValueError(f"{where}[{key!r}]: the distribution's range is empty or inverted "
                         f"(or zero-width) (its arguments {getattr(dist, 'args', ())}); give "
                         "low < high")
    return low, high


# -- continuous dimensions -----------------------------------------------------------------

@dataclass(frozen=True)
class Dimension:
    """A continuously tuned hyper-parameter: its parsed name, its box (or None when only a
    start value was given) and its start value (or None)."""

    name: ParamName
    box: Box | None
    init: float | None = None


def _distribution_box(where, name, dist):
    kind = getattr(getattr(dist, "dist", None), "name", "")
    if kind not in _DISTRIBUTION_BOXES:
        raise ValueError(f"{where}[{name!r}]: a continuous method moves this value in a "
                         f"range, which only uniform and loguniform distributions define; got "
                         f"{kind or type(dist).__name__}. Accepted: {_RANGE_FORMS}")
    lo, hi = _support(where, name, dist)
    return _box(where, name, lo, hi, _DISTRIBUTION_BOXES[kind])


def _tuple_box(where, name, spec):
    try:
        lo, hi = float(spec[0]), float(spec[1])
    except (TypeError, ValueError):
        raise ValueError(f"{where}[{name!r}]: bounds must be numbers; got {spec!r}") from None
    return _box(where, name, lo, hi, False)


def _box(where, name, lo, hi, log):
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or not lo < hi:
        raise ValueError(f"{where}[{name!r}]: the box ({lo}, {hi}) is empty or inverted (or "
                         "zero-width); low must be finite and < high")
    if log and lo <= 0:
        raise ValueError(f"{where}[{name!r}]: a log box needs low > 0; got {lo}")
    return Box(lo, hi, log or math.isinf(hi))


def read_dimension(where, pname, spec):
    """Read one entry of a continuous method's space as a :class:`Dimension`.

    Accepted: a ``uniform`` / ``loguniform`` distribution (the box and its scale), a
    ``(low, high)`` or ``(low, high, init)`` tuple (a linear box, ``high=inf`` a log one), and
    a one-value list ``[init]`` or a number (a start value only). Anything else, a range or a
    start outside the kind's domain, or a start outside the box, is a ``ValueError`` naming
    ``where[name]`` and the accepted forms.
    """
    name = pname.name
    box, init = None, None
    if hasattr(spec, "rvs"):
        box = _distribution_box(where, name, spec)
    elif isinstance(spec, tuple) and len(spec) in (2, 3):
        box = _tuple_box(where, name, spec[:2])
        init = _start(where, name, spec[2]) if len(spec) == 3 else None
    elif isinstance(spec, (list, np.ndarray)) and len(spec) == 0:
        raise ValueError(f"{where}[{name!r}]: the list of values is empty")
    elif isinstance(spec, (list, np.ndarray)) and len(spec) == 1:
        init = _start(where, name, spec[0])
    elif isinstance(spec, Real) and not isinstance(spec, bool):
        init = _start(where, name, spec)
    elif isinstance(spec, (list, np.ndarray)):
        raise ValueError(f"{where}[{name!r}]: a list of {len(spec)} values is a grid, but this "
                         "method moves the value continuously; give its range ("
                         f"{_RANGE_FORMS}) or one start value [value]")
    else:
        raise ValueError(f"{where}[{name!r}]: expected {_RANGE_FORMS}, or a one-value list "
                         f"[start]; got {spec!r}")
    if box is not None:
        check_domain(where, pname, box.lo, box.hi, what="box")
    if init is not None:
        check_domain(where, pname, init, what="start value")
        if box is not None and not box.lo <= init <= box.hi:
            raise ValueError(f"{where}[{name!r}]: the start value {init} is outside the box "
                             f"({box.lo}, {box.hi})")
    return Dimension(pname, box, init)


def _start(where, name, value):
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{where}[{name!r}]: a start value must be a finite number; got "
                         f"{value!r}")
    return float(value)


# -- penalties -----------------------------------------------------------------------------

def penalty_term(kind, weights):
    """R(w) over the tensors ``weights``: ``l2`` sum w^2, ``l1`` sum |w|, ``weight_decay``
    (coupled, as SGD/Adam add ``wd * w`` to the gradient) 1/2 sum w^2."""
    if kind == "l2":
        return sum(w.pow(2).sum() for w in weights)
    if kind == "l1":
        return sum(w.abs().sum() for w in weights)
    if kind == "weight_decay":
        return 0.5 * sum(w.pow(2).sum() for w in weights)
    raise ValueError(f"{kind!r} is not a penalty (l2, l1, weight_decay)")


def penalty_gradient(kind, w):
    """dR/dw of :func:`penalty_term` for one tensor ``w`` (l1: the subgradient sign(w))."""
    if kind == "l2":
        return 2 * w
    if kind == "l1":
        return torch.sign(w)
    if kind == "weight_decay":
        return w
    raise ValueError(f"{kind!r} is not a penalty (l2, l1, weight_decay)")
