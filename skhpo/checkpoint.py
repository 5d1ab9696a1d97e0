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

import io
import json
import os
import pickle
import tempfile
from numbers import Integral

import joblib
import numpy as np
import torch
from sklearn.base import clone
from skorch import NeuralNet

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
                    self._index.update(pickle.load(f))

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
            value = pickle.load(f)
        self.loaded += 1
        return value

    def save(self, stage, key, value):
        """Store a finished training's result (atomically)."""
        self._write(self._path(stage, key),
                    _dumps(value))
        self.written += 1

    def find(self, stage, prefix):
        """The stored results whose key starts with ``prefix`` (e.g. the fits of one
        candidate, each keyed by its data)."""
        start, out = f"{stage}-{prefix}-", []
        for name in sorted(os.listdir(self.folder)):
            if name.startswith(start) and name.endswith(".pkl"):
                with open(os.path.join(self.folder, name), "rb") as f:
                    out.append(pickle.load(f))
                self.loaded += 1
        return out

    def __getstate__(self):  # shipped to workers to write: without what was read
        state = dict(self.__dict__)
        state["_index"] = {}
        return state

    def save_many(self, stage, items):
        """Store the results of trainings that finished together (``{key: value}``), in one
        file written atomically: all of them, or none."""
        if len(items) == 1:
            ((key, value),) = items.items()
            return self.save(stage, key, value)
        group = {(stage, key): value for key, value in items.items()}
        name = f"{stage}-group-{joblib.hash(sorted(items))}.pkl"
        self._write(os.path.join(self.folder, name),
                    _dumps(group))
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


def _tensor(array, device, requires_grad, parameter):
    """Rebuild a tensor :func:`_dumps` stored as a numpy array."""
    tensor = torch.from_numpy(array).to(device)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(True) if requires_grad else tensor


def _net(cls, state):
    """Rebuild a skorch net :func:`_dumps` stored by its attributes."""
    net = cls.__new__(cls)
    net.__dict__.update(state)
    return net


class _Pickler(pickle.Pickler):
    """Tensors as numpy arrays (raw bytes, several times faster to write than ``torch.save``
    per storage, the default for the many small tensors of trained nets), and skorch nets by
    their attributes (so their modules' and optimisers' tensors go the same way). The round
    trip is exact: same values, dtypes, devices, parameters and object identities."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor) and type(obj) in (torch.Tensor, torch.nn.Parameter) \
                and obj.layout == torch.strided and obj.grad_fn is None \
                and obj.dtype not in (torch.bfloat16,) and not obj.is_complex():
            return _tensor, (obj.detach().cpu().numpy(), str(obj.device), obj.requires_grad,
                             type(obj) is torch.nn.Parameter)
        if isinstance(obj, NeuralNet):
            return _net, (type(obj), obj.__dict__)
        return NotImplemented


def _dumps(value):
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


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


def search_parts(search, X, y, groups=None, fit_params=None):
    """What a search's results depend on, for :class:`Checkpoint`'s fingerprint: its class,
    its settings, its estimator, its space (read through its ``_space()`` hook) and the
    data."""
    settings = {k: v for k, v in search.get_params(deep=False).items()
                if k not in _FREE and k not in ("estimator", search._space_param)}
    estimator = getattr(search, "estimator", None)
    return {"class": type(search).__name__, "settings": settings,
            "estimator": clone(estimator) if estimator is not None else None,
            "space": search._space(), "data": (X, y, groups, fit_params or {})}
