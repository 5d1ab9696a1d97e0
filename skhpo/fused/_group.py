"""K models of one architecture trained together: their weights the rows of one stacked
``(K, P)`` buffer, one batched forward and backward through their layout
(:mod:`._layouts`) and one batched optimiser step per minibatch.

Each model is handed in *initialised*: an ordinary net fitted for 0 epochs (so its module, its
classes and its preprocessing are exactly what the net's own ``fit`` builds from the task's
seed), with the state of torch's generator right after that initialisation. Everything the
net's own training would draw from torch's global generator (the batch order, one
``randperm`` per epoch; the dropout masks, layer by layer and batch by batch) is drawn from
that model's own generator in the same order. So a model's training does not depend on the
other models of its group, and it follows the trajectory of the net's own ``fit`` (to float32
rounding: a batched matrix product sums in another order).
"""

import functools
import math
import time

import torch
import torch.nn.functional as F
from skorch.history import History

from ..hyper.space import penalty_term
from ..nets import FiniteLossGuard, divergence
from ._adam import BatchedAdam
from ._layouts import layout_of
from ._sgd import BatchedSGD

__all__ = ["CLASSES_ACROSS", "Member", "StackedGroup", "batched_loss", "batched_optimizer",
           "epoch_history", "uniform_is_bernoulli"]

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

    Its divergence rule is its net's :class:`~skhpo.nets.FiniteLossGuard`'s (``max_ratio``
    times its first batch's loss; without a guard, non-finite losses only).
    """

    def __init__(self, net, X, y, generator, epochs, rows=None, shuffle="array"):
        self.net, self.X, self.y, self.generator, self.epochs = net, X, y, generator, epochs
        self.rows = torch.arange(len(y)) if rows is None else torch.as_tensor(rows)
        self.shuffle = shuffle  # how its own fit orders an epoch (see _epoch_order)
        self.losses, self.error, self.seconds = [], "", 0.0
        guards = [cb for _, cb in getattr(net, "callbacks_", ())
                  if isinstance(cb, FiniteLossGuard)]
        self.max_ratio = guards[0].max_ratio if guards else None
        self.first_loss = None


class StackedGroup:
    """Train the ``members`` (:class:`Member`: nets of one architecture, one batch size and
    one optimiser class, any layout) together; :meth:`run` trains them to their epochs."""

    def __init__(self, members, batch_size, classifier, device="cpu"):
        self.members, self.B, self.classifier = members, int(batch_size), classifier
        self.device = torch.device(device)
        first = members[0]
        self.layout = layout_of(first.net.module_, first.X[first.rows[:2]])
        self.rates = [[float(layer.p) for layer in self.layout.dropouts(m.net.module_)]
                      for m in members]
        # every model's weights as one row of a (K, P) buffer (the layout's order); one
        # optimiser update per step over the whole buffer
        flat = torch.stack([self.layout.flat(m.net.module_) for m in members]).to(self.device)
        nets = [m.net for m in members]
        self.opt = batched_optimizer(flat, [n.optimizer_ for n in nets])
        coefs = [n.penalty_coefficients() if getattr(n, "_penalized", False) else None
                 for n in nets]
        self.l2 = self._coefficients(coefs, "l2")
        self.l1 = self._coefficients(coefs, "l1")
        self.alive = list(range(len(members)))
        (self.X, self.X_shared), (self.y, self.y_shared) = self._stack("X"), self._stack("y")
        self._leaves()

    def _stack(self, name):
        """The members' data: one shared tensor (2-D), or each member's own stacked and
        zero-padded (3-D, member first), so that a step gathers every batch at once."""
        arrays = [getattr(m, name) for m in self.members]
        if all(a is arrays[0] for a in arrays):
            return arrays[0], True
        out = arrays[0].new_zeros((len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:]))
        for k, a in enumerate(arrays):
            out[k, :len(a)] = a
        return out, False

    def _leaves(self):
        """Per parameter, views of the buffer that autograd treats as leaves: their gradients
        come back apart and are joined into one buffer-shaped gradient (cheaper than
        differentiating through slices of the buffer)."""
        self.leaves = [t.requires_grad_(True) for t in self.layout.views(self.opt.params[0])]
        self._owners = torch.tensor(self.alive)[:, None]  # each live model's data row
        self._set_limits()

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
        return torch.tensor(rows, dtype=self.opt.params[0].dtype, device=self.device)

    # -- the loop ---------------------------------------------------------------------------

    def run(self):
        start = time.perf_counter()
        for epoch in range(max(m.epochs for m in self.members)):
            t0 = time.perf_counter()
            # one permutation of the model's own rows per epoch, drawn as its own fit draws it
            orders = [m.rows[_epoch_order(m)] for m in (self.members[k] for k in self.alive)]
            sums = torch.zeros(len(self.alive), dtype=torch.float64)
            steps = max(math.ceil(len(o) / self.B) for o in orders)
            for s in range(steps):
                sums = self._step(orders, s, sums, epoch)
                if not self.alive:
                    break
            for j, k in enumerate(self.alive):
                m = self.members[k]
                m.losses.append((float(sums[j]) / len(m.rows), time.perf_counter() - t0))
                self._notify_readers(m, j)
            self._retire([j for j, k in enumerate(self.alive)
                          if self.members[k].epochs == epoch + 1])
            if not self.alive:
                break
        self._retire(range(len(self.alive)))
        seconds = (time.perf_counter() - start) / len(self.members)
        for m in self.members:
            m.seconds = seconds
        return self.members

    def _step(self, orders, s, sums, epoch):
        """One batch slot: every live model's s-th batch (a model with fewer rows may have a
        short batch or none: it is then frozen for this step)."""
        sizes = [max(0, min(self.B, len(o) - s * self.B)) for o in orders]
        losses = self._losses(orders, s, sizes)
        grads = torch.autograd.grad(losses.sum(), self.leaves)
        flat_grad = torch.cat([g.reshape(len(g), -1) for g in grads], dim=1)
        full = min(sizes) > 0
        self.opt.step([flat_grad], None if full else torch.tensor([n > 0 for n in sizes]))
        values = losses.detach().double().cpu()
        sums = sums + values * torch.tensor(sizes, dtype=torch.float64)
        if s == 0 and epoch == 0:  # each model's first batch: the reference of its guard
            for j, v in enumerate(values.tolist()):
                self.members[self.alive[j]].first_loss = v
            self._set_limits()
        if bool((values < self._limits).all()):  # NaN compares False: it is checked below
            return sums
        bad = []
        for j, v in enumerate(values.tolist()):
            member = self.members[self.alive[j]]
            reason = divergence(v, member.first_loss, member.max_ratio) if sizes[j] else ""
            if reason:
                member.error = (f"diverged: {reason} in epoch {epoch + 1}; the candidate "
                                "diverged (try a smaller learning rate)")
                bad.append(j)
        if not bad:
            return sums
        keep = self._retire(bad)
        orders[:] = [orders[j] for j in keep]
        return sums[keep]

    def _losses(self, orders, s, sizes):
        """Each live model's training loss on its batch (criterion + its penalties). Models
        whose batches differ in size (the last batch of CV folds of unequal size) run in
        separate products, so a model's arithmetic never depends on the others' sizes."""
        by_size = {}
        for j, n in enumerate(sizes):
            if n:
                by_size.setdefault(n, []).append(j)
        losses = [None] * len(sizes)
        for n, pos in by_size.items():
            everyone = len(pos) == len(sizes)
            rows = torch.stack([orders[j][s * self.B:s * self.B + n] for j in pos])
            owners = self._owners if everyone else \
                torch.tensor([self.alive[j] for j in pos])[:, None]
            xb = _gather(self.X, self.X_shared, owners, rows)
            yb = _gather(self.y, self.y_shared, owners, rows)
            views = self.leaves if everyone else [t[pos] for t in self.leaves]
            members = [self.alive[j] for j in pos]
            out = self.layout.forward(views, xb.to(self.device),
                                      lambda i, h, members=members: self._dropout(i, h, members))
            each = self._loss(out, yb.to(self.device))
            if everyone:
                return each + self._penalty()
            for j, value in zip(pos, each):
                losses[j] = value
        zero = self.leaves[0].new_zeros(())
        return torch.stack([zero if v is None else v for v in losses]) + self._penalty()

    def _loss(self, out, y):
        """Each model's criterion on its batch (the penalties are added apart)."""
        if hasattr(self.layout, "loss"):  # a module on the torch.func path: its net's get_loss
            return self.layout.loss(self.members[0].net, out, y)
        return batched_loss(out, y, self.classifier)

    def _dropout(self, layer, h, members):
        noise = self._masks(layer, h, members)
        return h if noise is None else h * noise

    def _masks(self, layer, h, members):
        """Dropout noise per model, drawn from its own generator as ``F.dropout`` draws it:
        ``empty(b, width).bernoulli_(1 - p)``, then ``div_(1 - p)``; ones where p = 0.

        On a CPU, ``bernoulli_(q)`` is one double ``u ~ U[0, 1)`` per value, kept where
        ``u < q`` (checked once per process: :func:`uniform_is_bernoulli`); so each model
        draws its uniforms (``uniform_``, 2.3x faster than ``bernoulli_`` here), compares them
        with 1 - p into its row, and the scaling runs once for the group: the same masks and
        values, the same generator states afterwards."""
        rates = [self.rates[k][layer] for k in members]
        if not any(rates):
            return None
        shape = (-1, *[1] * (h.dim() - 1))
        keep64 = torch.tensor([1 - p for p in rates], dtype=torch.float64).view(shape)
        if uniform_is_bernoulli():
            # each model's uniforms in one small buffer, compared while still in the cache,
            # straight into its row of the noise (0.3 ms of a 50-model step less than drawing
            # the whole group's first); rows of p = 0 are not drawn: ones
            noise = torch.empty(h.shape, dtype=h.dtype)
            draws = torch.empty(h.shape[1:], dtype=torch.float64)
            for row, k, p in zip(noise.unbind(0), members, rates):
                if p > 0:
                    draws.uniform_(generator=self.members[k].generator)
                    torch.lt(draws, 1 - p, out=row)
                else:
                    row.fill_(1.0)
            # kept values times 1 / (1 - p) in h's dtype: the quotient div_ gives a kept 1.0
            scale = torch.ones((), dtype=h.dtype).div(keep64.to(h.dtype))
            return noise.mul_(scale).to(h.device)
        else:
            # every row is drawn when every rate is positive: no need to fill it first
            noise = (torch.empty if all(rates) else torch.ones)(h.shape, dtype=h.dtype)
            for row, k, p in zip(noise.unbind(0), members, rates):
                if p > 0:  # drawn in place: the same numbers as empty(b, width).bernoulli_
                    row.bernoulli_(1 - p, generator=self.members[k].generator)
        # one division for the group: the same quotient as each model's div_(1 - p)
        keep = keep64.to(h.dtype)
        return noise.div_(keep).to(h.device)

    def _penalty(self):
        """Each live model's l2 / l1 penalty (:func:`skhpo.hyper.space.penalty_term`), one
        reduction per model, so its value does not depend on the group's size."""
        total = 0.0
        for kind, coefs in (("l2", self.l2), ("l1", self.l1)):
            if coefs is None:
                continue
            alive = coefs[torch.tensor(self.alive)]
            for i, W in enumerate(self.layout.linear_weights(self.leaves)):
                terms = torch.stack([penalty_term(kind, [W[j]]) for j in range(len(W))])
                total = total + alive[:, i] * terms
        return total

    def _notify_readers(self, member, j):
        """Call the net's epoch readers (callbacks with ``reads_epochs``) with this epoch's
        weights in its module, as its own ``fit`` would at the epoch's end."""
        readers = [cb for _, cb in getattr(member.net, "callbacks_", ())
                   if getattr(cb, "reads_epochs", False)]
        if not readers:
            return
        self._write_weights(member, j)
        for cb in readers:
            cb.on_epoch_end(member.net)

    # -- leaving the group -------------------------------------------------------------------

    def _retire(self, positions):
        """Take the models at ``positions`` of the live list out: one that did not diverge
        gets its weights and Adam state written back into its net; return the positions
        kept."""
        positions = set(positions)
        for j in sorted(positions):
            member = self.members[self.alive[j]]
            if not member.error:
                self._hand_back(member, j)
        keep = [j for j in range(len(self.alive)) if j not in positions]
        self.alive = [self.alive[j] for j in keep]
        if positions and keep:
            self.opt.keep(keep)
            self._leaves()
        return keep

    def _write_weights(self, member, j):
        """Model ``j``'s current weights into its net's module."""
        self.layout.write(member.net.module_, self.opt.params[0][j])

    def _hand_back(self, member, j):
        """Model ``j``'s weights into its net's module, its optimiser state into its
        optimiser."""
        self._write_weights(member, j)
        self.layout.load_state(member.net, self.opt.state_of(j)[0])


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
