"""Checkpoints: every finished training of a search on disk, so that an interrupted search
resumes where it stopped.

A search given ``checkpoint=<folder>`` writes each training as it finishes (its parameters,
seed and rows in the key; its result — the method's readings, the trained fold's weights,
optimiser state and history, its error — in the file), each file atomically: written to a
temporary name in the folder, then renamed, so a search killed at any moment leaves only
whole files. Calling ``fit`` again with the same search, estimator, space and data and the
same folder loads every training it finds and trains only the others; as the search is
seeded (``random_state`` must be an int), it then draws the same candidates, the same seeds
and the same folds, and its results are those of an uninterrupted run. Files are not synced
to the disk one by one: a killed process (Ctrl-C, ``kill -9``, an out-of-memory worker) loses
nothing the kernel already holds, but a power cut may lose the last files.

The folder's ``fingerprint.json`` records digests of what the results depend on (the search's
class and settings, the estimator, the space, the data); a fit whose digests differ is
refused with an error naming what differs, before any training.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections import OrderedDict
from numbers import Integral

import joblib
import numpy as np
import torch

__all__ = ["Checkpoint", "check_checkpoint"]

#: search settings that do not change results (left out of the fingerprint)
_FREE = {"checkpoint", "n_jobs", "pre_dispatch", "verbose"}


def check_checkpoint(search):
    """The checks of ``checkpoint`` that need no training: a folder path (str or PathLike)
    or None, and an integer ``random_state`` (a resumed search must draw what the first run
    drew)."""
    folder = getattr(search, "checkpoint", None)
    if folder is None:
        return
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be None or a folder path; got {folder!r}")
    random_state = getattr(search, "random_state", None)
    if isinstance(random_state, bool) or not isinstance(random_state, (Integral, np.integer)):
        raise ValueError(f"checkpoint={str(folder)!r} needs random_state set to an int, so "
                         "that a resumed search draws the same candidates, seeds and folds as "
                         f"the first run; got random_state={random_state!r}")


class Checkpoint:
    """The trainings of one search in ``folder``.

    ``parts`` maps each thing the results depend on (e.g. ``"estimator"``, ``"space"``,
    ``"data"``, ``"settings"``) to an object; their digests are the folder's fingerprint.
    ``loaded`` and ``written`` count the trainings read and written in this fit.
    """

    def __init__(self, folder, parts):
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        digests = {}
        for name, value in parts.items():
            try:
                digests[name] = joblib.hash(_canonical(value))
            except Exception as exc:  # e.g. a class defined inside a function
                raise ValueError(f"checkpoint: the {name} cannot be fingerprinted (it must "
                                 f"pickle): {type(exc).__name__}: {exc}") from exc
        path = os.path.join(self.folder, "fingerprint.json")
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            differ = [name for name in sorted(set(stored) | set(digests))
                      if stored.get(name) != digests.get(name)]
            if differ:
                raise ValueError(
                    f"checkpoint={self.folder!r} holds the trainings of another search: its "
                    f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''} from this "
                    "fit's. Use another folder (or delete this one to start over).")
        else:
            self._write(path, json.dumps(digests, indent=1).encode())
        self.loaded = self.written = 0
        # the trainings written together (a fused group) share one file: read them once
        self._index = {}
        for name in sorted(os.listdir(self.folder)):
            if "-group-" in name and name.endswith(".pkl"):
                with open(os.path.join(self.folder, name), "rb") as f:
                    self._index.update(_unpack(pickle.load(f)))

    @staticmethod
    def key(*parts):
        """The file key of one training (a digest of what identifies it)."""
        return joblib.hash(parts)

    def load(self, stage, key):
        """The stored result of a training, or None."""
        if (stage, key) in self._index:
            self.loaded += 1
            return self._index[stage, key]
        path = self._path(stage, key)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            value = _unpack(pickle.load(f))
        self.loaded += 1
        return value

    def save(self, stage, key, value):
        """Store a finished training's result (atomically)."""
        self._write(self._path(stage, key),
                    pickle.dumps(_pack(value), protocol=pickle.HIGHEST_PROTOCOL))
        self.written += 1

    def save_many(self, stage, items):
        """Store the results of trainings that finished together (``{key: value}``), in one
        file written atomically: all of them, or none."""
        if len(items) == 1:
            ((key, value),) = items.items()
            return self.save(stage, key, value)
        group = {(stage, key): value for key, value in items.items()}
        name = f"{stage}-group-{joblib.hash(sorted(items))}.pkl"
        self._write(os.path.join(self.folder, name),
                    pickle.dumps(_pack(group), protocol=pickle.HIGHEST_PROTOCOL))
        self.written += len(items)

    def _path(self, stage, key):
        return os.path.join(self.folder, f"{stage}-{key}.pkl")

    def _write(self, path, data):
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:  # no fsync: a killed process loses nothing the
                f.write(data)               # kernel holds; a power cut may (not guarded)
            os.replace(tmp, path)
        except BaseException:  # KeyboardInterrupt included: no half-written file is left
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


class _Array:
    """A tensor kept as a numpy array in a checkpoint file: numpy arrays pickle as raw bytes,
    tensors through ``torch.save`` once per storage (several times slower for the many small
    tensors of a trained fold). Restored to the same dtype, device and values, bit for bit."""

    def __init__(self, tensor):
        self.array = tensor.detach().cpu().numpy()
        self.device = str(tensor.device)
        self.requires_grad = tensor.requires_grad

    def restore(self):
        tensor = torch.from_numpy(self.array).to(self.device)
        return tensor.requires_grad_(self.requires_grad) if self.requires_grad else tensor


def _pack(obj):
    """``obj`` with every plain tensor in its dicts, lists and tuples as an :class:`_Array`
    (a dtype numpy lacks, e.g. bfloat16, stays a tensor)."""
    if type(obj) is torch.Tensor and obj.dtype not in (torch.bfloat16,) and \
            not obj.is_complex() and obj.layout == torch.strided:
        return _Array(obj)
    if type(obj) in (dict, OrderedDict):  # state dicts are OrderedDicts
        return type(obj)((k, _pack(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_pack(v) for v in obj)
    return obj


def _unpack(obj):
    if isinstance(obj, _Array):
        return obj.restore()
    if type(obj) in (dict, OrderedDict):
        return type(obj)((k, _unpack(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_unpack(v) for v in obj)
    return obj


def _canonical(obj):
    """``obj`` with every scipy distribution replaced by its name and arguments (a frozen
    distribution pickles its generator's state, which moves as numbers are drawn)."""
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_canonical(v) for v in obj)
    dist = getattr(obj, "dist", None)
    if dist is not None and hasattr(obj, "args") and hasattr(obj, "kwds"):
        return ("distribution", type(dist).__name__, obj.args, obj.kwds)
    return obj


def search_parts(search, space, X, y, groups=None, fit_params=None):
    """What a search's results depend on, for :class:`Checkpoint`'s fingerprint."""
    from sklearn.base import clone

    settings = {k: v for k, v in search.get_params(deep=False).items()
                if k not in _FREE and k not in ("estimator", "search")}
    for name in ("param_distributions", "param_grid", "params", "param_bounds", "hyperparams",
                 "continuous"):
        settings.pop(name, None)
    estimator = getattr(search, "estimator", None)
    return {"class": type(search).__name__, "settings": settings,
            "estimator": clone(estimator) if estimator is not None else None,
            "space": space, "data": (X, y, groups, fit_params or {})}
