"""The checkpoint file format (skhpo._store): JSON and arrays; reading builds only what the
user's objects and skhpo's allow-list name, and never runs a planted payload."""

import collections
import json
import struct

import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import TabularMLPClassifier
from skhpo._store import DamagedFile, dumps, loads, trusted_objects


def _document(doc, arrays=()):
    """A file payload holding ``doc`` (and ``arrays``), as :func:`dumps` lays it out."""
    index, blobs, offset = [], [], 0
    for a in arrays:
        index.append([a.dtype.str, list(a.shape), offset, a.nbytes])
        blobs.append(a.tobytes())
        offset += a.nbytes
    head = json.dumps({"doc": doc, "arrays": index}).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def test_values_come_back_equal_with_their_types_and_shared_tensors():
    w = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([w], lr=0.01)
    w.grad = torch.ones_like(w)
    opt.step()
    value = {"ints": {1: 2, (3, "a"): [4.5, float("nan"), None, True]}, "w": w,
             "opt": opt, "ordered": collections.OrderedDict(b=1, a=2),
             "default": collections.defaultdict(list, {"x": [1]}), "$odd": "key",
             "arrays": [np.arange(6, dtype=np.int16).reshape(2, 3), np.float32(1.5),
                        np.ma.MaskedArray([1.0, 2.0], mask=[False, True]),
                        np.array(["a", {"b": 1}], dtype=object)],
             "half": torch.ones(2, dtype=torch.bfloat16), "set": {1, 2}, "cls": torch.optim.SGD,
             "dist": loguniform(1e-3, 1e-1), "gen": torch.Generator().manual_seed(3).get_state(),
             "scalars": [torch.tensor(29.0), np.array(3)]}
    back = loads(dumps(value))
    assert back["ints"][1] == 2 and back["ints"][3, "a"][0] == 4.5
    assert np.isnan(back["ints"][3, "a"][1]) and back["ints"][3, "a"][2:] == [None, True]
    assert isinstance(back["w"], torch.nn.Parameter) and torch.equal(back["w"], w)
    # the optimiser's parameter is the stored parameter itself, its state the same
    assert back["opt"].param_groups[0]["params"][0] is back["w"]
    state = back["opt"].state[back["w"]]
    assert torch.equal(state["exp_avg"], opt.state[w]["exp_avg"])
    assert list(back["ordered"]) == ["b", "a"] and type(back["ordered"]) is collections.OrderedDict
    assert back["default"]["new"] == [] and back["$odd"] == "key"
    a, f, m, o = back["arrays"]
    assert a.dtype == np.int16 and np.array_equal(a, np.arange(6).reshape(2, 3))
    assert f.dtype == np.float32 and f == 1.5
    assert m.mask.tolist() == [False, True] and o.dtype == object and o[1] == {"b": 1}
    assert back["half"].dtype == torch.bfloat16 and back["set"] == {1, 2}
    assert back["cls"] is torch.optim.SGD and back["dist"].dist.name == "loguniform"
    assert torch.equal(back["gen"], value["gen"])
    assert [tuple(x.shape) for x in back["scalars"]] == [(), ()]  # 0-d stay 0-d


def test_a_fitted_net_and_pipeline_are_rebuilt_from_their_class_and_arrays():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    pipe = Pipeline([("scale", StandardScaler()),
                     ("net", TabularMLPClassifier(width=8, max_epochs=2))]).fit(X, y)
    back = loads(dumps(pipe), trusted_objects(pipe))
    np.testing.assert_array_equal(back.predict_proba(X), pipe.predict_proba(X))
    assert back[-1].history[-1]["train_loss"] == pipe[-1].history[-1]["train_loss"]
    assert back[-1].optimizer_.state_dict()["state"].keys() == \
        pipe[-1].optimizer_.state_dict()["state"].keys()
    assert back is not pipe and back[0].mean_.tolist() == pipe[0].mean_.tolist()


PAYLOADS = {
    "ref": {"$ref": "os:system"},
    "estimator": {"$est": {"$ref": "subprocess:Popen"}, "params": {"args": ["touch", "x"]},
                  "attrs": {}},
    "builtin": {"$est": {"$ref": "builtins:eval"}, "params": {}, "attrs": {}},
    "partial": {"$partial": {"$ref": "builtins:exec"}, "args": {"$t": ["print(1)"]},
                "kwargs": {}},
    "net": {"$net": {"$ref": "os:system"}, "params": {}},
    "net-not-a-net": {"$net": {"$ref": "sklearn.preprocessing:StandardScaler"}, "params": {}},
    "optimizer": {"$optim": {"$ref": "torch.hub:load"}, "params": [], "state": {}},
    "mapping": {"$d": [], "type": {"$ref": "os:system"}},
    "code-loading-module": {"$est": {"$ref": "torch.serialization:load"}, "params": {},
                            "attrs": {}},
    "distribution": {"$dist": "__class__", "args": {"$t": []}, "kwds": {}},
    "record": {"$rec": "Popen", "f": {}},
    "object-scalar": {"$np": ["|O", "x"]},
    "dtype": {"$torch": ["dtype", "__class__"]},
    "unknown-tag": {"$eval": "1"},
    # admitted packages, but nothing a checkpoint holds: a class that writes a file when
    # built, as an object and as a net's module; a function that writes one; a dunder
    "file-class": {"$est": {"$ref": "scipy.io:FortranFile"},
                   "params": {"filename": "x", "mode": "w"}, "attrs": {}},
    "file-module": {"$net": {"$ref": "skhpo.models:TabularMLPClassifier"},
                    "params": {"module": {"$ref": "scipy.io:FortranFile"}}},
    "file-function": {"$ref": "torch:save"},
    "checkpoint-callback": {"$est": {"$ref": "skorch.callbacks:Checkpoint"}, "params": {},
                            "attrs": {}},
    "dunder": {"$ref": "torch.nn:Module.__subclasses__"},
}


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_planted_document_is_refused_naming_what_it_asks_for(name, tmp_path, monkeypatch):
    import os
    import subprocess

    def ran(*args, **kwargs):
        raise AssertionError("a planted payload ran")
    monkeypatch.setattr(os, "system", ran)
    monkeypatch.setattr(subprocess, "Popen", ran)
    doc = {"state": {"module": [PAYLOADS[name]]}}
    with pytest.raises(DamagedFile):
        loads(_document(doc))


def test_arrays_of_objects_or_out_of_bounds_are_refused():
    with pytest.raises(DamagedFile, match="dtype"):
        loads(_document({"$a": 0}, [np.zeros(2, dtype=[("a", "O")])]))
    data = _document({"$a": 0}, [np.zeros(4)])
    with pytest.raises(DamagedFile):
        loads(data[:-8])  # the array runs past the end
    with pytest.raises(DamagedFile):
        loads(b"\x00" * 3)


def test_what_cannot_be_stored_is_a_type_error_naming_it():
    def local():
        return 1
    with pytest.raises(TypeError, match="defined inside a function"):
        dumps({"f": local})


class _UserModule(torch.nn.Module):
    """A user's own module (named by the user's estimator: trusted by name)."""

    def __init__(self, hidden=8):
        super().__init__()
        self.hidden = torch.nn.Linear(4, hidden)
        self.out = torch.nn.Linear(hidden, 3)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X)))


def test_a_plain_skorch_net_with_the_usual_callbacks_round_trips():
    from sklearn.datasets import load_iris
    from skorch import NeuralNetClassifier
    from skorch.callbacks import EarlyStopping, EpochScoring, LRScheduler
    from skorch.dataset import ValidSplit

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    net = NeuralNetClassifier(
        _UserModule, criterion=torch.nn.CrossEntropyLoss, max_epochs=4, lr=0.05,
        optimizer=torch.optim.SGD, optimizer__momentum=0.9, train_split=ValidSplit(3),
        callbacks=[EarlyStopping(patience=3), LRScheduler("StepLR", step_size=2),
                   EpochScoring("f1_macro", name="f1")], verbose=0).fit(X, y)
    back = loads(dumps(net), trusted_objects(net))
    np.testing.assert_array_equal(back.predict_proba(X), net.predict_proba(X))
    assert [row.get("f1") for row in back.history] == [row.get("f1") for row in net.history]
    assert back.optimizer_.param_groups[0]["momentum"] == 0.9
