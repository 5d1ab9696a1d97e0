"""Each model's dropout noise, drawn from its own generator as ``F.dropout`` draws it in the
model's own fit, and drawn ahead on a second core where that is safe.

The draws are fixed by the contract (each model's masks are the ones its own fit would draw,
in the same order from the same generator); when and where they are made is not. On a CPU,
``bernoulli_(q)`` is one double ``u ~ U[0, 1)`` per value, kept where ``u < q`` (checked once
per process: :func:`uniform_is_bernoulli`); the noise is then ``mask / (1 - p)`` in the
activations' dtype, as ``F.dropout``'s ``div_(1 - p)`` gives it.

:class:`Prefetch` draws the next step's noise of every model in a worker thread while the
group computes the current step (torch's generators and its ops release the GIL, so the draws
run on another core): a model's draws still come from its own generator in its own order, so
the masks are bitwise the same; only the time they take leaves the critical path. The group
uses it only where nothing else draws from the models' generators between two steps of an
epoch (no callback of theirs draws).
"""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["Prefetch", "draw_noise", "spare_core", "uniform_is_bernoulli"]

#: set in the engine's worker processes (:mod:`._workers`): their siblings have the other cores
IN_WORKER = False


@functools.lru_cache(maxsize=1)
def uniform_is_bernoulli():
    """Whether this torch draws ``bernoulli_(q)`` on a CPU tensor as ``uniform_`` in double
    precision compared with ``q`` (same values, same generator state after): checked once on
    a few thousand draws with odd shapes and rates."""
    for q, shape in ((0.7, (64, 33)), (0.05, (1001,)), (0.999, (3, 5, 7))):
        a, b = torch.Generator().manual_seed(17), torch.Generator().manual_seed(17)
        mask = torch.empty(shape).bernoulli_(q, generator=a)
        same = torch.equal(mask, (torch.empty(shape, dtype=torch.float64).uniform_(
            generator=b) < q).to(mask.dtype))
        if not (same and torch.equal(a.get_state(), b.get_state())):
            return False
    return True


def spare_core():
    """Whether this process may run on more than one CPU core (a worker of the engine's
    pool leaves them to its siblings)."""
    if IN_WORKER:
        return False
    try:
        return len(os.sched_getaffinity(0)) > 1
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) > 1


def draw_noise(shape, dtype, rates, generators):
    """Dropout noise ``(len(rates), *shape)`` in ``dtype``: row k is ``empty(shape)
    .bernoulli_(1 - p_k)`` from ``generators[k]``, divided by ``1 - p_k``; ones where
    ``p_k = 0`` (nothing drawn, as ``F.dropout`` draws nothing then). None when every rate
    is 0."""
    if not any(rates):
        return None
    view = (-1, *[1] * len(shape))
    keep64 = torch.tensor([1 - p for p in rates], dtype=torch.float64).view(view)
    if uniform_is_bernoulli():
        # each model's uniforms in one small buffer, compared while still in the cache,
        # straight into its row of the noise; rows of p = 0 are not drawn: ones
        noise = torch.empty((len(rates), *shape), dtype=dtype)
        draws = torch.empty(shape, dtype=torch.float64)
        for row, generator, p in zip(noise.unbind(0), generators, rates):
            if p > 0:
                draws.uniform_(generator=generator)
                torch.lt(draws, 1 - p, out=row)
            else:
                row.fill_(1.0)
        # kept values times 1 / (1 - p) in the dtype: the quotient div_ gives a kept 1.0
        return noise.mul_(torch.ones((), dtype=dtype).div(keep64.to(dtype)))
    # every row is drawn when every rate is positive: no need to fill it first
    noise = (torch.empty if all(rates) else torch.ones)((len(rates), *shape), dtype=dtype)
    for row, generator, p in zip(noise.unbind(0), generators, rates):
        if p > 0:  # drawn in place: the same numbers as empty(shape).bernoulli_
            row.bernoulli_(1 - p, generator=generator)
    return noise.div_(keep64.to(dtype))  # one division: each model's div_(1 - p)


class Prefetch:
    """Draws ahead, in one worker thread, the noise of a whole step: for each dropout layer
    of the module, for the models ``members`` (their rates and generators), of the shapes
    the step's batch size gives."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skhpo-noise")
        self._pending = None  # (step key, members, future of {layer: noise or None})

    def submit(self, key, members, layers):
        """Start drawing step ``key``'s noise: ``layers`` is ``[(shape, dtype, rates,
        generators)]`` per dropout layer, rows in the order of ``members``."""
        self._pending = (key, list(members), self._pool.submit(
            lambda: [draw_noise(*layer) for layer in layers]))

    def take(self, key):
        """``(members, [noise per layer])`` drawn for step ``key`` (waiting for it), or None
        when nothing was drawn for it."""
        if self._pending is None or self._pending[0] != key:
            return None
        _, members, future = self._pending
        self._pending = None
        return members, future.result()

    def close(self):
        if self._pending is not None:  # the draws it started still end (their generators)
            self._pending[2].result()
            self._pending = None
        self._pool.shutdown(wait=True)
