"""Checkpoint and resume: a search given a folder writes every finished training; a fit
with the same search, data and folder retrains none of them and gives an uninterrupted run's
results; a folder of another search is refused before any training."""

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from sklearn.datasets import load_iris
from skorch.callbacks import Callback

from skhpo import (
    AutoHyperSearchCV,
    FlatnessSearchCV,
    FusedGridSearchCV,
    FusedHalvingRandomSearchCV,
    FusedRandomizedSearchCV,
    TabularMLPClassifier,
)
from skhpo.checkpoint import SUFFIX

TIMES = ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time")


class CountingAdam(torch.optim.Adam):
    """torch's Adam, counting every step of every instance."""

    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


def _net(**kw):
    return TabularMLPClassifier(**{"width": 8, "max_epochs": 3, "optimizer": CountingAdam,
                                   **kw})


def _same_results(a, b):
    assert a.best_params_ == b.best_params_ and a.best_score_ == b.best_score_
    for key in a.cv_results_:
        if key in TIMES or key.endswith("_time"):
            continue
        x, y = a.cv_results_[key], b.cv_results_[key]
        if key == "params":
            assert x == y
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=key)
    if hasattr(a, "history_"):
        for key in a.history_:
            if not key.endswith("time"):
                assert a.history_[key] == b.history_[key], key


SEARCHES = {
    "flatness": lambda folder, **kw: FlatnessSearchCV(
        _net(), {"lr": loguniform(1e-3, 1e-1), "width": [8, 16]}, n_candidates=6,
        n_finalists=2, cv=2, random_state=0, checkpoint=folder, **kw),
    "flatness-sequential": lambda folder, **kw: FlatnessSearchCV(
        _net(), {"lr": loguniform(1e-3, 1e-1)}, n_candidates=4, n_finalists=2, cv=2,
        engine="sequential", random_state=0, checkpoint=folder, **kw),
    "autohyper": lambda folder, **kw: AutoHyperSearchCV(
        _net(), {"lr": None}, epochs_per_trial=1, max_trials=6, cv=2, random_state=0,
        checkpoint=folder, **kw),
    "fused-random": lambda folder, **kw: FusedRandomizedSearchCV(
        _net(), {"lr": loguniform(1e-3, 1e-1)}, n_iter=3, cv=2, random_state=0,
        checkpoint=folder, **kw),
    "fused-halving": lambda folder, **kw: FusedHalvingRandomSearchCV(
        _net(), {"lr": loguniform(1e-3, 1e-1)}, n_candidates=6, resource="max_epochs",
        min_resources=1, max_resources=3, cv=2, random_state=0, checkpoint=folder, **kw),
    "fused-grid-sequential": lambda folder, **kw: FusedGridSearchCV(
        _net(), {"lr": [1e-2, 1e-3]}, cv=2, engine="sequential", random_state=0,
        checkpoint=folder, **kw),
}


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", list(SEARCHES))
def test_a_second_fit_retrains_nothing_and_gives_the_same_results(name, iris, tmp_path):
    X, y = iris
    first = SEARCHES[name](str(tmp_path), refit=False).fit(X, y)
    stored = _stored(tmp_path)
    assert first.n_resumed_ == 0 and stored > 0
    CountingAdam.steps = 0
    again = SEARCHES[name](str(tmp_path), refit=False).fit(X, y)
    assert CountingAdam.steps == 0  # every training came from the folder
    assert again.n_resumed_ == stored
    _same_results(first, again)
    if not name.startswith("fused"):  # the checkpoint changes nothing (the drop-ins seed
        plain = SEARCHES[name](None, refit=False).fit(X, y)  # scikit-learn's unseeded
        _same_results(first, plain)                          # fits when given a folder)


def test_a_folder_of_another_search_is_refused_before_training(iris, tmp_path):
    X, y = iris
    SEARCHES["flatness"](str(tmp_path), refit=False).fit(X, y)
    others = [
        (lambda: SEARCHES["flatness"](str(tmp_path), refit=False), X[::-1], y[::-1], "data"),
        (lambda: FlatnessSearchCV(_net(), {"lr": loguniform(1e-4, 1e-1)}, n_candidates=6,
                                  n_finalists=2, cv=2, random_state=0, checkpoint=str(tmp_path),
                                  refit=False), X, y, "space"),
        (lambda: SEARCHES["flatness"](str(tmp_path), refit=False).set_params(
            estimator=_net(max_epochs=4)), X, y, "estimator"),
        (lambda: SEARCHES["flatness"](str(tmp_path), refit=False, n_jobs=1).set_params(
            random_state=1), X, y, "settings"),
        (lambda: SEARCHES["autohyper"](str(tmp_path), refit=False), X, y, "class"),
    ]
    for make, Xo, yo, what in others:
        CountingAdam.steps = 0
        with pytest.raises(ValueError, match=f"holds the trainings of another search: its "
                           f".*{what}.* from this fit's"):
            make().fit(Xo, yo)
        assert CountingAdam.steps == 0


@pytest.mark.parametrize("bad, match", [
    ({"random_state": None}, "needs random_state set to an int"),
    ({"checkpoint": 5}, "checkpoint"),
])
def test_checkpoint_needs_a_folder_and_a_fixed_seed(bad, match, iris, tmp_path):
    X, y = iris
    for make in (SEARCHES["flatness"], SEARCHES["fused-random"]):
        search = make(str(tmp_path)).set_params(**bad)
        CountingAdam.steps = 0
        with pytest.raises(ValueError, match=match):
            search.fit(X, y)
        assert CountingAdam.steps == 0


def _stored(folder):
    """Trainings in a checkpoint folder (a fused group's share one file)."""
    from skhpo.checkpoint import read_file

    n = 0
    for name in os.listdir(folder):
        if name.endswith(SUFFIX) and not name.startswith("."):
            if "-group-" in name:
                n += len(read_file(os.path.join(folder, name)))
            else:
                n += 1
    return n


def _kill_when(command, ready, timeout=120):
    """Run ``command`` in a child process and SIGKILL it as soon as ``ready()``."""
    proc = subprocess.Popen(command)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and not ready():
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from scipy.stats import loguniform
    from sklearn.datasets import load_digits
    from skhpo import FlatnessSearchCV, TabularMLPClassifier
    torch.set_num_threads(1)  # as the test process (conftest): the same sums, bit for bit
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]
    FlatnessSearchCV(TabularMLPClassifier(width=32, max_epochs=6),
                     {"lr": loguniform(1e-3, 1e-1), "width": [16, 32, 64]},
                     n_candidates=30, n_finalists=4, cv=3, engine=sys.argv[2],
                     random_state=0, checkpoint=sys.argv[1], refit=False).fit(X, y)
""")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["sequential", "auto"])
def test_a_killed_search_resumes_without_retraining(engine, tmp_path):
    """A real process kill (SIGKILL) part-way through the screening; the resumed fit loads
    every training the killed one finished and its results equal an uninterrupted run's
    (with fused groups too: the resumed fit plans over every training, loaded or not)."""
    from sklearn.datasets import load_digits

    folder = tmp_path / "ck"
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    def ready():
        done = [f for f in os.listdir(folder)] if folder.exists() else []
        return sum(f.startswith("trial-") for f in done) >= (8 if engine == "sequential" else 1)

    _kill_when([sys.executable, str(script), str(folder), engine], ready)
    finished, everything = _stored(folder), 30 + 4 * 3  # 30 screened, 4 finalists x 3 folds
    assert 0 < finished < everything  # killed part-way
    # (a write the kill interrupted leaves at most a ".tmp-" file, which nothing reads)
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]

    def search(ck):
        return FlatnessSearchCV(TabularMLPClassifier(width=32, max_epochs=6),
                                {"lr": loguniform(1e-3, 1e-1), "width": [16, 32, 64]},
                                n_candidates=30, n_finalists=4, cv=3, engine=engine,
                                random_state=0, checkpoint=ck, refit=False)

    resumed = search(str(folder)).fit(X, y)
    assert resumed.n_resumed_ == finished  # no finished training was redone
    _same_results(resumed, search(None).fit(X, y))


def _hpm(folder, **kw):
    from skhpo import PopulationMutationSearch

    net = TabularMLPClassifier(width=16, max_epochs=1, dropout=0.2)
    return PopulationMutationSearch(net, {"lr": loguniform(1e-3, 1e-1), "dropout": (0.0, 0.5)},
                                    population_size=4, n_steps=4, random_state=0,
                                    checkpoint=folder, **kw)


@pytest.mark.parametrize("engine", ["fused", "sequential"])
def test_population_resumes_after_its_last_step(iris, tmp_path, engine):
    X, y = iris
    first = _hpm(str(tmp_path), engine=engine).fit(X, y)
    assert first.n_resumed_ == 0 and first.engine_ == engine
    # the folder holds the run after its third step: a new fit trains the fourth only
    again = _hpm(str(tmp_path), engine=engine).fit(X, y)
    assert again.n_resumed_ == 3 * 4
    _same_results(first, again)
    _same_results(first, _hpm(None, engine=engine).fit(X, y))
    with pytest.raises(ValueError, match="its settings differ"):
        _hpm(str(tmp_path), engine=engine).set_params(n_steps=5).fit(X, y)


HPM_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from scipy.stats import loguniform
    from sklearn.datasets import load_digits
    from skhpo import PopulationMutationSearch, TabularMLPClassifier
    torch.set_num_threads(1)  # as the test process (conftest): the same sums, bit for bit
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]
    PopulationMutationSearch(TabularMLPClassifier(width=32, max_epochs=1, dropout=0.2),
                             {"lr": loguniform(1e-3, 1e-1), "dropout": (0.0, 0.5)},
                             population_size=6, n_steps=12, random_state=0,
                             checkpoint=sys.argv[1]).fit(X, y)
""")


@pytest.mark.slow
def test_a_killed_population_resumes_from_its_last_step(tmp_path):
    from sklearn.datasets import load_digits

    from skhpo import PopulationMutationSearch
    from skhpo.checkpoint import DamagedFile, read_file

    folder = tmp_path / "ck"
    script = tmp_path / "hpm.py"
    script.write_text(HPM_SCRIPT)
    def ready():  # the population after its third step is in the folder
        files = [f for f in os.listdir(folder) if f.startswith("population-")] \
            if folder.exists() else []
        try:
            return read_file(folder / files[0])["step"] >= 2
        except (IndexError, DamagedFile, FileNotFoundError):
            return False  # not there yet, or being replaced: read it again

    _kill_when([sys.executable, str(script), str(folder)], ready)
    (path,) = [folder / f for f in os.listdir(folder) if f.startswith("population-")]
    done = read_file(path)["step"] + 1
    assert 3 <= done < 12  # killed part-way
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]

    def search(ck):
        return PopulationMutationSearch(
            TabularMLPClassifier(width=32, max_epochs=1, dropout=0.2),
            {"lr": loguniform(1e-3, 1e-1), "dropout": (0.0, 0.5)}, population_size=6,
            n_steps=12, random_state=0, checkpoint=ck)

    resumed = search(str(folder)).fit(X, y)
    assert resumed.n_resumed_ == done * 6  # no completed step was redone
    _same_results(resumed, search(None).fit(X, y))


def test_cutting_plane_resumes_after_its_last_epoch(iris, tmp_path):
    """The self-tuning run, stopped after epoch 3 of 6 (its state taken from a full run's
    checkpoint written at that epoch), continues to the same end."""
    from skhpo import CuttingPlaneTuner
    from skhpo.checkpoint import read_file

    X, y = iris

    def tuner(folder, epochs):
        return CuttingPlaneTuner(TabularMLPClassifier(width=16, max_epochs=epochs, dropout=0.3),
                                 warmup_epochs=1, random_state=0, checkpoint=folder)

    full = tuner(str(tmp_path / "full"), 6).fit(X, y)
    assert full.n_resumed_ == 0
    # a run of 3 epochs writes what the 6-epoch run wrote after its third epoch, except
    # max_epochs in the fingerprint: move its state under the 6-epoch run's fingerprint
    tuner(str(tmp_path / "three"), 3).fit(X, y)
    (state,) = [f for f in os.listdir(tmp_path / "three") if f.startswith("stn-")]
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    for name in ("fingerprint.json",):
        (resumed_dir / name).write_bytes((tmp_path / "full" / name).read_bytes())
    assert read_file(tmp_path / "three" / state)["epoch"] == 2
    (resumed_dir / state).write_bytes((tmp_path / "three" / state).read_bytes())
    resumed = tuner(str(resumed_dir), 6).fit(X, y)
    assert resumed.n_resumed_ == 3
    _same_results(full, resumed)
    _same_results(full, tuner(None, 6).fit(X, y))


def test_hyperlocal_keeps_its_trained_base_search(iris, tmp_path):
    from sklearn.model_selection import GridSearchCV

    from skhpo import HyperLocalRefiner

    X, y = iris

    def refiner(folder):
        grid = GridSearchCV(_net(l2=1e-3, max_epochs=4), {"l2": [1e-4, 1e-3]}, cv=2)
        return HyperLocalRefiner(grid, random_state=0, checkpoint=folder)

    first = refiner(str(tmp_path)).fit(X, y)
    assert first.n_resumed_ == 0
    CountingAdam.steps = 0
    again = refiner(str(tmp_path)).fit(X, y)
    assert CountingAdam.steps == 0 and again.n_resumed_ == 1
    _same_results(first, again)
    assert first.validation_loss_ == again.validation_loss_


def test_hyperlocal_keeps_a_randomized_base_search_over_a_pipeline(iris, tmp_path):
    """The base search a user would pass: RandomizedSearchCV over a Pipeline, with scipy
    distributions (whose generator state moves as they draw: not part of the fingerprint)
    and a named scorer; its fitted search (the Pipeline's fitted scaler, the net) is stored
    and rebuilt."""
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from skhpo import HyperLocalRefiner

    X, y = iris

    def refiner(folder):
        pipe = Pipeline([("scale", StandardScaler()), ("net", _net(l2=1e-3, max_epochs=3))])
        base = RandomizedSearchCV(pipe, {"net__lr": loguniform(1e-3, 1e-1),
                                         "net__l2": loguniform(1e-5, 1e-2)}, n_iter=3, cv=2,
                                  random_state=0, scoring="neg_log_loss")
        return HyperLocalRefiner(base, random_state=0, checkpoint=folder)

    first = refiner(str(tmp_path)).fit(X, y)
    np.random.rand(5)  # the global generator moves between the fits, as in a session
    CountingAdam.steps = 0
    again = refiner(str(tmp_path)).fit(X, y)
    assert again.n_resumed_ == 1
    assert first.best_params_ == again.best_params_
    assert first.validation_loss_ == again.validation_loss_
    assert first.score(X, y) == again.score(X, y)


class CtrlC(Callback):
    """Presses Ctrl-C at the end of the n-th training (``left``, a class attribute, so that
    the search's copies of the callback share it; None: never)."""

    left = None

    def on_train_end(self, net, **kwargs):
        if CtrlC.left is not None:
            CtrlC.left -= 1
            if CtrlC.left == 0:
                raise KeyboardInterrupt


def test_ctrl_c_leaves_a_consistent_checkpoint(iris, tmp_path):
    X, y = iris
    net = TabularMLPClassifier(width=8, max_epochs=3, callbacks=[("ctrl_c", CtrlC())])

    def search(folder):
        return FlatnessSearchCV(net, {"lr": loguniform(1e-3, 1e-1)}, n_candidates=8,
                                n_finalists=2, cv=2, engine="sequential", random_state=0,
                                checkpoint=folder, refit=False)

    CtrlC.left = 5
    try:
        with pytest.raises(KeyboardInterrupt):
            search(str(tmp_path)).fit(X, y)
    finally:
        CtrlC.left = None
    files = [f for f in os.listdir(tmp_path) if f.endswith(SUFFIX)]
    # the 1st training to end is the 0-epoch structure probe, the 5th is interrupted: the
    # three screened candidates in between are written, each in a whole file
    assert len(files) == 3
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    resumed = search(str(tmp_path)).fit(X, y)
    assert resumed.n_resumed_ == len(files)
    _same_results(resumed, search(None).fit(X, y))


# -- faults: damaged, planted and unwritable files --------------------------------------------

def _fault_search(folder):
    """The issue's example, small: FusedRandomizedSearchCV on 300 digits."""
    return FusedRandomizedSearchCV(TabularMLPClassifier(width=8, max_epochs=2),
                                   {"lr": loguniform(1e-4, 1e-1)}, n_iter=4, cv=2,
                                   random_state=0, checkpoint=folder)


@pytest.fixture(scope="module")
def small_digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32)[:300], y[:300]


def _files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(SUFFIX))


def _planted(marker):
    """A pickle that would create ``marker`` if it were ever loaded by plain pickle."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    return pickle.dumps(Payload())


@pytest.mark.parametrize("fault", ["truncated", "garbage", "planted", "planted-checksummed"])
def test_a_damaged_or_planted_file_costs_only_its_own_trainings(fault, small_digits,
                                                                tmp_path):
    import hashlib

    from skhpo.checkpoint import _MAGIC, CheckpointWarning

    X, y = small_digits
    first = _fault_search(str(tmp_path)).fit(X, y)
    stored = _stored(tmp_path)
    (name, *_) = _files(tmp_path)
    path = tmp_path / name
    in_file = _stored_in(path)
    marker = tmp_path / "ran"
    data = path.read_bytes()
    payload = _planted(marker)
    path.write_bytes({
        "truncated": data[:len(data) // 2],
        "garbage": os.urandom(len(data)),
        "planted": payload,  # a plain pickle, as the files were before
        # a planted pickle with a valid header and checksum: refused by what it asks for
        "planted-checksummed": _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
        + payload}[fault])
    with pytest.warns(CheckpointWarning, match=f"checkpoint file .*{name}.* cannot be used"):
        again = _fault_search(str(tmp_path)).fit(X, y)
    assert not marker.exists()  # nothing of the planted file ran
    assert again.n_resumed_ == stored - in_file  # only the damaged file's trainings redone
    _same_results(first, again)


def _stored_in(path):
    from skhpo.checkpoint import read_file

    return len(read_file(path)) if "-group-" in path.name else 1


def test_a_failing_write_turns_checkpointing_off_and_the_search_finishes(small_digits,
                                                                          tmp_path,
                                                                          monkeypatch):
    """A full disk (ENOSPC injected into the atomic rename): one warning, full results."""
    import errno
    import warnings

    from skhpo.checkpoint import CheckpointWarning

    X, y = small_digits
    plain = _fault_search(None).fit(X, y)
    real = os.replace

    def full(src, dst):
        if os.path.basename(dst) != "fingerprint.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = _fault_search(str(tmp_path)).fit(X, y)
    ours = [w for w in caught if issubclass(w.category, CheckpointWarning)]
    assert len(ours) == 1 and "No space left on device" in str(ours[0].message)
    assert "checkpointing is off" in str(ours[0].message)
    assert _files(tmp_path) == [] and not [f for f in os.listdir(tmp_path)
                                           if f.startswith(".tmp")]
    _same_results(plain, search)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs mount rights: skipped where there are none, and the injected
    ENOSPC above stands in)."""
    import shutil

    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_ends_with_the_searchs_results_and_one_warning(small_digits, small_disk):
    """A real full disk: the folder's fingerprint fits on the 64 KiB tmpfs, its first fused
    group's file (137 KB) does not."""
    import warnings

    from skhpo.checkpoint import CheckpointWarning

    X, y = small_digits
    plain = _fault_search(None).fit(X, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = _fault_search(str(small_disk / "ck")).fit(X, y)
    ours = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert len(ours) == 1 and "No space left on device" in ours[0]
    assert not [f for f in os.listdir(small_disk / "ck") if f.startswith(".tmp")]
    _same_results(plain, search)


def test_checkpoint_paths_are_checked_before_training(small_digits, tmp_path):
    X, y = small_digits
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"checkpoint='.*file.txt' is a file, not a folder"):
        _fault_search(str(a_file)).fit(X, y)
    with pytest.raises(ValueError, match="its parent folder .* does not exist"):
        _fault_search(str(tmp_path / "missing" / "ck")).fit(X, y)


def test_a_folder_of_the_older_format_is_refused(small_digits, tmp_path):
    import json

    X, y = small_digits
    _fault_search(str(tmp_path)).fit(X, y)
    stored = json.loads((tmp_path / "fingerprint.json").read_text())
    del stored["format"]  # what folders written before checksums hold
    (tmp_path / "fingerprint.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="written by another version of skhpo "
                                         r"\(checkpoint format 1"):
        _fault_search(str(tmp_path)).fit(X, y)


def _with_payload(path, marker):
    """Rewrite the checkpoint file ``path`` with a valid header and checksum and its own
    content, plus a value that would create ``marker`` if the file could build any object
    (``subprocess.Popen``)."""
    import hashlib
    import json
    import struct

    from skhpo.checkpoint import _MAGIC

    data = path.read_bytes()
    payload = data[len(_MAGIC):].partition(b"\n")[2]
    (size,) = struct.unpack_from("<Q", payload)
    head = json.loads(payload[8:8 + size])
    planted = {"$est": {"$ref": "subprocess:Popen"}, "params": {"args": ["touch", str(marker)]},
               "attrs": {}}
    head["doc"] = {"$t": [planted, head["doc"]]}
    text = json.dumps(head).encode()
    payload = struct.pack("<Q", len(text)) + text + payload[8 + size:]
    path.write_bytes(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _without_refit(make, folder):
    return make(folder, refit=False)


def _planted_searches():
    from sklearn.model_selection import GridSearchCV

    from skhpo import CuttingPlaneTuner, HyperLocalRefiner

    return {
        **{name: functools.partial(_without_refit, make) for name, make in SEARCHES.items()},
        "hpm-fused": lambda folder: _hpm(folder, engine="fused"),
        "hpm-sequential": lambda folder: _hpm(folder, engine="sequential"),
        "cutting-plane": lambda folder: CuttingPlaneTuner(
            TabularMLPClassifier(width=16, max_epochs=3, dropout=0.3), warmup_epochs=1,
            random_state=0, checkpoint=folder),
        "hyperlocal": lambda folder: HyperLocalRefiner(
            GridSearchCV(_net(l2=1e-3, max_epochs=3), {"l2": [1e-4, 1e-3]}, cv=2),
            random_state=0, checkpoint=folder),
    }


@pytest.mark.parametrize("name", ["flatness", "flatness-sequential", "autohyper",
                                  "fused-random", "fused-halving", "fused-grid-sequential",
                                  "hpm-fused", "hpm-sequential", "cutting-plane",
                                  "hyperlocal"])
def test_no_file_of_any_search_can_make_a_resumed_search_run_code(name, iris, tmp_path):
    """Every file of the folder (every kind each search writes: trials, folds, fits, fused
    groups, a population, a self-tuning run's state, a base search) replaced by a crafted
    one with a valid checksum: each is reported by name, nothing of it runs, and the search
    retrains what it held, with the uninterrupted run's results."""
    import warnings

    from skhpo.checkpoint import CheckpointWarning

    X, y = iris
    make = _planted_searches()[name]
    first = make(str(tmp_path / "ck")).fit(X, y)
    names = _files(tmp_path / "ck")
    assert names
    marker = tmp_path / "ran"
    for f in names:
        _with_payload(tmp_path / "ck" / f, marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = make(str(tmp_path / "ck")).fit(X, y)
    assert not marker.exists()  # nothing of any planted file ran
    warned = " ".join(str(w.message) for w in caught if issubclass(w.category,
                                                                  CheckpointWarning))
    for f in names:
        assert f in warned and "subprocess.Popen" in warned
    assert again.n_resumed_ == 0
    _same_results(first, again)


SHARED_SCRIPT = textwrap.dedent("""
    import json
    import sys
    import numpy as np
    import torch
    from scipy.stats import loguniform
    from sklearn.datasets import load_digits
    from skhpo import FlatnessSearchCV, TabularMLPClassifier
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]
    search = FlatnessSearchCV(TabularMLPClassifier(width=32, max_epochs=4),
                              {"lr": loguniform(1e-3, 1e-1), "width": [16, 32, 64]},
                              n_candidates=16, n_finalists=3, cv=3, engine="sequential",
                              random_state=0, checkpoint=sys.argv[1], refit=False).fit(X, y)
    print(json.dumps([float(v) for v in search.cv_results_["mean_test_score"]]))
""")


@pytest.mark.slow
def test_two_processes_on_one_folder_never_corrupt_it(tmp_path):
    """Two processes fit the same search on the same folder at once: both finish with the
    same results, every file they leave reads, and a third fit trains nothing."""
    import json

    from skhpo.checkpoint import read_file

    script = tmp_path / "shared.py"
    script.write_text(SHARED_SCRIPT)
    folder = tmp_path / "ck"
    procs = [subprocess.Popen([sys.executable, str(script), str(folder)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out in outs)
    assert first == second
    names = _files(folder)
    assert names and not [f for f in os.listdir(folder) if f.startswith(".tmp")]
    for name in names:
        read_file(folder / name)  # whole, checksummed files
    from sklearn.datasets import load_digits

    from skhpo import FlatnessSearchCV
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]
    third = FlatnessSearchCV(TabularMLPClassifier(width=32, max_epochs=4),
                             {"lr": loguniform(1e-3, 1e-1), "width": [16, 32, 64]},
                             n_candidates=16, n_finalists=3, cv=3, engine="sequential",
                             random_state=0, checkpoint=str(folder), refit=False).fit(X, y)
    assert third.n_resumed_ == 16 + 3 * 3
    assert [float(v) for v in third.cv_results_["mean_test_score"]] == first


KILLED_WRITE_SCRIPT = textwrap.dedent("""
    import os
    import sys
    import time
    import numpy as np
    import torch
    from scipy.stats import loguniform
    from sklearn.datasets import load_digits
    import skhpo.checkpoint
    from skhpo import FlatnessSearchCV, TabularMLPClassifier
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]
    real, calls = os.replace, []

    def replace(src, dst):  # the 4th training's file: written, then killed before its rename
        if not dst.endswith("fingerprint.json"):
            calls.append(dst)
            if len(calls) == 4:
                open(sys.argv[2], "w").close()
                time.sleep(120)
        return real(src, dst)
    skhpo.checkpoint.os.replace = replace
    FlatnessSearchCV(TabularMLPClassifier(width=32, max_epochs=4),
                     {"lr": loguniform(1e-3, 1e-1), "width": [16, 32, 64]},
                     n_candidates=16, n_finalists=3, cv=3, engine="sequential",
                     random_state=0, checkpoint=sys.argv[1], refit=False).fit(X, y)
""")


@pytest.mark.slow
def test_kill_9_during_a_write_leaves_whole_files_only(tmp_path):
    """SIGKILL while a file is being written (its bytes out, its rename not done): the
    folder holds the three finished files and one temporary file, which nothing reads; the
    resumed fit loads the three and gives the uninterrupted run's results."""
    from sklearn.datasets import load_digits

    from skhpo import FlatnessSearchCV

    folder, flag = tmp_path / "ck", tmp_path / "writing"
    script = tmp_path / "write.py"
    script.write_text(KILLED_WRITE_SCRIPT)
    _kill_when([sys.executable, str(script), str(folder), str(flag)], flag.exists)
    assert len(_files(folder)) == 3
    assert len([f for f in os.listdir(folder) if f.startswith(".tmp-")]) == 1
    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:600], y[:600]

    def search(ck):
        return FlatnessSearchCV(TabularMLPClassifier(width=32, max_epochs=4),
                                {"lr": loguniform(1e-3, 1e-1), "width": [16, 32, 64]},
                                n_candidates=16, n_finalists=3, cv=3, engine="sequential",
                                random_state=0, checkpoint=ck, refit=False)
    resumed = search(str(folder)).fit(X, y)
    assert resumed.n_resumed_ == 3
    _same_results(resumed, search(None).fit(X, y))
