"""Jobs of the fused engine (its groups, the tasks that train alone) over ``n_jobs`` processes.

Where the jobs train on the CPU of a Linux machine, the workers are *forked* from the
process that runs the search when the jobs start: they begin with its imports, its warmed
kernels and its data, so a process's first search pays no worker start-up (no interpreter,
no ``import torch``), and the jobs' inputs are inherited, never pickled: a worker receives an
index, and sends back only its results. Each worker runs one torch thread (with ``n_jobs``
workers the cores are taken; a forked child must not start OpenMP's thread pool again, which
hangs once the parent has used it) and draws no dropout noise ahead on a spare core (there is
none). Elsewhere (a GPU job, CUDA already started, no ``fork``, or a joblib backend the user
chose with ``joblib.parallel_config``), the jobs go through ``joblib.Parallel`` as any
scikit-learn search does. Inside a worker of a pool (a forked one, or joblib's: a search
that ``joblib.Parallel`` runs), the jobs run in that worker, whose pool has the cores. Each
result comes back as soon as it is done, with its job's index.
"""

import functools
import multiprocessing
import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from numbers import Integral

import cloudpickle
import joblib
import torch
from joblib import Parallel, delayed
from joblib._parallel_backends import LokyBackend
from joblib.parallel import get_active_backend

from ..nets import find_net
from . import _noise

__all__ = ["check_n_jobs", "n_workers", "run_jobs", "trains_on_cpu"]

_JOBS = []  # the jobs of the running pool: forked workers read them from here


def check_n_jobs(n_jobs):
    """``n_jobs`` as scikit-learn accepts it (None, or a non-zero int: -1 all cores, -2 all
    but one...), or a ``ValueError`` naming what is accepted, before any training."""
    if n_jobs is None or (isinstance(n_jobs, Integral) and not isinstance(n_jobs, bool)
                          and n_jobs != 0):
        return n_jobs
    raise ValueError(f"n_jobs must be None or a non-zero int (-1: all cores); got {n_jobs!r}")


def n_workers(n_jobs):
    """How many processes ``n_jobs`` means here (joblib's reading: None is 1 outside a
    ``joblib.parallel_config``)."""
    return joblib.effective_n_jobs(check_n_jobs(n_jobs))


def trains_on_cpu(estimator, params=()):
    """Whether ``estimator``'s net, with each of ``params`` (dicts of its parameters), trains
    on the CPU."""
    net, prefix = find_net(estimator)
    devices = {str(p.get(f"{prefix}device", net.device)) for p in params} or {str(net.device)}
    return all(d == "cpu" or d.startswith("cpu:") for d in devices)


def _forks(on_cpu, backend=None):
    """Whether the jobs go to forked workers: on a Linux CPU, CUDA not started, and joblib's
    active ``backend`` its default (a ``joblib.parallel_config(backend=...)`` the user chose,
    dask say, is used as chosen)."""
    backend = get_active_backend()[0] if backend is None else backend
    return (on_cpu and sys.platform.startswith("linux")
            and "fork" in multiprocessing.get_all_start_methods()
            and not torch.cuda.is_initialized() and isinstance(backend, LokyBackend))


@functools.lru_cache(maxsize=1)
def _warm():
    """What every worker would otherwise import on its own (and this process again after
    them): torch imports its compiler stack (``torch._dynamo``, sympy: about a second) when
    a process makes its first optimiser. Made here once, before the workers are forked."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _start_worker():
    torch.set_num_threads(1)
    _noise.IN_WORKER = True


def _run(i):
    # cloudpickle, as joblib's workers: a class of a module the parent cannot import by name
    # (a notebook's, a test's) travels by value
    return cloudpickle.dumps(_JOBS[i]())


def _run_as_worker(job, parent):
    if os.getpid() != parent:  # a joblib worker process (not a thread of the parent's)
        _noise.IN_WORKER = True
    return job()


def run_jobs(jobs, n_jobs, on_cpu=True):
    """Each ``job()`` of ``jobs`` (callables) over ``n_jobs`` processes (in this process,
    in order, when that is one); a generator of ``(index, result)``, each as soon as it is
    ready (with forked workers, in the order they finish)."""
    jobs = list(jobs)
    n = min(n_workers(n_jobs), len(jobs))
    global _JOBS
    backend, _ = get_active_backend()
    # in one process: one job, or jobs inside a pool's job (a forked worker, or a joblib
    # worker, whose pool already has the cores)
    if n <= 1 or _JOBS or getattr(backend, "nesting_level", 0) > 0:
        for i, job in enumerate(jobs):
            yield i, job()
        return
    if not _forks(on_cpu, backend):
        yield from enumerate(Parallel(n_jobs=n, return_as="generator")(
            delayed(_run_as_worker)(job, os.getpid()) for job in jobs))
        return
    _warm()
    _JOBS = jobs
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(n, mp_context=context, initializer=_start_worker) as pool:
            futures = {pool.submit(_run, i): i for i in range(len(jobs))}
            for future in as_completed(futures):
                yield futures[future], pickle.loads(future.result())
    finally:
        _JOBS = []
