"""A population of students trained as one stacked model (HPM's train step, fused).

:class:`~skhpo.PopulationMutationSearch` trains K students of one skhpo MLP that differ in
weights, optimiser state and tuned hyper-parameters. :class:`StudentGroup` runs one train step
of all of them together: the students' weights are the rows of a ``(K, P)`` buffer; every
minibatch is one batched forward and backward (``torch.baddbmm``) and one step of the net's
optimiser, batched (:class:`~._adam.BatchedAdam`, or :class:`~._sgd.BatchedSGD` with its
momentum, dampening and Nesterov choice), with each student's own learning rate and weight
decay; every ``every`` minibatches, one batched one-step look-ahead hypergradient for all
students (the arithmetic of :func:`skhpo.hyper.lookahead_loss`, a double backward only when a
dropout rate or an ``l2`` / ``l1`` penalty is tuned) and one batched Adam step of their
hyper-parameters.

The RNG protocol is the skorch student's: what its ``partial_fit`` draws from torch's global
generator (the epoch's permutation, the concrete-dropout noise layer by layer, the validation
minibatch of each hyper step and the noise of its look-ahead forward) is drawn, in the same
order, from that student's own generator. So a fused run follows the run of skorch students
to float32 rounding (``tests/test_population.py``).

A student's state between steps is a :class:`StudentState` (its row of the buffer, its
optimiser state, its hyper-parameters' coordinates and their Adam state, its history), so the
search can copy a student, checkpoint it, and turn it into an ordinary fitted net at the end.
"""

import math
import time
from dataclasses import dataclass, field

import torch

from .._store import record
from ..hyper.layers import dropout_layers
from ..nets import divergence, guard_ratio
from ._adam import BatchedAdam
from ._group import batched_loss, batched_optimizer
from ._layouts import MLPLayout

__all__ = ["StudentGroup", "StudentState"]


@record
@dataclass
class StudentState:
    """One student between train steps.

    Attributes
    ----------
    weights : torch.Tensor
        Its row of the stacked buffer.
    optimizer : dict
        Its optimiser's state as torch keeps it for the row (Adam's ``step``, ``exp_avg``,
        ``exp_avg_sq``; SGD's ``momentum_buffer``); ``{}`` before its first step.
    steps : float
        Optimiser steps taken.
    u : torch.Tensor
        Its hyper-parameters in unconstrained coordinates.
    hyper_m, hyper_v, hyper_steps
        Their Adam state.
    n_batches : int
        Minibatches trained.
    first_loss : float or None
        Its loss guard's reference.
    history : list
        ``(train_loss, seconds)`` per step.
    root : int
        The initial student it descends from.
    init_state : torch.Tensor or None
        Its generator right after its initialisation, until its first step.
    """

    weights: torch.Tensor
    optimizer: dict
    steps: float
    u: torch.Tensor
    hyper_m: torch.Tensor
    hyper_v: torch.Tensor
    hyper_steps: float = 0.0
    n_batches: int = 0
    first_loss: float | None = None
    history: list = field(default_factory=list)
    root: int = 0
    init_state: torch.Tensor | None = None

    def copy(self, u):
        """A copy that continues with hyper-parameter coordinates ``u`` and a fresh Adam
        state for them (HPM's exploit and explore)."""
        zeros = torch.zeros_like(u)
        return StudentState(self.weights.clone(),
                            {key: value.clone() for key, value in self.optimizer.items()},
                            self.steps, u, zeros, zeros.clone(), 0.0, self.n_batches,
                            self.first_loss, list(self.history), self.root, None)


class StudentGroup:
    """Train step of the students of one initialised ``template`` student net (a skhpo
    ``TabularMLPClassifier`` / ``Regressor`` whose dropout layers are concrete), tuning
    ``hypers`` (:class:`~skhpo.hyper.HyperParam`). ``X``, ``y`` are the training data as the
    loss takes them, ``Xv``, ``yv`` the validation data (tensors)."""

    def __init__(self, template, hypers, X, y, Xv, yv, *, batch_size, hyper_lr, every,
                 classifier):
        self.hypers, self.B, self.every, self.hyper_lr = hypers, int(batch_size), every, hyper_lr
        self.classifier = classifier
        module = template.module_
        self.device = next(module.parameters()).device
        self.layout = MLPLayout(module)  # the stacked forward, shared with the drop-ins' groups
        drops = self.layout.dropouts(module)
        self.temperatures = [layer.temperature for layer in drops]
        paths = {id(layer): path for path, layer in dropout_layers(module).items()}
        self.drop_index = {f"{paths[id(layer)]}.p": i for i, layer in enumerate(drops)}
        self.optimizer = template.optimizer_  # the students' (Adam or SGD) and its settings
        group = self.optimizer.param_groups[0]
        self.base = {"lr": float(group["lr"]), "weight_decay": float(group["weight_decay"]),
                     "rates": [float(layer.p) for layer in drops], **_coefficients(template)}
        self.max_ratio = guard_ratio(template)
        self.X, self.y = X.to(self.device), y.to(self.device)
        self.Xv, self.yv = Xv.to(self.device), yv.to(self.device)

    # -- a student's state and values ---------------------------------------------------------

    def state_of(self, net, u, root):
        """The state of an initialised student ``net`` (no training yet) with coordinates
        ``u``; its generator starts where the net's initialisation left torch's."""
        weights = self.layout.flat(net.module_)
        zeros = torch.zeros(len(u), dtype=torch.float64)
        return StudentState(weights, {}, 0.0, u.detach().clone(), zeros, zeros.clone(), root=root,
                            init_state=torch.get_rng_state())

    def current(self, u):
        """``{name: value}`` of coordinates ``u`` (one student's), as floats."""
        return {hp.name: float(hp.box.forward(u[i])) for i, hp in enumerate(self.hypers)}

    def into_net(self, state, net):
        """Write ``state``'s weights and optimiser state into ``net`` (a copy of the
        template)."""
        self.layout.write(net.module_, state.weights)
        self.layout.load_state(net, state.optimizer)

    # -- one train step -----------------------------------------------------------------------

    def train(self, states, generators, rows):
        """One train step (``rows``: the training rows, an index tensor) of every student,
        each drawing from its generator; updates ``states`` in place and returns each
        student's validation loss afterwards (``inf`` for one that diverged)."""
        start = time.perf_counter()
        K, n = len(states), len(rows)
        flat = torch.stack([s.weights for s in states]).to(self.device)
        u = torch.stack([s.u for s in states])
        values = self._values(u)
        opt = batched_optimizer(flat, [self.optimizer] * K)
        opt.set_rates(values["lr"], values["weight_decay"])
        opt.load_rows([s.optimizer for s in states], [s.steps for s in states])
        hopt = BatchedAdam([u], [self.hyper_lr] * K, [0.0] * K, (0.9, 0.999), 1e-8)
        hopt.load_state([torch.stack([s.hyper_m for s in states])],
                        [torch.stack([s.hyper_v for s in states])],
                        [s.hyper_steps for s in states])
        alive = torch.ones(K, dtype=torch.bool)
        sums = torch.zeros(K, dtype=torch.float64)
        orders = torch.stack([rows[torch.randperm(n, generator=g)] for g in generators])
        for s0 in range(0, n, self.B):
            batch = orders[:, s0:s0 + self.B]
            xb, yb = self.X[batch.to(self.device)], self.y[batch.to(self.device)]
            losses = self._train_batch(opt, values, xb, yb, generators, alive)
            for j in alive.nonzero().flatten().tolist():
                state, v = states[j], float(losses[j])
                if state.first_loss is None and math.isfinite(v):
                    state.first_loss = v
                if divergence(v, state.first_loss, self.max_ratio):
                    alive[j] = False
                    continue
                sums[j] += v * batch.shape[1]
                state.n_batches += 1
            due = alive & torch.tensor([s.n_batches % self.every == 0 for s in states])
            if due.any():
                values = self._hyper_step((opt, hopt), u, values, (xb, yb), generators, due)
        val = self._validation_losses(opt.params[0], alive)
        seconds = (time.perf_counter() - start) / K
        for j, state in enumerate(states):
            state.weights = opt.params[0][j].detach().clone()
            state.optimizer, state.steps = opt.state_of(j)[0], float(opt.t[j])
            state.u = u[j].detach().clone()
            state.hyper_m, state.hyper_v = hopt.m[0][j].clone(), hopt.v[0][j].clone()
            state.hyper_steps = float(hopt.t[j])
            state.init_state = None
            if alive[j]:
                state.history.append((float(sums[j]) / n, seconds))
        return val, seconds

    def _train_batch(self, opt, values, xb, yb, generators, alive):
        """One minibatch of every student: its training loss (criterion + its ``l2`` / ``l1``
        penalties, concrete dropout at its rates) and one optimiser step of the live ones."""
        leaves = [t.detach().requires_grad_(True) for t in self.layout.views(opt.params[0])]
        rates = values["rates"]
        out = self.layout.forward(leaves, xb, lambda i, h: self._concrete(
            h, rates[:, i], generators, alive & (rates[:, i] != 0), i))
        losses = batched_loss(out, yb, self.classifier) + self._penalty(leaves, values)
        grads = torch.autograd.grad(losses.sum(), leaves)
        opt.step([torch.cat([g.reshape(len(g), -1) for g in grads], dim=1)],
                 None if bool(alive.all()) else alive)
        return losses.detach().double().cpu()

    def _hyper_step(self, optimizers, u, values, batch, generators, due):
        """The look-ahead hypergradient of every ``due`` student on its next validation
        minibatch (the step from its training minibatch in ``batch``), and one Adam step of
        its coordinates ``u`` (skipped where not finite); ``optimizers``: the students' and
        the hyper-parameters' batched optimisers."""
        opt, hopt = optimizers
        xb, yb = batch
        index = due.nonzero().flatten()
        pick = index.tolist()
        size = min(self.B, len(self.yv))
        val_rows = torch.stack([torch.randint(len(self.yv), (size,), generator=generators[j])
                                for j in pick])
        leaf = u.detach().clone().requires_grad_(True)
        h = [hp.box.forward(leaf[index, i]).float().to(self.device)
             for i, hp in enumerate(self.hypers)]
        tuned = {hp.kind: h[i] for i, hp in enumerate(self.hypers)
                 if hp.kind in ("lr", "weight_decay")}
        columns = list(values["rates"][index].unbind(1))
        learned = [False] * len(columns)
        for i, hp in enumerate(self.hypers):
            for target in hp.targets if hp.kind == "dropout" else ():
                columns[self.drop_index[target]] = h[i]
                learned[self.drop_index[target]] = True
        everyone = len(pick) == len(due)
        params = [(t.detach() if everyone else t.detach()[index]).requires_grad_(True)
                  for t in self.layout.views(opt.params[0])]
        weights = self.layout.linear_weights(params)
        gens = [generators[j] for j in pick]
        ones = torch.ones(len(pick), dtype=torch.bool)
        if not everyone:
            xb, yb = xb[index], yb[index]
        out = self.layout.forward(params, xb, lambda i, x: self._concrete(
            x, columns[i], gens, ones if learned[i] else columns[i] != 0, i))
        loss = batched_loss(out, yb, self.classifier)
        double = False
        for i, hp in enumerate(self.hypers):
            if hp.kind in ("l2", "l1"):
                loss = loss + h[i].to(loss.dtype) * sum(
                    _norm(hp.kind, weights[k]) for k in hp.layers)
                double = True
            double = double or hp.kind == "dropout"
        grads = torch.autograd.grad(loss.sum(), params, create_graph=double)
        eta = tuned.get("lr", values["lr"][index].to(device=self.device, dtype=loss.dtype))
        wd = tuned.get("weight_decay", values["weight_decay"][index].to(device=self.device,
                                                                       dtype=loss.dtype))
        shape = (-1, 1, 1)
        stepped = [p - eta.view(shape) * (g + wd.view(shape) * p) for p, g in zip(params, grads)]
        out = self.layout.forward(stepped, self.Xv[val_rows.to(self.device)], _evaluation)
        val = batched_loss(out, self.yv[val_rows.to(self.device)], self.classifier)
        (grad,) = torch.autograd.grad(val.sum(), [leaf])
        ok = due & torch.isfinite(grad).all(1)
        if not ok.any():
            return values
        hopt.step([torch.where(ok[:, None], grad, 0.0)], ok)
        fresh = self._values(u)
        values = {key: torch.where(ok.view(-1, *[1] * (old.dim() - 1)), fresh[key], old)
                  for key, old in values.items()}
        opt.set_rates(values["lr"], values["weight_decay"])
        return values

    def _validation_losses(self, flat, alive):
        """Each student's loss on the whole validation part (evaluation mode: no dropout);
        ``inf`` for a student that diverged."""
        with torch.no_grad():
            out = self.layout.forward(self.layout.views(flat), self.Xv.expand(
                len(flat), *self.Xv.shape), _evaluation)
            losses = batched_loss(out, self.yv.expand(len(flat), *self.yv.shape),
                                  self.classifier).double().cpu()
        return [float(v) if ok and math.isfinite(v) else math.inf
                for v, ok in zip(losses.tolist(), alive.tolist())]

    # -- the stacked MLP ----------------------------------------------------------------------

    def _values(self, u):
        """What the students train with now, from their coordinates ``u`` (K, d): ``lr`` and
        ``weight_decay`` (K,) float64, ``rates`` (K, dropout layers), ``l2`` and ``l1`` (K,
        linear layers), as the skorch student holds them after ``apply_hyperparams``."""
        K = len(u)
        out = {"lr": torch.full((K,), self.base["lr"], dtype=torch.float64),
               "weight_decay": torch.full((K,), self.base["weight_decay"], dtype=torch.float64)}
        lists = {key: torch.tensor([self.base[key]] * K, dtype=torch.float64)
                 for key in ("rates", "l2", "l1")}
        with torch.no_grad():
            for i, hp in enumerate(self.hypers):
                v = hp.box.forward(u[:, i].detach())
                if hp.kind in ("lr", "weight_decay"):
                    out[hp.kind] = v.clone()
                elif hp.kind in ("l2", "l1"):
                    lists[hp.kind][:, list(hp.layers)] = v[:, None]
                else:
                    for target in hp.targets:
                        lists["rates"][:, self.drop_index[target]] = v
        dtype = self.X.dtype
        # a dropout rate lives in a float32 buffer, a penalty coefficient multiplies a tensor
        out.update({key: value.to(dtype) for key, value in lists.items()})
        return out

    def _concrete(self, h, p, generators, draw, layer):
        """:class:`~skhpo.hyper.ConcreteDropout` per student: rates ``p`` (K,), the noise of
        the students in ``draw`` from their generators (the others pass through)."""
        if not draw.any():
            return h
        eps = torch.finfo(h.dtype).eps
        noise = torch.full(h.shape, 0.5, dtype=h.dtype)
        for j in draw.nonzero().flatten().tolist():
            noise[j].uniform_(generator=generators[j])  # the draws of torch.rand_like
        v = noise.to(h.device).clamp(eps, 1 - eps)
        p_c = p.to(device=h.device, dtype=h.dtype).clamp(eps, 1 - eps).view(
            -1, *[1] * (h.dim() - 1))
        z = torch.sigmoid((torch.log(p_c) - torch.log1p(-p_c) + torch.log(v) - torch.log1p(-v))
                          / self.temperatures[layer])
        out = h * (1 - z) / (1 - p_c)
        return torch.where(draw.to(h.device).view(-1, *[1] * (h.dim() - 1)), out, h)

    def _penalty(self, views, values):
        """Each student's ``l2`` / ``l1`` penalty at its coefficients (0 where none)."""
        total = 0.0
        for kind in ("l2", "l1"):
            coefs = values[kind]
            if not bool((coefs != 0).any()):
                continue
            for i, W in enumerate(self.layout.linear_weights(views)):
                if bool((coefs[:, i] != 0).any()):
                    total = total + coefs[:, i].to(W.device) * _norm(kind, W)
        return total


def _evaluation(layer, h):
    """Evaluation mode: a dropout layer passes its input through."""
    return h


def _norm(kind, W):
    """``sum w^2`` (l2) or ``sum |w|`` (l1) of each student's ``W`` (K, in, out)."""
    return (W.pow(2) if kind == "l2" else W.abs()).sum((1, 2))


def _coefficients(net):
    """The net's own ``l2`` / ``l1`` coefficients per linear layer (zeros for a net without)."""
    if hasattr(net, "penalty_coefficients"):
        return net.penalty_coefficients()
    n = sum(1 for m in net.module_.modules() if isinstance(m, torch.nn.Linear))
    return {"l2": [0.0] * n, "l1": [0.0] * n}

