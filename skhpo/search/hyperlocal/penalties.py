"""The hyper-parameters the LP hyper local search refines: penalty coefficients that enter the
training objective smoothly (``l2`` / ``l1`` of skhpo's models, coupled
``optimizer__weight_decay``; ``alpha`` / ``l1_ratio`` of scikit-learn's linear models).

* :func:`check_names` — names that can never be refined are refused before any training;
* :func:`read_penalties` — the coefficients of a fitted net as :class:`Penalty` terms (one per
  layer for a per-layer coefficient), each with the range that bounds its refined value;
* :func:`space_ranges` — the ranges a search's space declares (a distribution or a
  ``(low, high)`` range bounds a value; a list of values, e.g. a grid, does not);
* :func:`value`, :func:`set_value`, :func:`regroup` — a coefficient read from and written to
  the net, and the refined values under the estimator's own names.
"""

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ...hyper.space import (
    check_space,
    parse_name,
    penalty_gradient,
    penalty_term,
    read_dimension,
)
from ...hyper.transforms import Box
from ...nets import find_net
from .curvature import trainable
from .linear import find_linear, penalty_names

__all__ = ["PENALTY_NAMES", "Penalty", "check_names", "clip", "penalties_of",
           "read_penalties", "regroup", "requested", "set_value", "space_ranges", "value"]

#: hyper-parameters that cannot be refined, and why
_NOT_PENALTIES = {
    "lr": "the learning rate does not enter the training objective",
    "batch_size": "the batch size does not enter the training objective",
    "max_epochs": "the number of epochs does not enter the training objective",
    "dropout": "dropout has no deterministic training objective to differentiate",
}
_DECOUPLED = ("AdamW",)
#: the penalties of a net, by their bare names
PENALTY_NAMES = ("l2", "l1", "optimizer__weight_decay")


class Penalty(NamedTuple):
    """One continuous hyper-parameter of a net.

    Attributes
    ----------
    name : str
        Its name (``l2[k]`` for layer k of a per-layer coefficient).
    attr : str
        The net's parameter that holds it.
    index : int or None
        Its place in a per-layer sequence, or None.
    kind : {"l2", "l1", "weight_decay"}
        The term R it scales.
    params : list of str
        The weights its term touches.
    box : Box or None
        The range its refined value stays in (None: its domain, >= 0).
    """

    name: str
    attr: str
    index: int | None
    kind: str
    params: list
    box: object = None

    def term(self, weights):
        """R_j(w) on ``{param name: tensor}``."""
        return penalty_term(self.kind, [weights[p] for p in self.params])

    def column(self, weights):
        """dR_j/dw as ``{param name: tensor}`` (the H_wλ column, up to flattening)."""
        return {p: penalty_gradient(self.kind, weights[p]) for p in self.params}


# -- names and ranges ----------------------------------------------------------------------

def requested(param_bounds, prefix):
    """``param_bounds`` read by the shared vocabulary: ``{name: Box or None}`` (a distribution
    or a ``(low, high)`` tuple bounds the refined value; a list of values does not), or None
    when it is None."""
    if param_bounds is None:
        return None
    if not isinstance(param_bounds, Mapping):
        return dict.fromkeys(param_bounds)
    out = {}
    for name, spec in param_bounds.items():
        own = prefix if isinstance(name, str) and name.startswith(prefix) else ""
        pname = parse_name(name, own, "param_bounds")
        if hasattr(spec, "rvs") or isinstance(spec, tuple):
            out[name] = read_dimension("param_bounds", pname, spec).box
        else:
            check_space({name: spec}, "param_bounds", prefix=own)
            out[name] = None
    return out


def space_ranges(space):
    """``{name: Box}``: the range each name of a search's ``space`` (a dict or a list of
    dicts, as scikit-learn's searches take it) spans, for the names whose every entry is a
    range: a distribution with finite support, a ``(low, high[, start])`` tuple, or an object
    with ``low`` and ``high`` (Optuna's distributions). Across several dicts, the hull."""
    dicts = [space] if isinstance(space, Mapping) else list(space or ())
    spans = {}
    for d in dicts:
        if not isinstance(d, Mapping):
            continue
        for name, spec in d.items():
            span = _span(spec)
            if name in spans and (span is None or spans[name] is None):
                spans[name] = None
            elif name in spans:
                spans[name] = (min(spans[name][0], span[0]), max(spans[name][1], span[1]))
            else:
                spans[name] = span
    return {name: Box(*span) for name, span in spans.items()
            if span is not None and span[0] < span[1]}


def _span(spec):
    """``(low, high)`` of one space entry when it is a range, else None."""
    if hasattr(spec, "rvs") and hasattr(spec, "support"):
        low, high = (float(v) for v in spec.support())
    elif isinstance(spec, tuple) and len(spec) in (2, 3):
        low, high = float(spec[0]), float(spec[1])
    elif hasattr(spec, "low") and hasattr(spec, "high"):
        low, high = float(spec.low), float(spec.high)
    else:
        return None
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def check_names(estimator, param_bounds, declared):
    """Refuse, before anything trains, names that can never be refined (``estimator``: the
    search or estimator to refine, ``declared``: the names its search tunes, or None)."""
    est = getattr(estimator, "estimator", estimator)
    linear = find_linear(est)
    if linear is not None:
        model, prefix = linear
        allowed = [prefix + n for n in penalty_names(model)]
        asked = requested(param_bounds, prefix)
        bad = [n for n in (asked or []) if n not in allowed]
        if bad or asked == {}:
            raise ValueError(f"{type(model).__name__}: param_bounds may name {allowed} (its "
                             f"penalties); got {param_bounds}")
        return
    net, prefix = find_net(est)
    asked = requested(param_bounds, prefix)
    if asked is None:
        if declared is not None:
            check_some_penalty([k for k in declared if _bare(k, prefix) in PENALTY_NAMES],
                               "tunes")
        return
    check_some_penalty(list(asked), None)
    for name in asked:
        check_name(net, prefix, name)


def check_some_penalty(names, verb):
    """The one message for "nothing to refine" (``verb``: how the base search was asked)."""
    if names:
        return
    if verb is None:
        raise ValueError("param_bounds is empty: name at least one penalty")
    raise ValueError(f"param_bounds=None, but the base search {verb} no penalty (l2, l1, "
                     "optimizer__weight_decay); name the penalties to refine, e.g. "
                     "param_bounds=['l2']")


def check_name(net, prefix, name):
    """Refuse ``name`` unless it is a penalty of ``net``'s training objective."""
    pname = parse_name(name, prefix if name.startswith(prefix) else "", "param_bounds")
    bare, last = pname.bare, pname.bare.rsplit("__", 1)[-1]
    if pname.kind in ("l2", "l1") and not pname.per_layer:
        if not hasattr(net, "penalized_layers"):
            raise ValueError(f"{name!r}: only skhpo's models have l2/l1 penalties in "
                             "their training loss; use optimizer__weight_decay")
    elif pname.kind == "weight_decay":
        optimizer = getattr(net, "optimizer", None)
        if getattr(optimizer, "__name__", "") in _DECOUPLED:
            raise ValueError(f"{name!r}: {optimizer.__name__} decouples weight decay "
                             "from the gradient, so it is not an L2 term of the "
                             "training objective; use Adam or SGD, or l2")
    elif last in _NOT_PENALTIES or bare.startswith("module__"):
        why = _NOT_PENALTIES.get(last, "architecture parameters are discrete")
        raise ValueError(f"{name!r} cannot be refined: {why}. HyperLocalRefiner moves "
                         "only penalty coefficients that enter the training objective "
                         "smoothly (l2, l1, optimizer__weight_decay); leave the others "
                         "to the base search")
    else:
        raise ValueError(f"{name!r} is not a penalty HyperLocalRefiner knows; accepted: "
                         "l2, l1 (skhpo models), optimizer__weight_decay")


def _bare(name, prefix):
    """``name`` without the Pipeline prefix (when it has it)."""
    return parse_name(name, prefix if name.startswith(prefix) else "", "param_bounds").bare


# -- a fitted net's penalties -------------------------------------------------------------------

def read_penalties(net, prefix, asked, ranges):
    """The penalties ``asked`` (``{name: Box or None}``) of the fitted ``net`` as
    :class:`Penalty` terms, one per layer for a per-layer coefficient; each is bounded by its
    own box, else by the range its search declared (``ranges``: :func:`space_ranges`)."""
    check_some_penalty(list(asked), None)
    weights = dict(trainable(net.module_))
    by_id = {id(p): n for n, p in weights.items()}
    out = []
    for name, box in asked.items():
        check_name(net, prefix, name)
        box = box if box is not None else ranges.get(name)
        bare = _bare(name, prefix)
        if bare == "optimizer__weight_decay":
            out.append(Penalty(name, bare, None, "weight_decay", list(weights), box))
            continue
        layer_params = [by_id[id(layer.weight)] for layer in net.penalized_layers()
                        if id(layer.weight) in by_id]
        if np.ndim(getattr(net, bare)) == 0:
            out.append(Penalty(name, bare, None, bare, layer_params, box))
        else:
            out += [Penalty(f"{name}[{k}]", bare, k, bare, [p], box)
                    for k, p in enumerate(layer_params)]
    return out


def penalties_of(base_params, prefix):
    """``{name: None}`` of the penalties among a base search's ``best_params_`` (an error
    when there is none)."""
    names = [k for k in base_params if _bare(k, prefix) in PENALTY_NAMES]
    check_some_penalty(names, "tuned")
    return dict.fromkeys(names)


def value(net, penalty):
    """The coefficient's current value in ``net``."""
    v = getattr(net, penalty.attr) if penalty.attr != "optimizer__weight_decay" else \
        net.get_params().get("optimizer__weight_decay", 0.0)
    return v if penalty.index is None else list(v)[penalty.index]


def set_value(net, penalty, v):
    """Set the coefficient in ``net`` to ``v``."""
    if penalty.index is None:
        net.set_params(**{penalty.attr: float(v)})
    else:
        values = list(getattr(net, penalty.attr))
        values[penalty.index] = float(v)
        net.set_params(**{penalty.attr: values})


def regroup(penalties, lam, prefix):
    """The refined values ``lam`` under the estimator's own parameter names (per-layer ones
    as a list again)."""
    out = {}
    for p, v in zip(penalties, lam):
        key = prefix + p.attr
        if p.index is None:
            out[key] = float(v)
        else:
            out.setdefault(key, [])
            out[key].append(float(v))
    return out


def clip(penalties, lam):
    """``lam`` inside each penalty's box (and >= 0, the domain of every penalty)."""
    lam = np.maximum(lam, 0.0)
    return np.array([v if p.box is None else min(max(v, p.box.lo), p.box.hi)
                     for p, v in zip(penalties, lam)])
