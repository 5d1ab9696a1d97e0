"""K models of one architecture trained together: their weights the rows of one stacked
``(K, P)`` buffer, one batched forward and backward through their layout (:mod:`._layouts`)
and one optimiser step per minibatch.

Each model is handed in *initialised*: an ordinary net fitted for 0 epochs (so its module, its
classes, its preprocessing and its validation split are exactly what the net's own ``fit``
builds from the task's seed), with the state of torch's generator right after that
initialisation. Everything the net's own training would draw from torch's global generator
(the batch order, one ``randperm`` per epoch; the dropout masks, layer by layer and batch by
batch; the validation iterator's seed) is drawn from that model's own generator in the same
order. So a model's training does not depend on the other models of its group, and it
follows the trajectory of the net's own ``fit`` (to float32 rounding: a batched matrix
product sums in another order).

Around the batched arithmetic, each model's own skorch code runs as in its own fit
(:mod:`._replay`): its callbacks at every hook, its history, its validation pass. Its
module's parameters are views of its row of the buffer, and their gradients views of its row
of the gradient, so a callback reads and changes the model's live weights and gradients (a
``GradientNormClipping`` clips them in place, an ``EarlyStopping`` copies them). The step is
one batched Adam or SGD (:mod:`._adam`, :mod:`._sgd`) where every model trains with torch's
plain Adam or SGD and no callback can change its optimiser; else one optimiser of the models'
own class over their rows, each row with its model's current settings
(:mod:`._stacked`: any torch optimiser, and the schedulers that change its settings); else,
where a callback may read or change more, each model's own optimiser steps on its views.
"""

import math
import time

import torch
import torch.nn.functional as F
from skorch import NeuralNetBinaryClassifier
from skorch.history import History

from ..hyper.space import penalty_term
from ..nets import FiniteLossGuard, divergence
from ._adam import BatchedAdam
from ._inputs import apply, stack
from ._layouts import ChainLayout, MLPLayout, layout_of
from ._noise import Prefetch, draw_noise, spare_core
from ._replay import Replay
from ._sgd import BatchedSGD
from ._stacked import StackedOptimizer, row_state, stackable
from .eligibility import BATCHED, known_loss

#: the bytes of one layer's activations a chunk of models keeps (a CPU's L2 cache)
CHUNK_BYTES = 1 << 20

__all__ = ["CHUNK_BYTES", "CLASSES_ACROSS", "Member", "StackedGroup", "Valid", "batched_loss",
           "batched_optimizer", "epoch_history"]

class Valid:
    """A model's validation part: its inputs ``X`` and targets ``y`` (tensors, as its net
    receives them), the ``batch`` size of its validation iterator and whether that iterator
    draws a seed from torch's generator on every pass (``DataLoader``)."""

    def __init__(self, X, y, batch, draws):
        self.X, self.y, self.batch, self.draws = X, y, int(batch), draws


class Member:
    """One model of a group.

    Parameters
    ----------
    net : skorch net
        Initialised (fitted for 0 epochs).
    X, y : torch.Tensor
        The inputs (float32, after preprocessing) and targets (as its loss takes them) that
        its training ``rows`` index; members without preprocessing share one ``X``.
    generator : torch.Generator
        Its own generator, where its net's initialisation left torch's.
    epochs : int
        Its ``max_epochs``.
    rows : array-like or None, default=None
        Its training rows (None: all of them).
    shuffle : str, default="array"
        How its own fit orders an epoch (:func:`_epoch_order`).

    Set after construction, when the net validates or its callbacks need them: ``valid``
    (a :class:`Valid`, or None), ``fit_rows`` (the rows of X its ``fit`` received, for the
    data's fingerprint; default ``rows``), ``fit_kwargs`` (``X``, ``y`` for
    ``on_train_begin`` / ``on_train_end``) and ``datasets`` (``dataset_train``,
    ``dataset_valid`` for the epoch hooks).

    Its divergence rule is its net's :class:`~skhpo.nets.FiniteLossGuard`'s (``max_ratio``
    times its first batch's loss; without a guard, non-finite losses only).

    A member that continues an earlier training of its task (:mod:`._resume`) has
    ``start``, the epochs done; the members of one group share it.
    """

    def __init__(self, net, X, y, generator, epochs, rows=None, shuffle="array"):
        self.net, self.X, self.y, self.generator, self.epochs = net, X, y, generator, epochs
        self.rows = torch.arange(len(y)) if rows is None else torch.as_tensor(rows)
        self.fit_rows = self.rows
        self.shuffle = shuffle  # how its own fit orders an epoch (see _epoch_order)
        self.valid, self.fit_kwargs, self.datasets = None, {}, {}
        self.losses, self.error, self.seconds, self.stopped = [], "", 0.0, False
        self.moved = ""  # why it must train alone after all (set before it joins a group)
        self.start, self.restart = 0, ""  # epochs it continues from; why not (._resume)
        self.resumed = None  # what it continues from (._resume.resume)
        guards = [cb for _, cb in getattr(net, "callbacks_", ())
                  if isinstance(cb, FiniteLossGuard)]
        self.max_ratio = guards[0].max_ratio if guards else None
        self.first_loss = None


class StackedGroup:
    """Train the ``members`` (:class:`Member`: nets of one architecture, one batch size and
    one optimiser class, any layout) together; :meth:`run` trains them to their epochs (or
    until their own callbacks stop them) and hands each back to its net."""

    def __init__(self, members, batch_size, classifier, device="cpu"):
        self.members, self.B, self.classifier = members, int(batch_size), classifier
        self.device = torch.device(device)
        first = members[0]
        self.layout = layout_of(first.net.module_, apply(lambda t: t[first.rows[:2]], first.X))
        self.rates = [[float(layer.p) for layer in self.layout.dropouts(m.net.module_)]
                      for m in members]
        self.replays = [Replay(m) for m in members]
        # the next step's dropout noise drawn on a second core where no callback draws
        self._prefetch = Prefetch() if spare_core() and any(any(r) for r in self.rates) and \
            all(r.draws_nothing for r in self.replays) else None
        self._ahead, self._noise_shapes = None, {}
        nets = [m.net for m in members]
        # every model's weights as one row of a (K, P) buffer (the layout's order)
        flat = torch.stack([self.layout.flat(m.net.module_) for m in members]).to(self.device)
        self.opt = _stepper(flat, nets, self.replays, self.layout)
        self._flat = flat
        # each buffer of the module (BatchNorm's running statistics) stacked per model
        self.buffers = {name: torch.stack([m.net.module_.get_buffer(name) for m in members])
                        .to(self.device) for name in self.layout.buffer_names}
        coefs = [n.penalty_coefficients() if getattr(n, "_penalized", False) else None
                 for n in nets]
        self.l2 = self._coefficients(coefs, "l2")
        self.l1 = self._coefficients(coefs, "l1")
        self.alive = list(range(len(members)))
        (self.X, self.X_shared), (self.y, self.y_shared) = self._stack("X"), self._stack("y")
        self.hooked = self.opt is None or any(r.reads_grads for r in self.replays)
        # a net whose get_loss is its own: called per model on its slice
        self.own_loss = known_loss(type(first.net)) is None
        self.flatten = type(first.net).infer is NeuralNetBinaryClassifier.infer
        self._views = {}
        self._leaves()

    @property
    def flat(self):
        """The ``(live models, P)`` buffer of the live models' weights."""
        return self.opt.params[0] if self.opt is not None else self._flat

    def _stack(self, name):
        """The members' data: one shared tensor (2-D), or each member's own stacked and
        zero-padded (3-D, member first), so that a step gathers every batch at once."""
        arrays = [getattr(m, name) for m in self.members]
        if all(a is arrays[0] for a in arrays):
            return arrays[0], True
        return apply(_padded, *arrays), False

    def _leaves(self):
        """Per parameter, views of the buffer that autograd treats as leaves: their gradients
        come back apart and are joined into one buffer-shaped gradient (cheaper than
        differentiating through slices of the buffer). Each live model's parameters become
        views of its row (the net's own module sees the weights the group trains)."""
        self.leaves = [t.requires_grad_(True) for t in self.layout.views(self.flat)]
        # the live models in chunks whose activations stay in the cache (_chunk_size), each
        # with leaves of its own rows: a chunk runs its forward and backward at once
        n, size = len(self.alive), self._chunk_size()
        self._chunks = [(0, n, self.leaves)] if size >= n else [
            (a, min(n, a + size), [t.requires_grad_(True) for t in
                                   self.layout.views(self.flat[a:min(n, a + size)])])
            for a in range(0, n, size)]
        self._owners = torch.tensor(self.alive)[:, None]  # each live model's data row
        # the gradient buffer of the live models, filled every step, and per live model its
        # parameters and their views of its row of it (a module's parameters are read once)
        self._grad = torch.empty_like(self.flat)
        self._params, self._grads = [], []
        for j, k in enumerate(self.alive):
            module = self.members[k].net.module_
            params = list(module.parameters())
            self._params.append(params)
            self._grads.append(self.layout._tensors(self._grad[j]))
            for p, view in zip(params, self.layout._tensors(self.flat[j])):
                p.data = view
            for name, stacked in self.buffers.items():
                _set_buffer(module, name, stacked[j])
            if k not in self._views:  # what a state_dict holds: copies, not views
                self._views[k] = module.register_state_dict_post_hook(_own_copies)
        self._set_limits()

    def _chunk_size(self):
        """How many models run their forward and backward together: on a CPU, as many as keep
        one layer's activations (batch x widest layer) within :data:`CHUNK_BYTES`, for the
        layouts whose activations are (batch, features) (a group of 48 models of 128 units
        at batch 256: 1.1-1.5x faster a step in chunks of 8, measured on a 1 MiB L2 cache);
        elsewhere, and on a GPU, all of them."""
        if self.device.type != "cpu" or not isinstance(self.layout, (MLPLayout, ChainLayout)):
            return len(self.alive)
        widest = max(max(W.shape[1:]) for W in self.layout.linear_weights(self.leaves))
        return max(1, CHUNK_BYTES // (self.B * widest * self.flat.element_size()))

    def _set_limits(self):
        """Each live model's loss bound for the fast check (its guard: max_ratio x its first
        batch's loss)."""
        self._limits = torch.tensor([_limit(self.members[k]) for k in self.alive],
                                    dtype=torch.float64)

    def _coefficients(self, coefs, kind):
        """``(K, layers)`` coefficients, or None when no model has a non-zero one."""
        rows = [c[kind] if c is not None else [0.0] * self.layout.n_linear for c in coefs]
        if not any(any(r) for r in rows):
            return None
        return torch.tensor(rows, dtype=self.flat.dtype, device=self.device)

    # -- the loop ---------------------------------------------------------------------------

    def run(self):
        try:
            return self._run()
        finally:
            if self._prefetch is not None:
                self._prefetch.close()

    def _run(self):
        start = time.perf_counter()
        first = self.members[0].start  # a continued group's epochs go on from its history
        for epoch in range(first, max(m.epochs for m in self.members)):
            t0 = time.perf_counter()
            self._each("epoch_begin")
            self._retire([j for j, k in enumerate(self.alive) if self.members[k].stopped
                          or self.members[k].error])
            if not self.alive:
                break
            # one permutation of the model's own rows per epoch, drawn as its own fit draws it
            orders = [m.rows[_epoch_order(m)] for m in (self.members[k] for k in self.alive)]
            counts = {k: math.ceil(len(o) / self.B) for k, o in zip(self.alive, orders)}
            steps = max(counts.values())
            for s in range(steps):
                self._step(orders, s, epoch, steps)
                if not self.alive:
                    break
            self._record_count("train", counts)
            self._validate()
            seconds = (time.perf_counter() - t0) / max(1, len(self.alive))
            self._each("epoch_end", seconds)
            self._retire([j for j, k in enumerate(self.alive)
                          if self.members[k].epochs == epoch + 1 or self.members[k].stopped
                          or self.members[k].error])
            if not self.alive:
                break
        self._retire(range(len(self.alive)))
        seconds = (time.perf_counter() - start) / len(self.members)
        for m in self.members:
            m.seconds = seconds
        return self.members

    def _each(self, hook, *args):
        """Every live model's ``hook`` (:class:`~._replay.Replay`)."""
        for k in self.alive:
            if not self.members[k].error:
                getattr(self.replays[k], hook)(*args)

    def _record_count(self, prefix, counts):
        """``<prefix>_batch_count`` in each model's history (``counts``: live model ->
        batches), as ``run_single_epoch`` records it after its pass."""
        for k in self.alive:
            if k in counts and not self.members[k].error:
                self.members[k].net.history.record(f"{prefix}_batch_count", counts[k])

    def _step(self, orders, s, epoch, steps):
        """One batch slot: every live model's s-th batch (a model with fewer rows may have a
        short batch or none: it is then frozen for this step)."""
        sizes = [max(0, min(self.B, len(o) - s * self.B)) for o in orders]
        self._draw_ahead(epoch, s, orders, steps)
        parts = self._gather_batches(orders, s, sizes)
        batches = {j: (apply(lambda t, i=i: t[i], xb), yb[i])
                   for pos, xb, yb in parts for i, j in enumerate(pos)}
        for j, batch in batches.items():  # on_batch_begin, before the forward (own fit)
            if not self.replays[self.alive[j]].batch_begin(batch, True):
                sizes[j] = 0  # stopped or failed here: no step, as in its own fit
        if any(sizes[j] == 0 for j in batches):
            parts = [(pos, xb, yb) for pos, xb, yb in
                     (_keep_rows(part, sizes) for part in parts) if pos]
        losses, outs = self._forward_backward(parts)
        self._ahead = None  # this step's noise is used
        flat_grad = self._grad
        active = [n > 0 for n in sizes]
        if self.hooked:
            self._hand_grads(flat_grad, batches, active)
        if self.opt is not None:
            self.opt.step([flat_grad], None if all(active) else torch.tensor(active))
            for j, k in enumerate(self.alive):  # its scheduler sees its optimiser stepped
                if active[j]:
                    self.members[k].net.optimizer_._opt_called = True
        else:
            self._own_steps(active)
        for j, out in outs.items():
            if not self.members[self.alive[j]].error:
                self.replays[self.alive[j]].batch_end(batches[j], True, losses[j], out)
        self._check(losses.detach().double().cpu(), sizes, s == 0 and epoch == 0, epoch)
        done = [j for j, k in enumerate(self.alive)
                if self.members[k].stopped or self.members[k].error]
        if done:
            keep = self._retire(done)
            orders[:] = [orders[j] for j in keep]

    def _gather_batches(self, orders, s, sizes):
        """``[(live positions, X batches, y batches)]``, one entry per batch size: each
        model's batch as its iterator yields it, gathered for the group at once."""
        by_size = {}
        for j, n in enumerate(sizes):
            if n:
                by_size.setdefault(n, []).append(j)
        parts = []
        for n, pos in by_size.items():
            rows = torch.stack([orders[j][s * self.B:s * self.B + n] for j in pos])
            owners = self._owners if len(pos) == len(sizes) else \
                torch.tensor([self.alive[j] for j in pos])[:, None]
            X = apply(_gather, self.X, *[_same(self.X, v) for v in
                                         (self.X_shared, owners, rows)])
            parts.append((pos, X, _gather(self.y, self.y_shared, owners, rows)))
        return parts

    def _check(self, values, sizes, first, epoch):
        """The divergence rule of each model's guard, on its batch loss."""
        if first:  # each model's first batch: the reference of its guard
            for j, v in enumerate(values.tolist()):
                self.members[self.alive[j]].first_loss = v
            self._set_limits()
        if bool((values < self._limits).all()):  # NaN compares False: it is checked below
            return
        for j, v in enumerate(values.tolist()):
            member = self.members[self.alive[j]]
            reason = divergence(v, member.first_loss, member.max_ratio) if sizes[j] else ""
            if reason and not member.error:
                member.error = (f"diverged: {reason} in epoch {epoch + 1}; the candidate "
                                "diverged (try a smaller learning rate)")

    def _forward_backward(self, parts):
        """Every live model's loss on its batch and its output, and the gradient of its loss in
        its row of ``self._grad``, chunk by chunk (``parts``: :meth:`_gather_batches`'s)."""
        losses, outs = [None] * len(self.alive), {}
        for a, b, leaves in self._chunks:
            chunk = [part for part in (_within(part, a, b) for part in parts) if part[0]]
            if not chunk:  # no model of the chunk has a batch in this step
                self._grad[a:b].zero_()
                losses[a:b] = [self.leaves[0].new_zeros(())] * (b - a)
                continue
            each, chunk_outs = self._losses(chunk, leaves, a, b)
            self._gradient(each, leaves, a, b)
            losses[a:b] = list(each.detach().unbind(0))
            outs.update(chunk_outs)
        return torch.stack(losses), outs

    def _gradient(self, losses, leaves, a, b):
        """The gradient of the losses of the models at live positions ``a:b`` into their rows of
        ``self._grad``. A net's own ``get_loss`` may use its module's parameters directly (a
        penalty on its weights): those are the member's own tensors (views of its row, not the
        group's leaves), so their gradients are taken too and added into its row."""
        own = [(j, p) for j in range(a, b) for p in self._params[j]] if self.own_loss else []
        grads = torch.autograd.grad(losses.sum(), leaves + [p for _, p in own],
                                    allow_unused=True)
        n = len(leaves)
        torch.cat([(torch.zeros_like(t) if g is None else g).reshape(b - a, -1)
                   for g, t in zip(grads[:n], leaves)], dim=1, out=self._grad[a:b])
        if own:
            rows = {}
            for (j, _), g in zip(own, grads[n:]):
                rows.setdefault(j, []).append(g)
            for j, gs in rows.items():
                for view, g in zip(self._grads[j], gs):
                    if g is not None:
                        view.add_(g)

    def _hand_grads(self, flat_grad, batches, active):
        """Each model's gradients as its parameters' ``.grad`` (views of its row of the
        gradient ``flat_grad``, which a hook may change in place; None for a frozen
        parameter), then its ``on_grad_computed``."""
        for j, k in enumerate(self.alive):
            if not active[j]:
                continue
            for p, g in zip(self._params[j], self._grads[j]):
                p.grad = g if p.requires_grad else None
            if self.replays[k].reads_grads:
                self.replays[k].grad_computed(batches[j])

    def _own_steps(self, active):
        """Each active model's own torch optimiser, on its views."""
        for j, k in enumerate(self.alive):
            if active[j] and not self.members[k].error:
                self.members[k].net.optimizer_.step()

    def _losses(self, parts, leaves, a, b):
        """The training loss (criterion + its penalties) and the output of each model at live
        positions ``a:b`` (``leaves``: their rows' leaves) on its batch. Models whose batches
        differ in size (the last batch of CV folds of unequal size) run in separate products,
        so a model's arithmetic never depends on the others' sizes."""
        losses, outs = [None] * (b - a), {}
        rows = {name: buffer[a:b] for name, buffer in self.buffers.items()}
        for pos, xb, yb in parts:
            local = [j - a for j in pos]
            every = len(pos) == b - a
            views = leaves if every else [t[local] for t in leaves]
            buffers = rows if every else {n: buffer[local] for n, buffer in rows.items()}
            members = [self.alive[j] for j in pos]
            out = self._infer(self.layout.forward(
                views, apply(lambda t: t.to(self.device), xb),
                lambda i, h, members=members: self._dropout(i, h, members), buffers))
            if not every:  # the running statistics the forward updated, back in place
                for name, buffer in buffers.items():
                    rows[name][local] = buffer
            each = self._loss(out, yb.to(self.device), xb, members)
            for i, j in enumerate(pos):
                losses[j - a], outs[j] = each[i], out[i]
        zero = leaves[0].new_zeros(())
        return torch.stack([zero if v is None else v for v in losses]) + \
            self._penalty(leaves, a, b), outs

    def _infer(self, out):
        """The models' outputs as their nets' ``infer`` returns them:
        ``NeuralNetBinaryClassifier`` flattens an output of shape (n, 1) to (n,) (and its
        own fit fails on any other shape, as each model's does here)."""
        if not self.flatten:
            return out
        if out.dim() > 3 or (out.dim() == 3 and out.shape[2] != 1):
            raise ValueError(f"Expected module output to have shape (n,) or (n, 1), got "
                             f"{tuple(out.shape[1:])} instead")
        return out.reshape(out.shape[0], -1)

    def _loss(self, out, y, X, members):
        """Each model's criterion on its batch (the penalties are added apart): skhpo's
        models' batched criterion, a module on the ``torch.func`` path through its net's
        ``get_loss``, a net that overrides ``get_loss`` through its own, per model."""
        net = self.members[members[0]].net
        if self.own_loss:
            return torch.stack([self.members[k].net.get_loss(
                o, t, X=apply(lambda part, i=i: part[i], X), training=True)
                for i, (k, o, t) in enumerate(zip(members, out, y))])
        if hasattr(self.layout, "loss"):  # a module on the torch.func path: its net's get_loss
            return self.layout.loss(net, out, y)
        return batched_loss(out, y, self.classifier)

    def _validate(self):
        """Each live model's validation pass, after its training pass, as its own fit runs it:
        its iterator's draw, then per batch its evaluation forward (batched), its own
        ``get_loss`` (so decisions taken on the score are its own), the batch's records and
        its ``on_batch_end``."""
        todo = [j for j, k in enumerate(self.alive)
                if self.members[k].valid is not None and not self.members[k].error]
        if not todo:
            return
        counts = {}
        for j in todo:
            member = self.members[self.alive[j]]
            if member.valid.draws:  # DataLoader: one base seed per pass, even unshuffled
                torch.empty((), dtype=torch.int64).random_(generator=member.generator)
            counts[self.alive[j]] = math.ceil(len(member.valid.y) / member.valid.batch)
        self.layout.train(False)
        try:
            with torch.no_grad():
                for s in range(max(counts.values())):
                    self._valid_step(todo, s)
        finally:
            self.layout.train(True)
        self._record_count("valid", counts)

    def _valid_step(self, todo, s):
        by_size = {}
        for j in todo:
            valid = self.members[self.alive[j]].valid
            n = max(0, min(valid.batch, len(valid.y) - s * valid.batch))
            if n:
                by_size.setdefault(n, []).append(j)
        for n, pos in by_size.items():
            parts = []
            for j in pos:
                valid = self.members[self.alive[j]].valid
                rows = slice(s * valid.batch, s * valid.batch + n)
                parts.append((apply(lambda t, rows=rows: t[rows], valid.X), valid.y[rows]))
            xb = apply(lambda t: t.to(self.device), stack([x for x, _ in parts]))
            views = [t[pos] for t in self.leaves]
            out = self._infer(self.layout.forward(views, xb, _evaluation,
                                                  {n: b[pos] for n, b in self.buffers.items()}))
            for i, j in enumerate(pos):
                member = self.members[self.alive[j]]
                if member.error or member.stopped:
                    continue
                x, y = parts[i]
                y_dev = y.to(self.device)
                loss = member.net.get_loss(out[i], y_dev, X=apply(lambda t, i=i: t[i], xb),
                                           training=False)
                replay = self.replays[self.alive[j]]
                if replay.batch_begin((x, y), False):
                    replay.batch_end((x, y), False, loss, out[i])

    def _dropout(self, layer, h, members):
        noise = self._masks(layer, h, members)
        return h if noise is None else h * noise

    def _masks(self, layer, h, members):
        """The noise of dropout layer ``layer`` for ``members`` (their activations ``h``, one
        row each): drawn ahead for this step (:meth:`_draw_ahead`), else now, each model's
        from its own generator (:func:`~._noise.draw_noise`)."""
        self._noise_shapes[(layer, h.shape[1])] = (tuple(h.shape[1:]), h.dtype)
        if self._ahead is not None:
            drawn, noises = self._ahead
            noise = noises[layer]
            if noise is None or drawn == members:
                return None if noise is None else noise.to(h.device)
            start = drawn.index(members[0])
            if drawn[start:start + len(members)] == members:  # a chunk: a view
                return noise[start:start + len(members)].to(h.device)
            return noise[[drawn.index(k) for k in members]].to(h.device)
        noise = draw_noise(tuple(h.shape[1:]), h.dtype, [self.rates[k][layer] for k in members],
                           [self.members[k].generator for k in members])
        return None if noise is None else noise.to(h.device)

    def _draw_ahead(self, epoch, s, orders, steps):
        """This step's noise for every model, before its forward: drawn by the prefetcher
        during the previous step, or now (once the shapes are known); then the next step's
        started on the worker, when it lies in the same epoch (nothing else draws from the
        models' generators between two steps of an epoch: :attr:`_prefetch` is only set
        up where no callback draws)."""
        self._ahead = None
        if self._prefetch is None:
            return
        rest = [len(o) - s * self.B for o in orders]
        ahead = self._prefetch.take((epoch, s))
        if ahead is None:
            layers = self._noise_spec([max(0, min(self.B, r)) for r in rest])
            if layers is None:
                return  # the shapes are not known yet: drawn in the forward
            ahead = layers[0], [draw_noise(*layer) for layer in layers[1]]
        self._ahead = ahead
        if s + 1 < steps:
            layers = self._noise_spec([max(0, min(self.B, r - self.B)) for r in rest])
            if layers is not None:
                self._prefetch.submit((epoch, s + 1), *layers)

    def _noise_spec(self, sizes):
        """``(members, [(shape, dtype, rates, generators)] per dropout layer)`` for a step in
        which the live models have batches of ``sizes``: only when those that have a batch
        all have the same size and its noise shapes are known (from an earlier step)."""
        members = [k for n, k in zip(sizes, self.alive) if n > 0]
        batch = {n for n in sizes if n > 0}
        if not members or len(batch) != 1:
            return None
        n = batch.pop()
        layers = []
        for layer in range(len(self.rates[members[0]])):
            if (layer, n) not in self._noise_shapes:
                return None
            shape, dtype = self._noise_shapes[(layer, n)]
            layers.append((shape, dtype, [self.rates[k][layer] for k in members],
                           [self.members[k].generator for k in members]))
        return members, layers

    def _penalty(self, leaves, a, b):
        """The l2 / l1 penalty of each model at live positions ``a:b``
        (:func:`skhpo.hyper.space.penalty_term`), one reduction per model, so its value does
        not depend on the group's size."""
        total = 0.0
        for kind, coefs in (("l2", self.l2), ("l1", self.l1)):
            if coefs is None:
                continue
            alive = coefs[torch.tensor(self.alive[a:b])]
            for i, W in enumerate(self.layout.linear_weights(leaves)):
                terms = torch.stack([penalty_term(kind, [W[j]]) for j in range(len(W))])
                total = total + alive[:, i] * terms
        return total

    # -- leaving the group -------------------------------------------------------------------

    def _retire(self, positions):
        """Take the models at ``positions`` of the live list out: each gets its own memory
        back (its parameters no longer views of the buffer) and, with the batched optimiser,
        its state written into its net's optimiser; one that did not fail then ends its
        training (``on_train_end``). Returns the positions kept."""
        positions = set(positions)
        for j in sorted(positions):
            k = self.alive[j]
            member = self.members[k]
            self._release(k)
            if member.error:
                continue
            if self.opt is not None:
                self.layout.load_state(member.net, self.opt.state_of(j)[0])
            self.replays[k].train_end()
        keep = [j for j in range(len(self.alive)) if j not in positions]
        self.alive = [self.alive[j] for j in keep]
        if positions and keep:
            index = torch.as_tensor(keep, device=self.device)
            if self.opt is not None:
                self.opt.keep(keep)
            else:
                self._flat = self._flat[index]
            self.buffers = {n: b[index] for n, b in self.buffers.items()}
            self._leaves()
        return keep

    def _release(self, k):
        """Model ``k``'s parameters with their own memory (contiguous copies of its row),
        without the gradient views, and a plain ``state_dict`` again."""
        module = self.members[k].net.module_
        with torch.no_grad():
            for p in module.parameters():
                p.data = p.data.clone(memory_format=torch.contiguous_format)
                p.grad = None
            for name in self.buffers:
                _set_buffer(module, name, module.get_buffer(name).clone(
                    memory_format=torch.contiguous_format))
        handle = self._views.pop(k, None)
        if handle is not None:
            handle.remove()


def _set_buffer(module, name, tensor):
    """``module``'s buffer ``name`` (a dotted path) replaced by ``tensor``."""
    parent, _, attr = name.rpartition(".")
    (module.get_submodule(parent) if parent else module)._buffers[attr] = tensor


def _own_copies(module, state_dict, prefix, local_metadata):
    """A ``state_dict`` of a model in a group holds copies of its tensors, not views of the
    group's buffer (a view's storage is the whole buffer: ``copy.deepcopy`` and
    ``torch.save`` would copy all of it)."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor):
            state_dict[key] = value.clone(memory_format=torch.contiguous_format)


def _batched(nets):
    """Whether the batched Adam / SGD replays every net's optimiser: all torch's plain Adam,
    or all its SGD with one Nesterov choice, one parameter group, and settings the batched
    twin has."""
    kinds = {type(net.optimizer_) for net in nets}
    if len(kinds) != 1 or next(iter(kinds)) not in BATCHED:
        return False
    allowed = BATCHED[next(iter(kinds))]
    for net in nets:
        groups = net.optimizer_.param_groups
        if len(groups) != 1:
            return False
        for key, value in groups[0].items():
            if key == "params":
                continue
            if key not in allowed or (allowed[key] is not None and value != allowed[key]):
                return False
    return len({bool(net.optimizer_.param_groups[0].get("nesterov", False))
                for net in nets}) == 1


def _stepper(flat, nets, replays, layout):
    """What steps the group: torch's Adam / SGD batched (:func:`batched_optimizer`) where
    they replay every model and no callback changes a model's settings; else the models'
    own optimiser class over the rows (:class:`~._stacked.StackedOptimizer`) where no
    callback does more than change settings; else None (each model's own optimiser steps
    on its views)."""
    if all(r.inert for r in replays) and _batched(nets):
        opt = batched_optimizer(flat, [n.optimizer_ for n in nets])
        if any(n.optimizer_.state for n in nets):  # continued models: from their state
            rows = [row_state(n, layout, flat[0]) for n in nets]
            steps = [float(r.pop("step", 1 if r else 0)) for r in rows]
            opt.load_rows(rows, steps)
        return opt
    if all(r.settings_only for r in replays) and stackable(nets, layout):
        return StackedOptimizer(flat, nets, layout)
    return None


def _within(part, a, b):
    """A gathered batch ``(positions, X, y)`` restricted to the live positions ``a:b``."""
    return _subpart(part, [i for i, j in enumerate(part[0]) if a <= j < b])


def _keep_rows(part, sizes):
    """A gathered batch ``(positions, X, y)`` without the models whose size became 0."""
    return _subpart(part, [i for i, j in enumerate(part[0]) if sizes[j]])


def _subpart(part, keep):
    pos, xb, yb = part
    if len(keep) == len(pos):
        return part
    index = torch.as_tensor(keep, dtype=torch.long)
    return [pos[i] for i in keep], apply(lambda t: t[index], xb), yb[index]


def _same(X, value):
    """``value`` for every part of ``X`` (to pass it alongside :func:`~._inputs.apply`)."""
    return dict.fromkeys(X, value) if isinstance(X, dict) else value


def _padded(*arrays):
    """The members' own arrays stacked, member first, zero-padded to the longest."""
    out = arrays[0].new_zeros((len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:]))
    for k, a in enumerate(arrays):
        out[k, :len(a)] = a
    return out


def _evaluation(layer, h):
    """Evaluation mode: a dropout layer passes its input through."""
    return h


def batched_optimizer(flat, optimizers):
    """The batched twin of the models' torch optimisers (all Adam, or all SGD with one
    ``nesterov``) over the stacked buffer ``flat``, with each model's coefficients."""
    groups = [opt.param_groups[0] for opt in optimizers]
    if isinstance(optimizers[0], torch.optim.SGD):
        return BatchedSGD([flat], [g["lr"] for g in groups], [g["weight_decay"] for g in groups],
                          [g["momentum"] for g in groups], [g["dampening"] for g in groups],
                          groups[0]["nesterov"])
    return BatchedAdam([flat], [g["lr"] for g in groups], [g["weight_decay"] for g in groups],
                       [g["betas"] for g in groups], [g["eps"] for g in groups])


def _epoch_order(member):
    """This epoch's order of the member's rows, drawn as its own fit draws it:
    ``ArrayBatchIterator``, one ``randperm`` (none without shuffling); ``DataLoader``, the
    iterator's base seed, then (with shuffling) ``RandomSampler``'s seed for a fresh
    generator and its ``randperm``."""
    n, g = len(member.rows), member.generator
    if member.shuffle.startswith("dataloader"):
        torch.empty((), dtype=torch.int64).random_(generator=g)  # _BaseDataLoaderIter
        if member.shuffle == "dataloader":
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())
            return torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if member.shuffle.endswith("ordered"):
        return torch.arange(n)
    return torch.randperm(n, generator=g)


def _limit(member):
    """The largest training loss that is not divergence for ``member`` (inf before its first
    batch or without a ratio)."""
    if member.max_ratio is None or member.first_loss is None or not member.first_loss > 0:
        return math.inf
    return member.max_ratio * member.first_loss


def _gather(data, shared, owners, rows):
    """``data[rows]`` (one shared tensor) or ``data[owners, rows]`` (each model's own rows of
    a ``(models, rows, ...)`` tensor), as one ``index_select`` of whole rows."""
    index = rows if shared else owners * data.shape[1] + rows
    flat = data if shared else data.flatten(0, 1)
    return flat.index_select(0, index.reshape(-1)).view(*rows.shape, *flat.shape[1:])


def epoch_history(rows):
    """A skorch ``History`` of ``rows`` (``(train_loss, seconds)`` per epoch), as the net's
    own training records them."""
    history = History()
    for epoch, (loss, seconds) in enumerate(rows, 1):
        history.new_epoch()
        history.record("epoch", epoch)
        history.record("train_loss", loss)
        history.record("dur", seconds)
    return history


#: classifiers with at most this many classes take their cross-entropy across the batch's rows
#: (:func:`batched_loss`; measured faster up to ~32 classes, slower from 100)
CLASSES_ACROSS = 32


def batched_loss(out, y, classifier):
    """The mean loss of each model's batch (the skhpo models' default criteria,
    cross-entropy or squared error): ``out`` (k, b, outputs), ``y`` (k, b[, ...])."""
    k, b = out.shape[:2]
    if classifier and out.dim() == 3 and out.shape[2] <= CLASSES_ACROSS:
        # the classes as the reduced dimension of a (k, classes, b) view: torch's log-softmax
        # over a short last dimension costs ~130 ns a row on a CPU, across rows 5x less
        # (50 x 64 x 10: forward and backward 0.70 -> 0.14 ms); the same values to rounding,
        # and a model's arithmetic still does not depend on its group
        each = F.cross_entropy(out.transpose(1, 2), y.reshape(k, b), reduction="none")
    elif classifier:
        each = F.cross_entropy(out.reshape(k * b, -1), y.reshape(k * b), reduction="none")
    else:
        each = F.mse_loss(out, y, reduction="none")
    return each.reshape(k, -1).mean(1)
