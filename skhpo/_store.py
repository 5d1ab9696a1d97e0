"""What a checkpoint file holds: JSON and raw arrays, nothing that runs code when read.

A value (a training's result: numbers, strings, containers, arrays and tensors, a trained
net's state, a fitted search) is written as one JSON document and one blob of array bytes
(:func:`dumps`). The document mirrors the value; what JSON has no word for is a one-key
object: ``{"$a": i}`` the i-th array (its dtype, shape and place in the blob are listed in
the document; only numeric and boolean dtypes), ``{"$T": i, ...}`` a tensor (its dtype,
device, ``requires_grad``), ``{"$t": [...]}`` a tuple, ``{"$d": [[key, value], ...]}`` a
dict whose keys are not all strings, ``{"$ref": "module:name"}`` a class or function,
``{"$net": ...}`` a skorch net, ``{"$est": ...}`` an estimator or any other object, by its
parameters and attributes.

Reading (:func:`loads`) builds nothing but containers, numbers, strings, arrays and
tensors, except where the document names a class or function (``$ref``, ``$net``,
``$est``): that name must be one of the ``trusted`` objects (those of the estimator, space
and settings the user gave the search, found by name, not imported) or live in skhpo, skorch,
torch, scikit-learn, numpy or scipy outside the modules that load or run code
(:data:`DENIED`); anything else is a :class:`DamagedFile` naming it, before anything is
built. A net is rebuilt from its class and parameters (``initialize``), then given its
weights, optimiser state and history; an estimator from its class and parameters, then its
fitted attributes. No pickle is involved at any point.
"""

import collections
import contextlib
import dataclasses
import functools
import importlib
import json
import random
import struct
import types

import numpy as np
import torch
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.model_selection import BaseCrossValidator
from skorch import NeuralNet, callbacks
from skorch.dataset import Dataset, ValidSplit
from skorch.history import History

from .nets import load_net_state, net_state

__all__ = ["DENIED", "DamagedFile", "dumps", "loads", "trusted_objects"]

#: packages whose classes and functions a file may name ...
ROOTS = {"skhpo", "skorch", "torch", "sklearn", "numpy", "scipy", "collections", "builtins"}
#: ... except these modules, whose objects load or run code
DENIED = ("torch.package", "torch.hub", "torch.utils.cpp_extension", "torch.jit",
          "torch._dynamo", "torch.multiprocessing", "torch.distributed", "torch.serialization",
          "torch.utils.data.datapipes", "numpy.f2py", "numpy.distutils", "numpy.testing",
          "skhpo.bench", "skhpo.cli", "skhpo.plotting", "sklearn.utils._testing")
#: builtins a file may name (types of values, nothing that runs code)
_BUILTINS = {"int", "float", "bool", "str", "list", "tuple", "dict", "set", "frozenset",
             "slice", "range", "complex", "bytes", "object", "type", "print"}
#: array dtypes a file may hold (no objects, no raw void records)
_DTYPE_KINDS = set("biufc?")


class DamagedFile(ValueError):
    """A checkpoint file that cannot be used: why, and which file."""


def trusted_objects(*roots):
    """``{"module:qualname": object}`` of the classes and functions named by ``roots``
    (estimators, through their ``get_params(deep=True)``; spaces and settings, through their
    values; callbacks ``(name, callback)``), and the types of the objects found there."""
    out, seen, todo = {}, set(), list(roots)
    while todo:
        value = todo.pop()
        if id(value) in seen or value is None or isinstance(value, (str, int, float, bool)):
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            todo += list(value.values())
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            todo += list(value)
            continue
        if hasattr(value, "get_params") and not isinstance(value, type):
            try:
                todo += list(value.get_params(deep=True).values())
            except TypeError:
                todo += list(value.get_params().values())
        for obj in (value, type(value)):
            name = _name(obj)
            if name is not None and obj.__module__ != "builtins":
                out[name] = obj
    return out


def _name(obj):
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)) or "<" in qualname:
        return None
    return f"{module}:{qualname}"


# -- writing ---------------------------------------------------------------------------------

def dumps(value):
    """``value`` as bytes: the length of the JSON document, the document, the arrays' bytes.
    A ``TypeError`` names what cannot be written."""
    arrays = []
    doc = _Writer(arrays).encode(value)
    index, offset, blobs = [], 0, []
    for a in arrays:
        data = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (keeps 0-d arrays)
        index.append([data.dtype.str, list(a.shape), offset, data.nbytes])
        blobs.append(data.reshape(-1).view(np.uint8).data if data.nbytes else b"")
        offset += data.nbytes
    head = json.dumps({"doc": doc, "arrays": index}, separators=(",", ":")).encode()
    return b"".join([struct.pack("<Q", len(head)), head, *blobs])


class _Writer:
    def __init__(self, arrays):
        self.arrays = arrays
        self.tensors, self.kept = {}, []  # a tensor met twice is stored once ($same)

    def _array(self, a):
        self.arrays.append(a)
        return len(self.arrays) - 1

    def encode(self, v):  # noqa: C901 (one branch per kind of value)
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)) and type(v) in (int, float):
            return v
        if isinstance(v, np.generic):
            return {"$np": [v.dtype.str, self.encode(v.item())]}
        if isinstance(v, np.ma.MaskedArray):
            return {"$ma": self.encode(np.ma.getdata(v)),
                    "mask": self.encode(np.ma.getmaskarray(v))}
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in _DTYPE_KINDS:
                return {"$oa": [self.encode(x) for x in v.reshape(-1).tolist()],
                        "dtype": v.dtype.str if v.dtype.kind in "OUS" else "|O",
                        "shape": list(v.shape)}
            return {"$a": self._array(v)}
        if isinstance(v, torch.Tensor):
            return self._tensor(v)
        if isinstance(v, (torch.dtype, torch.device)):
            return {"$torch": [type(v).__name__, str(v)]}
        if isinstance(v, History):
            return {"$history": [self.encode(dict(row)) for row in v]}
        if isinstance(v, tuple) and type(v) is tuple:
            return {"$t": [self.encode(x) for x in v]}
        if isinstance(v, list) and type(v) is list:
            return [self.encode(x) for x in v]
        if isinstance(v, (set, frozenset)):
            return {"$set": [self.encode(x) for x in sorted(v, key=repr)],
                    "frozen": isinstance(v, frozenset)}
        if isinstance(v, dict) and type(v) is dict and all(
                isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: self.encode(x) for k, x in v.items()}
        if isinstance(v, dict):
            return {"$d": [[self.encode(k), self.encode(x)] for k, x in v.items()],
                    "type": self.encode(type(v)) if type(v) is not dict else None,
                    "factory": self.encode(getattr(v, "default_factory", None))}
        if isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType)):
            name = _name(v)
            if name is None:
                raise TypeError(f"cannot store {v!r}: a class or function defined inside a "
                                "function has no name to rebuild it from")
            return {"$ref": name}
        if isinstance(v, functools.partial):
            return {"$partial": self.encode(v.func), "args": self.encode(v.args),
                    "kwargs": self.encode(v.keywords)}
        if isinstance(v, stats.distributions.rv_frozen):
            return {"$dist": v.dist.name, "args": self.encode(v.args),
                    "kwds": self.encode(v.kwds)}
        if isinstance(v, NeuralNet):
            return self._net(v)
        if isinstance(v, torch.optim.Optimizer):
            return {"$optim": self.encode(type(v)),
                    "params": [[self.encode(p) for p in g["params"]] for g in v.param_groups],
                    "state": self.encode(v.state_dict())}
        return self._object(v)

    def _tensor(self, t):
        if id(t) in self.tensors:  # the same tensor (an optimiser's parameter, its state key)
            return {"$same": self.tensors[id(t)]}
        self.tensors[id(t)] = len(self.tensors)
        self.kept.append(t)
        if t.layout != torch.strided or t.grad_fn is not None:
            raise TypeError(f"cannot store a {t.layout} tensor with grad_fn={t.grad_fn}")
        data = t.detach().cpu()
        dtype = str(data.dtype).replace("torch.", "")
        if data.dtype == torch.bfloat16:
            data = data.float()
        host = data.numpy()  # host: data is t.detach().cpu() (above)
        return {"$T": self._array(host), "dtype": dtype, "device": str(t.device),
                "grad": bool(t.requires_grad), "param": isinstance(t, torch.nn.Parameter)}

    def _net(self, net):
        params = net.get_params(deep=False)
        out = {"$net": self.encode(type(net)), "params": self.encode(params)}
        if getattr(net, "initialized_", False):
            out["state"] = self.encode(net_state(net))
            # what its fit learnt of the data (classes_inferred_, n_features_in_ ...): the
            # attributes ending in "_" that initialize does not build
            out["fitted"] = self.encode({
                k: v for k, v in vars(net).items() if k.endswith("_") and not k.startswith("_")
                and k not in _NET_BUILT and k not in params
                and not isinstance(v, (torch.nn.Module, torch.optim.Optimizer))})
        return out

    def _object(self, obj):
        """An estimator (or a callback, a splitter ...): its class, its parameters and its
        other attributes; a registered record (:func:`record`) by its fields."""
        if type(obj) in _RECORDS.values():
            fields = ({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
                      if dataclasses.is_dataclass(obj) else vars(obj))
            return {"$rec": type(obj).__qualname__, "f": self.encode(fields)}
        if not hasattr(obj, "__dict__"):
            raise TypeError(f"cannot store a {type(obj).__name__} (no attributes to store)")
        params = {}
        if hasattr(obj, "get_params"):
            try:
                params = obj.get_params(deep=False)
            except TypeError:
                params = obj.get_params()
        attrs = {k: v for k, v in vars(obj).items() if k not in params and k != "_fit"}
        return {"$est": self.encode(type(obj)), "params": self.encode(params),
                "attrs": self.encode(attrs)}


#: the attributes of a skorch net that ``initialize`` builds (not stored as fitted ones)
_NET_BUILT = {"module_", "optimizer_", "criterion_", "callbacks_", "history_", "initialized_",
              "virtual_params_", "init_context_", "prefixes_", "cuda_dependent_attributes_"}
#: skhpo's plain-data classes a file may hold by their fields (:func:`record`)
_RECORDS = {}


def record(cls):
    """Class decorator: ``cls`` (a dataclass, or a class whose attributes are its state) may
    be stored by its fields and rebuilt without calling its ``__init__``."""
    _RECORDS[cls.__qualname__] = cls
    return cls


# -- reading ---------------------------------------------------------------------------------

def loads(data, trusted=None):
    """The value :func:`dumps` wrote, built only from what the file holds and the ``trusted``
    objects (:func:`trusted_objects`); a :class:`DamagedFile` says why it cannot be."""
    try:
        (size,) = struct.unpack_from("<Q", data)
        head = json.loads(bytes(data[8:8 + size]))
        blob = memoryview(data)[8 + size:]
        arrays = []
        for dtype, shape, offset, nbytes in head["arrays"]:
            kind = np.dtype(dtype)
            if kind.kind not in _DTYPE_KINDS or offset + nbytes > len(blob):
                raise DamagedFile(f"it holds an array of dtype {dtype!r} or beyond its end")
            arrays.append(np.frombuffer(blob, dtype=kind, count=nbytes // max(1, kind.itemsize),
                                        offset=offset).reshape(shape).copy())
    except DamagedFile:
        raise
    except Exception as exc:
        raise DamagedFile(f"it cannot be read: {type(exc).__name__}: {exc}") from None
    try:
        return _Reader(arrays, trusted or {}).decode(head["doc"])
    except DamagedFile:
        raise
    except Exception as exc:
        raise DamagedFile(f"it cannot be rebuilt: {type(exc).__name__}: {exc}") from None


class _Reader:
    def __init__(self, arrays, trusted):
        self.arrays, self.trusted = arrays, trusted
        self.tensors = []  # in the order the writer met them ($same)

    def resolve(self, name):
        """The class or function ``name`` ("module:qualname") names, if allowed."""
        if not isinstance(name, str) or ":" not in name:
            raise DamagedFile(f"it names {name!r}, which is not a class or function")
        if name in self.trusted:
            return self.trusted[name]
        module, qualname = name.split(":", 1)
        denied = any(module == d or module.startswith(d + ".") for d in DENIED)
        if denied or module.split(".")[0] not in ROOTS or (
                module == "builtins" and qualname not in _BUILTINS):
            raise DamagedFile(f"it asks for {module}.{qualname}, which a checkpoint never "
                              "holds (a planted file?); nothing of it was run")
        if any(part.startswith("__") for part in qualname.split(".")):
            raise DamagedFile(f"it names {name}, which is not a class or function")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not _admissible(obj, module):
            raise DamagedFile(f"it asks for {module}.{qualname}, which a checkpoint never "
                              "holds (a planted file?); nothing of it was run")
        return obj

    def decode(self, v):  # noqa: C901 (one branch per tag)
        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if not isinstance(v, dict):
            return v
        if not v or not next(iter(v)).startswith("$"):
            return {k: self.decode(x) for k, x in v.items()}
        tag = next(iter(v))
        if tag == "$a":
            return self.arrays[v["$a"]]
        if tag == "$T":
            self.tensors.append(self._tensor(v))
            return self.tensors[-1]
        if tag == "$same":
            return self.tensors[v["$same"]]
        if tag == "$optim":
            cls = self._class(v, "$optim", torch.optim.Optimizer)
            opt = cls([{"params": [self.decode(p) for p in group]} for group in v["params"]])
            opt.load_state_dict(self.decode(v["state"]))
            return opt
        if tag == "$t":
            return tuple(self.decode(x) for x in v["$t"])
        if tag == "$d":
            kind = dict if v.get("type") is None else self.decode(v["type"])
            if not (isinstance(kind, type) and issubclass(kind, dict)):
                raise DamagedFile(f"it holds a mapping of type {kind!r}")
            factory = self.decode(v.get("factory"))
            out = kind(factory) if issubclass(kind, collections.defaultdict) else kind()
            out.update((self.decode(k), self.decode(x)) for k, x in v["$d"])
            return out
        if tag == "$np":
            dtype, value = v["$np"]
            if np.dtype(dtype).kind not in _DTYPE_KINDS | set("US"):
                raise DamagedFile(f"it holds a scalar of dtype {dtype!r}")
            return np.array(self.decode(value), dtype=np.dtype(dtype))[()]
        if tag == "$ma":
            return np.ma.MaskedArray(self.decode(v["$ma"]), mask=self.decode(v["mask"]))
        if tag == "$oa":
            items = [self.decode(x) for x in v["$oa"]]
            dtype = np.dtype(v["dtype"])
            if dtype.kind not in "OUS":
                raise DamagedFile(f"it holds an array of dtype {dtype!r}")
            out = np.empty(len(items), dtype=dtype)
            out[:] = items if dtype.kind != "O" else _objects(items)
            return out.reshape(v["shape"])
        if tag == "$set":
            items = [self.decode(x) for x in v["$set"]]
            return frozenset(items) if v.get("frozen") else set(items)
        if tag == "$torch":
            kind, text = v["$torch"]
            if kind == "device":
                return torch.device(text)
            dtype = getattr(torch, text.replace("torch.", ""), None)
            if not isinstance(dtype, torch.dtype):
                raise DamagedFile(f"it names {text!r}, which is not a torch dtype")
            return dtype
        if tag == "$history":
            return History([self.decode(row) for row in v["$history"]])
        if tag == "$ref":
            return self.resolve(v["$ref"])
        if tag == "$partial":
            return functools.partial(self.decode(v["$partial"]), *self.decode(v["args"]),
                                     **self.decode(v["kwargs"]))
        if tag == "$dist":
            dist = getattr(stats, str(v["$dist"]), None)
            if not isinstance(dist, stats.rv_continuous | stats.rv_discrete):
                raise DamagedFile(f"it names {v['$dist']!r}, which is not a scipy distribution")
            return dist(*self.decode(v["args"]), **self.decode(v["kwds"]))
        if tag == "$net":
            return self._net(v)
        if tag == "$est":
            return self._object(v)
        if tag == "$rec":
            cls = _RECORDS.get(v["$rec"])
            if cls is None:
                raise DamagedFile(f"it holds a record {v['$rec']!r} skhpo does not know")
            obj = cls.__new__(cls)
            obj.__dict__.update(self.decode(v["f"]))
            return obj
        raise DamagedFile(f"it holds an unknown entry {tag!r}")

    def _tensor(self, v):
        dtype = getattr(torch, v["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise DamagedFile(f"it holds a tensor of dtype {v['dtype']!r}")
        t = torch.from_numpy(self.arrays[v["$T"]]).to(dtype)
        if v["device"] != "cpu":
            t = t.to(v["device"])
        if v["param"]:
            return torch.nn.Parameter(t, requires_grad=v["grad"])
        return t.requires_grad_(True) if v["grad"] else t

    def _class(self, v, key, base=object):
        cls = self.decode(v[key])
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise DamagedFile(f"it holds a {key[1:]} of {cls!r}, not a class it may hold")
        return cls

    def _net(self, v):
        """The net: its class with its parameters, initialised, then its weights, optimiser
        state and history (and the attributes its fit set, e.g. ``classes_``)."""
        cls = self._class(v, "$net", NeuralNet)
        net = cls(**self.decode(v["params"]))
        if "state" not in v:
            return net
        net.__dict__.update(self.decode(v["fitted"]))
        with _generators_kept():  # (initialize may seed the generators)
            net.initialize()
        for _, cb in net.callbacks_:  # a callback that reshaped the module when it trained
            if hasattr(cb, "restore_module"):
                cb.restore_module(net)
        load_net_state(net, self.decode(v["state"]))
        return net

    def _object(self, v):
        """An object by its class, parameters and attributes: the user's own classes (named
        by the search's estimator, space or settings) through their ``__init__`` with the
        parameters, any other admitted class as pickle builds an object (its attributes set,
        no constructor run)."""
        cls = self._class(v, "$est")
        obj = cls.__new__(cls)
        params = self.decode(v["params"])
        if v["$est"].get("$ref") in self.trusted:
            try:
                obj.__init__(**params)
            except TypeError:
                obj.__dict__.update(params)
        else:
            obj.__dict__.update(params)
        obj.__dict__.update(self.decode(v["attrs"]))
        return obj


#: the kinds of classes a file may name from the admitted packages (besides skhpo's and
#: scikit-learn's scorers): what nets, searches and optimisers are made of, none of whose
#: construction touches files or the network ...
_CLASS_KINDS = (torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                BaseEstimator, BaseCrossValidator, callbacks.Callback, NeuralNet, Dataset,
                ValidSplit, History, torch.utils.data.Dataset, torch.utils.data.DataLoader,
                np.generic, dict, list, tuple, set, frozenset)
#: ... but skorch's checkpointing and logging callbacks, whose ``initialize`` does (a user's
#: own are admitted by name)
_TOUCHING = tuple(getattr(callbacks, name) for name in (
    "Checkpoint", "TrainEndCheckpoint", "LoadInitState", "TensorBoard", "WandbLogger",
    "NeptuneLogger", "MlflowLogger", "SacredLogger") if hasattr(callbacks, name))


#: modules whose functions a file may name (metrics, skorch's parameter setters and the
#: indexing helpers its scoring callbacks keep, torch's functional layers and initialisers)
_FUNCTIONS = ("sklearn.metrics", "skorch.setter", "skorch.utils", "torch.nn.functional",
              "torch.nn.init")


def _admissible(obj, module):
    """Whether ``obj`` (found in ``module`` of an admitted package) may be named by a file."""
    if module == "builtins":
        return True  # (only the names of _BUILTINS reach here)
    if isinstance(obj, type):
        if module.split(".")[0] == "skhpo" or module.startswith("sklearn.metrics"):
            return True  # (skhpo's classes; scikit-learn's scorers)
        return issubclass(obj, _CLASS_KINDS) and not issubclass(obj, _TOUCHING)
    return callable(obj) and (module.startswith(_FUNCTIONS) or module.split(".")[0] == "skhpo")


@contextlib.contextmanager
def _generators_kept():
    """The block leaves torch's, numpy's and Python's global generators as it found them."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def _objects(items):
    """``items`` as a 1-d object array (a list of tuples stays a list of tuples)."""
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = x
    return out
