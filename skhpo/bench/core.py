"""One runner for every benchmark protocol: jobs in, rows out, one summary, one table printer.

A protocol (``runner`` for ``skhpo bench``, ``population_protocol``, ``cutting_plane_protocol``,
``hyperlocal_protocol``, ``synthetic``, ``bayesmark_protocol``) supplies its jobs, a
``run_one(*job) -> row`` function, the statistics of its summary and the columns of its table;
this module runs the jobs (:func:`run_jobs`), groups the rows (:func:`summarize`), prints
(:func:`print_table`, :func:`print_pairwise`) and writes (:func:`write_csv`) them.
"""

import csv
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from .stats import pairwise_tests, wins_ties_losses

__all__ = ["Column", "bar", "epochs_spent", "plain_params", "print_pairwise", "print_table",
           "progress_printer", "run_jobs", "summarize", "trainings_spent", "write_csv",
           "write_results"]


# -- running -------------------------------------------------------------------------------

def run_jobs(jobs, run_one, *, n_jobs=None, progress=None, checkpoint=None):
    """``[run_one(*job) for job in jobs]``, in job order.

    ``n_jobs`` > 1 runs the jobs themselves in parallel (joblib; ``progress`` then follows
    completion order); None or 1 runs them one after the other in this process, so a
    protocol whose searches use workers of their own passes its ``n_jobs`` to them instead.
    ``progress(done, total, row)`` is called after each job. ``checkpoint``
    (:class:`skhpo.checkpoint.Checkpoint`): each finished job's row is written to it as the
    job finishes, and a job whose row it holds is not run again (its row is reported first).
    """
    from joblib import Parallel, delayed

    jobs = [tuple(job) for job in jobs]
    keys = [None if checkpoint is None else checkpoint.key("job", job) for job in jobs]
    rows = [None if key is None else checkpoint.load("job", key) for key in keys]
    todo = [i for i, row in enumerate(rows) if row is None]
    done = 0
    for row in rows:
        if row is not None:
            done += 1
            if progress is not None:
                progress(done, len(jobs), row)
    if n_jobs in (None, 1):
        outputs = ((i, run_one(*jobs[i])) for i in todo)
    else:
        outputs = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(_indexed)(run_one, i, jobs[i]) for i in todo)
    for i, row in outputs:
        rows[i] = row
        if checkpoint is not None:
            checkpoint.save("job", keys[i], row)
        done += 1
        if progress is not None:
            progress(done, len(jobs), row)
    return rows


def _indexed(run_one, i, job):
    return i, run_one(*job)


def progress_printer(describe_row, total_start=None):
    """A ``progress(done, total, row)`` that prints a bar and ``describe_row(row)``."""
    start = time.perf_counter() if total_start is None else total_start

    def progress(done, total, row):
        print(f"{bar(done, total, time.perf_counter() - start)} {describe_row(row)}",
              flush=True)
    return progress


def bar(done, total, elapsed, width=20):
    """``[#####.....] 3/12 0:42 left``: runs done, and the time left at the mean pace."""
    filled = round(width * done / total)
    left = elapsed / done * (total - done)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"{int(left // 60)}:{int(left % 60):02d} left")


# -- summarising ---------------------------------------------------------------------------

def _iqr(values):
    q1, q3 = np.percentile(values, [25, 75])
    return q3 - q1


STATS = {"median": np.median, "mean": np.mean, "std": np.std, "iqr": _iqr}


def summarize(rows, by, metrics, *, order="sorted", count="n"):
    """One row per group of rows with equal ``by`` keys: the keys, the group's size (under
    ``count``) and, for each ``name: (statistic, value)`` of ``metrics``, the statistic
    (``median``, ``mean``, ``std``, ``iqr``) over the group of ``value`` (a row key, or a
    function of a row). A metric whose key the rows lack (or whose function raises
    ``KeyError``) is left out. Groups come
    ``"sorted"`` or in first-seen order (``"seen"``)."""
    keys = [tuple(r[k] for k in by) for r in rows]
    groups = sorted(set(keys)) if order == "sorted" else list(dict.fromkeys(keys))
    out = []
    for group in groups:
        sel = [r for r, k in zip(rows, keys) if k == group]
        entry = {**dict(zip(by, group)), count: len(sel)}
        for name, (stat, value) in metrics.items():
            if isinstance(value, str):
                if value not in sel[0]:
                    continue
                values = [r[value] for r in sel]
            else:
                try:
                    values = [value(r) for r in sel]
                except KeyError:
                    continue
            entry[name] = float(STATS[stat](np.asarray(values, dtype=float)))
        out.append(entry)
    return out


# -- reading a fitted search ----------------------------------------------------------------

def epochs_spent(search, max_epochs):
    """Training epochs a fitted search spent: its own ``n_epochs_`` (every skhpo search);
    for scikit-learn's and Optuna's searches, every CV fit and the refit at ``max_epochs``
    (successive halving over ``max_epochs``: its resources, less the epochs a fused halving's
    survivors continued from: ``candidate_starts_``)."""
    if hasattr(search, "n_epochs_"):
        return search.n_epochs_
    refit = max_epochs if search.refit else 0
    splits = search.n_splits_ if hasattr(search, "n_splits_") else search.cv
    if "n_resources" in search.cv_results_:  # less what survivors continued from
        starts = getattr(search, "candidate_starts_", 0)
        return int(np.sum(np.subtract(search.cv_results_["n_resources"], starts))) * splits \
            + refit
    return len(search.cv_results_["mean_test_score"]) * splits * max_epochs + refit


def trainings_spent(search):
    """Nets a fitted search trained: its own ``n_trainings_`` (every skhpo search), else its
    CV fits and the refit (scikit-learn's and Optuna's searches)."""
    if hasattr(search, "n_trainings_"):
        return search.n_trainings_
    splits = search.n_splits_ if hasattr(search, "n_splits_") else search.cv
    return len(search.cv_results_["mean_test_score"]) * splits + int(bool(search.refit))


def plain_params(params, digits=None):
    """``params`` as JSON-ready values: numpy scalars as Python numbers, sequences of numbers
    as lists (rounded to ``digits`` if given), anything else as its ``repr``."""
    def plain(v):
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and digits is not None:
            return round(v, digits)
        if isinstance(v, (int, float, str, bool, type(None))):
            return v
        if np.ndim(v) == 1:
            return [plain(float(a)) for a in v]
        return repr(v)
    return {k: plain(v) for k, v in params.items()}


# -- printing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One column of a printed table: its ``header``, the row ``value`` (a key or a function
    of the row), the format ``spec`` of the value and a ``suffix`` (a unit)."""

    header: str
    value: object
    spec: str
    suffix: str = ""

    def width(self):
        return len(format(0 if self.spec[-1] in "dfg" else "", self.spec)) + len(self.suffix)

    def head(self):
        align = "<" if self.spec.endswith("s") and not self.spec.startswith(">") else ">"
        return f"{self.header:{align}{self.width()}s}"

    def cell(self, row):
        if isinstance(self.value, str):
            if self.value not in row:
                return " " * self.width()
            value = row[self.value]
        else:
            value = self.value(row)
        return f"{value:{self.spec}}{self.suffix}"


def print_table(rows, columns, title=None):
    """The rows under a header line, one formatted line each."""
    if title is not None:
        print(title)
    print(" ".join(c.head() for c in columns))
    for row in rows:
        print(" ".join(c.cell(row) for c in columns))


def print_pairwise(rows, *, group="task", method="method", score="test_score", title=None,
                   each=False):
    """Per group, two-sided Mann-Whitney U tests of ``score`` between every pair of methods
    (Benjamini-Hochberg at 5 %), then wins / ties / losses pooled over the groups. ``rows``
    may hold one score per row, or a list of scores per row (``each``: print every test)."""
    tests = []
    for name in sorted({r[group] for r in rows}):
        scores = {}
        for r in rows:
            if r[group] == name:
                value = r[score]
                scores.setdefault(r[method], []).extend(
                    value if isinstance(value, list) else [value])
        if len(scores) > 1 and min(len(v) for v in scores.values()) > 1:
            found = pairwise_tests(scores)
            tests += found
            if each:
                for t in found:
                    print(f"  {name:14s} {t['a']} vs {t['b']}: p = {t['p']:.3g} "
                          f"(BH-adjusted {t['p_adjusted']:.3g}) -> {t['better'] or 'tie'}")
    if not tests:
        return
    print(title or f"\nwins / ties / losses over {group}s (two-sided Mann-Whitney U on test "
          "scores across seeds, Benjamini-Hochberg at 5 %)")
    for name, c in wins_ties_losses(tests).items():
        print(f"  {name:12s} {c['wins']} / {c['ties']} / {c['losses']}")


# -- writing -------------------------------------------------------------------------------

def write_csv(path, rows, exclude=()):
    """``rows`` (dicts) to a CSV file; columns in first-seen order, minus ``exclude``."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in exclude]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(path, value):
    """``value`` as JSON in the file ``path`` (indented; nothing when ``path`` is None): the
    ``--out`` of the benchmark scripts and commands."""
    if path is None:
        return
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


def write_results(out, rows, summary):
    """``results.csv`` (one row per run) and ``summary.csv`` in the folder ``out``."""
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "results.csv"), rows)
    write_csv(os.path.join(out, "summary.csv"), summary)
