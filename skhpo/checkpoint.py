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
class and settings, the estimator, the space, the data) and the folder's format; a fit whose
digests differ, or a folder of another format, is refused with an error naming what differs,
before any training.

Faults cost at most what they touch. Each file starts with a header and the SHA-256 of its
content, which is JSON and raw arrays (:mod:`skhpo._store`), never a pickle: reading a file
builds containers, numbers, arrays and tensors, and rebuilds a net or an estimator from a
class the user's estimator, space or settings name (or one of skhpo, skorch, torch,
scikit-learn, numpy or scipy outside their code-loading modules) and its parameters and
arrays. A file that is truncated, holds other bytes, fails its checksum or names anything
else (a planted ``os.system``) is reported once by a :class:`CheckpointWarning` naming it,
and its training is redone; the rest of the folder still loads. A write that fails (a full
disk, a read-only or vanished folder) turns checkpointing off for the rest of the fit with
one warning; the search finishes with its results.

Two processes fitting the same search on the same folder at once never corrupt it: each
file appears whole (a rename) and holds a training both would compute alike (the search is
seeded), so the second to finish a training replaces the first's file with the same
result; a fit loads what the folder holds when each of its stages starts, so a process
started later skips what the other has finished. They do not wait for each other: a piece
both reach before either has written it is trained twice (documented, not locked: a lock
would make a process that died holding it stall the other).
"""

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from numbers import Integral

import joblib
import numpy as np
from sklearn.base import clone

from ._store import DamagedFile, dumps, loads, trusted_objects

__all__ = ["Checkpoint", "CheckpointWarning", "DamagedFile", "check_checkpoint", "read_file"]

#: search settings that do not change results (left out of the fingerprint)
_FREE = {"checkpoint", "n_jobs", "pre_dispatch", "verbose"}
#: the folder's format, in its fingerprint.json (1: plain pickles, before checksums; 2:
#: pickles with checksums, read through an allow-list; 3: JSON and arrays, no pickle)
FORMAT = 3
#: the first bytes of every file of a folder of this format, then the content's SHA-256
_MAGIC = b"SKHPO-CHECKPOINT-3\n"
#: the name ending of a training's file
SUFFIX = ".ckpt"


class CheckpointWarning(UserWarning):
    """A checkpoint file could not be used (its training is redone), or checkpointing was
    turned off for the rest of a fit (a write failed)."""


def check_checkpoint(search):
    """The checks of ``checkpoint`` that need no training: a folder path (str or PathLike)
    or None, and an integer ``random_state`` (a resumed search must draw what the first run
    drew)."""
    folder = getattr(search, "checkpoint", None)
    if folder is None:
        return
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be None or a folder path; got {folder!r}")
    path = os.path.abspath(os.fspath(folder))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"checkpoint={os.fspath(folder)!r} is a file, not a folder: name a "
                         "folder (it is created if it does not exist)")
    if not os.path.isdir(os.path.dirname(path)):
        raise ValueError(f"checkpoint={os.fspath(folder)!r}: its parent folder "
                         f"{os.path.dirname(path)!r} does not exist (the checkpoint folder "
                         "itself is created, its parent must be there)")
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
        self.loaded = self.written = 0
        self.enabled = True  # False once a write failed: the rest of the fit writes nothing
        self._unstorable = False  # whether a result could not be stored (warned once)
        self._trusted = trusted_objects(parts.get("estimator"), parts.get("space"),
                                        parts.get("settings"))
        digests = {"format": FORMAT}
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
            if stored.get("format", 1) != FORMAT:
                raise ValueError(
                    f"checkpoint={self.folder!r} was written by another version of skhpo "
                    f"(checkpoint format {stored.get('format', 1)}; this one reads format "
                    f"{FORMAT}: JSON and arrays with checksums, no pickle, nothing that runs "
                    "code): use another folder, or delete this one to start over.")
            differ = [name for name in sorted(set(stored) | set(digests))
                      if stored.get(name) != digests.get(name)]
            if differ:
                raise ValueError(
                    f"checkpoint={self.folder!r} holds the trainings of another search: its "
                    f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''} from this "
                    "fit's. Use another folder (or delete this one to start over).")
        else:
            try:
                os.makedirs(self.folder, exist_ok=True)
            except OSError as exc:
                self._off(exc)
            if self.enabled:
                self._write(path, json.dumps(digests, indent=1).encode(), raw=True)
        # the trainings written together (a fused group) share one file: read them once
        self._index = {}
        for name in self._names():
            if "-group-" in name and name.endswith(SUFFIX):
                group = self._read(os.path.join(self.folder, name))
                if isinstance(group, dict):
                    self._index.update(group)

    @staticmethod
    def key(*parts):
        """The file key of one training (a digest of what identifies it)."""
        return joblib.hash(parts)

    def load(self, stage, key):
        """The stored result of a training, or None (also for a damaged file: its training
        is then redone, with a :class:`CheckpointWarning` naming it)."""
        if (stage, key) in self._index:
            self.loaded += 1
            return self._index[stage, key]
        path = self._path(stage, key)
        if not os.path.exists(path):
            return None
        value = self._read(path)
        if value is not None:
            self.loaded += 1
        return value

    def save(self, stage, key, value):
        """Store a finished training's result (atomically)."""
        data = self._dumps(stage, value)
        if data is not None and self._write(self._path(stage, key), data):
            self.written += 1

    def find(self, stage, prefix):
        """The stored results whose key starts with ``prefix`` (e.g. the fits of one
        candidate, each keyed by its data)."""
        start, out = f"{stage}-{prefix}-", []
        for name in self._names():
            if name.startswith(start) and name.endswith(SUFFIX):
                value = self._read(os.path.join(self.folder, name))
                if value is not None:
                    out.append(value)
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
        name = f"{stage}-group-{joblib.hash(sorted(items))}{SUFFIX}"
        data = self._dumps(stage, group)
        if data is not None and self._write(os.path.join(self.folder, name), data):
            self.written += len(items)

    def _dumps(self, stage, value):
        """``value`` in the file format (:func:`skhpo._store.dumps`), or None, with one
        warning per fit, when it holds something the format cannot store (that training is
        then not kept: a resumed fit redoes it)."""
        try:
            return dumps(value)
        except TypeError as exc:
            if not self._unstorable:
                self._unstorable = True
                warnings.warn(CheckpointWarning(
                    f"checkpoint={self.folder!r}: a {stage!r} result cannot be stored "
                    f"({exc}); such trainings are not kept (a resumed fit redoes them)"),
                    stacklevel=4)
            return None

    def _path(self, stage, key):
        return os.path.join(self.folder, f"{stage}-{key}{SUFFIX}")

    def _names(self):
        try:
            return sorted(os.listdir(self.folder))
        except OSError:  # the folder vanished: nothing to load
            return []

    def _read(self, path):
        """A file's value, or None with a :class:`CheckpointWarning` naming it when it cannot
        be used (its training is then redone)."""
        try:
            return read_file(path, self._trusted)
        except (OSError, DamagedFile) as exc:
            warnings.warn(CheckpointWarning(
                f"checkpoint file {path!r} cannot be used ({exc}); its training is redone"),
                stacklevel=3)
            return None

    def _off(self, exc):
        """Checkpointing off for the rest of the fit, with one warning."""
        if self.enabled:
            self.enabled = False
            warnings.warn(CheckpointWarning(
                f"checkpoint={self.folder!r}: writing failed ({type(exc).__name__}: {exc}); "
                "checkpointing is off for the rest of this fit, which goes on (its results "
                "are not affected; what was written before stays usable)"), stacklevel=4)

    def _write(self, path, data, raw=False):
        """Write ``data`` (with its header and checksum, unless ``raw``) to ``path``
        atomically; False (and checkpointing off) when the write fails."""
        if not self.enabled:
            return False
        if not raw:
            data = _MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:  # no fsync: a killed process loses nothing the
                f.write(data)               # kernel holds; a power cut may (not guarded)
            os.replace(tmp, path)
            return True
        except OSError as exc:  # a full disk, a read-only or vanished folder
            _remove(tmp)
            self._off(exc)
            return False
        except BaseException:  # KeyboardInterrupt included: no half-written file is left
            _remove(tmp)
            raise


def _remove(path):
    """Remove the temporary file ``path`` (None: nothing was made), whatever the disk says."""
    with contextlib.suppress(OSError):
        if path is not None and os.path.exists(path):
            os.remove(path)


def read_file(path, trusted=None):
    """The value stored in one checkpoint file: its header and checksum checked, then read
    by :func:`skhpo._store.loads` (JSON and arrays, no pickle; ``trusted``: the classes and
    functions of the user's estimator, space and settings it may name). A
    :class:`DamagedFile` says why it cannot be used."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise DamagedFile("not a skhpo checkpoint file of this format")
    head, sep, payload = data[len(_MAGIC):].partition(b"\n")
    if not sep or len(head) != 64:
        raise DamagedFile("its header is cut short")
    if hashlib.sha256(payload).hexdigest().encode() != head:
        raise DamagedFile("its content fails its checksum (truncated or altered)")
    return loads(payload, trusted)


def _canonical(obj):
    """``obj`` with every scipy distribution replaced by its name and arguments (a frozen
    distribution pickles its generator's state, which moves as numbers are drawn), also
    inside estimators (a base search's ``param_distributions``), each estimator as its class
    and its canonical parameters."""
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_canonical(v) for v in obj)
    dist = getattr(obj, "dist", None)
    if dist is not None and hasattr(obj, "args") and hasattr(obj, "kwds"):
        return ("distribution", type(dist).__name__, obj.args, obj.kwds)
    if hasattr(obj, "get_params") and not isinstance(obj, type):
        try:
            params = obj.get_params(deep=False)
        except TypeError:
            return obj
        return ("estimator", type(obj), _canonical(params))
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
