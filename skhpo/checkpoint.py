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
content: a file that is truncated, holds other bytes, fails its checksum or asks to build
anything outside an allow-list of classes (:class:`_Unpickler`: a planted pickle's
``os.system``, ``eval``, ``exec`` ... is never called) is reported once by a
:class:`CheckpointWarning` naming it, and its training is redone; the rest of the folder
still loads. A write that fails (a full disk, a read-only or vanished folder) turns
checkpointing off for the rest of the fit with one warning; the search finishes with its
results.
"""

import contextlib
import hashlib
import io
import json
import os
import pickle
import tempfile
import warnings
from numbers import Integral

import joblib
import numpy as np
import torch
from sklearn.base import clone
from skorch import NeuralNet

__all__ = ["Checkpoint", "CheckpointWarning", "DamagedFile", "check_checkpoint", "read_file"]

#: search settings that do not change results (left out of the fingerprint)
_FREE = {"checkpoint", "n_jobs", "pre_dispatch", "verbose"}
#: the folder's format, in its fingerprint.json (1: plain pickles, before checksums)
FORMAT = 2
#: the first bytes of every file of a folder of this format, then the content's SHA-256
_MAGIC = b"SKHPO-CHECKPOINT-2\n"


class CheckpointWarning(UserWarning):
    """A checkpoint file could not be used (its training is redone), or checkpointing was
    turned off for the rest of a fit (a write failed)."""


class DamagedFile(ValueError):
    """A checkpoint file that cannot be used: why, and which file."""


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
        self._trusted = _trusted_objects(parts.get("estimator"))
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
                    f"{FORMAT}, files with checksums that cannot run code): use another "
                    "folder, or delete this one to start over.")
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
            if "-group-" in name and name.endswith(".pkl"):
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
        if self._write(self._path(stage, key), _dumps(value)):
            self.written += 1

    def find(self, stage, prefix):
        """The stored results whose key starts with ``prefix`` (e.g. the fits of one
        candidate, each keyed by its data)."""
        start, out = f"{stage}-{prefix}-", []
        for name in self._names():
            if name.startswith(start) and name.endswith(".pkl"):
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
        name = f"{stage}-group-{joblib.hash(sorted(items))}.pkl"
        if self._write(os.path.join(self.folder, name), _dumps(group)):
            self.written += len(items)

    def _path(self, stage, key):
        return os.path.join(self.folder, f"{stage}-{key}.pkl")

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


def read_file(path, trusted=()):
    """The value stored in one checkpoint file: its header and checksum checked, then
    unpickled through :class:`_Unpickler` (``trusted``: ids of the callables of the user's
    estimator it may also name). A :class:`DamagedFile` says why it cannot be used."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise DamagedFile("not a skhpo checkpoint file of this format")
    head, sep, payload = data[len(_MAGIC):].partition(b"\n")
    if not sep or len(head) != 64:
        raise DamagedFile("its header is cut short")
    if hashlib.sha256(payload).hexdigest().encode() != head:
        raise DamagedFile("its content fails its checksum (truncated or altered)")
    try:
        return _Unpickler(io.BytesIO(payload), trusted).load()
    except DamagedFile:
        raise
    except Exception as exc:
        raise DamagedFile(f"it cannot be read: {type(exc).__name__}: {exc}") from None


#: builtins a stored value may name: containers, numbers and print, nothing that runs code
_SAFE_BUILTINS = {"set", "frozenset", "slice", "range", "complex", "bytearray", "bytes",
                  "tuple", "list", "dict", "int", "float", "bool", "str", "object",
                  "print"}  # (skorch's PrintLog writes with print)
#: functions a stored value may name to rebuild itself
_RECONSTRUCTORS = {
    ("skhpo.checkpoint", "_tensor"), ("skhpo.checkpoint", "_net"),
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.ma.core", "_mareconstruct"), ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("collections", "OrderedDict"),
    ("functools", "partial")}
#: modules whose functions a stored value may name (scorers, skorch's parameter setters)
_FUNCTION_MODULES = ("sklearn.metrics", "skorch.setter")
#: packages whose classes a stored value may name (the objects of fitted nets and searches)
_CLASS_ROOTS = {"skhpo", "skorch", "torch", "sklearn", "numpy", "scipy", "collections"}
#: ... except these, whose construction can load or run code
_DENIED = ("torch.package", "torch.hub", "torch.utils.cpp_extension", "torch.jit",
           "torch._dynamo", "torch.multiprocessing", "torch.distributed", "torch.serialization",
           "numpy.f2py", "numpy.distutils", "skhpo.bench", "skhpo.cli", "skhpo.plotting")


class _Unpickler(pickle.Unpickler):
    """Unpickles only what a checkpoint holds: containers and numbers, arrays and tensors
    (through :func:`_tensor`), skorch nets (through :func:`_net`), the classes of skhpo,
    skorch, torch, scikit-learn, numpy and scipy (not those that load code), the functions
    of ``sklearn.metrics`` and ``skorch.setter``, and the classes and callables of the user's own
    estimator. Anything else — ``os.system``, ``builtins.eval``, ``subprocess.Popen`` — makes
    the file a :class:`DamagedFile` naming it, before it is called."""

    def __init__(self, file, trusted=()):
        super().__init__(file)
        self.trusted = trusted

    def find_class(self, module, name):
        if (module, name) in _RECONSTRUCTORS or (module == "builtins"
                                                  and name in _SAFE_BUILTINS):
            return super().find_class(module, name)
        root = module.split(".")[0]
        denied = any(module == d or module.startswith(d + ".") for d in _DENIED)
        if not denied and (root in _CLASS_ROOTS or (module, name) in self.trusted):
            obj = super().find_class(module, name)
            if isinstance(obj, type) or (module, name) in self.trusted or (
                    module.startswith(_FUNCTION_MODULES) and callable(obj)) or isinstance(
                    obj, (torch.dtype, torch.layout, torch.memory_format)):
                return obj
        raise DamagedFile(f"it asks for {module}.{name}, which a checkpoint never holds "
                          "(a planted file?); nothing of it was run")


def _trusted_objects(estimator):
    """``(module, qualname)`` of the classes and functions the user's estimator names (its
    net's module class, callbacks, criterion, optimiser, a custom split function...): a
    stored net may name them."""
    out = set()
    if estimator is None:
        return out
    for value in [estimator, *estimator.get_params(deep=True).values()]:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, tuple) and len(item) == 2:  # callbacks: (name, callback)
                item = item[1]
            for obj in (item, type(item)):  # a class or function itself, and its type
                module = getattr(obj, "__module__", None)
                qualname = getattr(obj, "__qualname__", None)  # (an instance has none)
                if module and qualname and module != "builtins":
                    out.add((module, qualname))
    return out


def _tensor(array, device, requires_grad, parameter):
    """Rebuild a tensor :func:`_dumps` stored as a numpy array."""
    tensor = torch.from_numpy(array).to(device)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(True) if requires_grad else tensor


def _net(cls, state):
    """Rebuild a skorch net :func:`_dumps` stored by its attributes."""
    if not (isinstance(cls, type) and issubclass(cls, NeuralNet)) or not isinstance(state, dict):
        raise DamagedFile("it holds a net that is not a skorch net")
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
