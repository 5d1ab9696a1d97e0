"""The Delta-STN / CPMLHO training loop of :class:`~.estimator.CuttingPlaneTuner`, one
method per sub-step.

A converted module (:func:`skhpo.hyper.convert_module`) holds general weights W_e and response
weights (W_h2, h1). Per training batch the trainer takes

* :meth:`DeltaSTNTrainer.general_step` — W_e at the current lambda, hyper term off [Eq. 13];
* :meth:`DeltaSTNTrainer.response_step` — (W_h2, h1) at per-example perturbed lambdas
  through the first-order expansion in the hyper term, plus the cutting-plane penalty
  [Eq. 14];
* every ``train_steps`` batches after the warm-up, :meth:`DeltaSTNTrainer.hyper_step` —
  u and the perturbation scales on the mixed-level objective L_train + theta L_val minus the
  entropy bonus [Eq. 15/16];

and at every epoch end :meth:`DeltaSTNTrainer.end_epoch` evaluates, records and rebuilds the
cut S = sign(W_e - W_h2) (:func:`cut_penalty`).
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.func import jvp

from ..._store import record
from ...hyper.stn import HyperLayer, cutout, entropy
from ...log import report
from ...nets import TrainingDivergedError, divergence, guard_ratio

__all__ = ["DeltaSTNTrainer", "HyperParams", "STNSettings", "cut_penalty"]


def cut_penalty(pairs, signs, mu, eps2, mode="hinge"):
    """mu * sum over layers and elements of pen(S * (W_e - W_h2) - eps2).

    ``pairs``: ``[(W_e, W_h2), ...]`` (W_e is treated as a constant); ``signs``: per layer a
    tensor of +-1/0 (``cut_memory="last"``) or a pair ``(seen_plus, seen_minus)`` of boolean
    masks (``"all"``: the maximum over the cuts seen so far). ``mode``: ``"hinge"``
    (pen = max(0, .)) or ``"linear"`` (pen = identity, the literal Eq. 12).
    """
    total = 0.0
    for (w_e, w_h2), s in zip(pairs, signs):
        d = w_e.detach() - w_h2
        if isinstance(s, tuple):
            plus, minus = s
            z = torch.maximum(torch.where(plus, d - eps2, -math.inf),
                              torch.where(minus, -d - eps2, -math.inf))
            z = torch.where(plus | minus, z, torch.zeros_like(z))
        else:
            z = torch.where(s != 0, s * d - eps2, torch.zeros_like(d))
        total = total + (F.relu(z) if mode == "hinge" else z).sum()
    return mu * total


class HyperParams(torch.nn.Module):
    """u (unconstrained values) and rho (sigma = softplus(rho)) of the tuned hyper-parameters."""

    def __init__(self, boxes, inits, scale=1.0):
        super().__init__()
        self.boxes = boxes
        self.u = torch.nn.Parameter(torch.tensor([float(b.inverse(v))
                                                  for b, v in zip(boxes, inits)]))
        self.rho = torch.nn.Parameter(torch.full((len(boxes),), math.log(math.expm1(scale))))

    def sigma(self):
        return F.softplus(self.rho)

    def values(self, u=None):
        """lambda = box(u) for u of shape (..., n)."""
        u = self.u if u is None else u
        return torch.stack([b.forward(u[..., i]) for i, b in enumerate(self.boxes)], dim=-1)


class STNSettings(NamedTuple):
    """The tuner's settings the loop reads (see :class:`~skhpo.CuttingPlaneTuner`)."""

    warmup_epochs: int
    train_steps: int
    valid_steps: int
    mu: float
    eps2: float
    cut_mode: str
    cut_memory: str
    theta: float | None
    entropy_weight: float
    tune_scales: bool
    linearize: bool
    hyper_lr: float
    verbose: int


class DeltaSTNTrainer:
    """Trains a converted ``module`` and its :class:`HyperParams` ``hp``.

    ``net`` is the initialised plain skorch net (its optimiser class, ``lr``,
    ``optimizer__*``, batch size, loss and device drive the weights); ``names`` are the
    hyper-parameters (dropout rates first, ``n_rates`` of them), ``augment`` maps
    ``input_noise`` / ``cutout_holes`` / ``cutout_length`` to their index, ``image_shape`` is
    the examples' shape for cutout.
    """

    def __init__(self, settings, net, module, context, hp, names, n_rates, augment,
                 image_shape=None):
        self.s, self.module, self.context, self.hp = settings, module, context, hp
        self.names, self.n_rates, self.augment = names, n_rates, augment
        self.image_shape = image_shape
        self.device = torch.device(net.device)
        module.to(self.device)
        hp.to(self.device)
        layers = [m for m in module.modules() if isinstance(m, HyperLayer)]
        response_ids = {id(p) for m in layers for p in (*m.response.parameters(), m.h1)}
        general = [p for p in module.parameters() if id(p) not in response_ids]
        response = [p for p in module.parameters() if id(p) in response_ids]
        opt_kwargs = {"lr": net.lr, **net.get_params_for("optimizer")}
        self.opt_general = net.optimizer(general, **opt_kwargs)
        self.opt_response = net.optimizer(response, **opt_kwargs)
        self.opt_u = torch.optim.RMSprop([hp.u], lr=settings.hyper_lr)
        self.opt_rho = torch.optim.RMSprop([hp.rho], lr=settings.hyper_lr)
        self.loss_fn = lambda y_pred, y: net.get_loss(y_pred, y, training=False)  # noqa: E731
        self.pairs = [(m.base.weight, m.response.weight) for m in layers]
        self.signs, self.steps, self.hyper_steps = None, 0, 0
        self.rows, self.hyper_rows = [], []
        # the divergence rule of the net's FiniteLossGuard, per loss: its first value is the
        # reference of the explosion bound
        self.max_ratio, self.first = guard_ratio(net), {}

    # -- the loop ----------------------------------------------------------------------------

    def run(self, data, batch, max_epochs, *, on_epoch=None, resume=None):
        """Train on ``data`` (``(Xt, yt, Xv, yv)``, tensors) for ``max_epochs`` in batches of
        ``batch``; ``history_`` rows are in ``rows``, the values after every hyper step in
        ``hyper_rows``; ``on_epoch(epoch)`` after each epoch. ``resume``: a :meth:`state` to
        go on from (after its epoch), exactly as if the run had not stopped."""
        self.data = data
        Xt, yt, Xv, yv = data
        self.train_iter = _Batches(len(yt), batch)  # the theta term's own training batches
        self.val_iter = _Batches(len(yv), batch)
        first = 0
        if resume is not None:
            self._restore(resume)
            first = resume["epoch"] + 1
        for epoch in range(first, max_epochs):
            for idx in torch.randperm(len(yt)).split(batch):
                x, y = Xt[idx].to(self.device), yt[idx].to(self.device)
                with torch.no_grad():
                    lam, sigma = self.hp.values(), self.hp.sigma()
                self.general_step(x, y, lam, epoch)
                self.response_step(x, y, sigma, epoch)
                self.steps += 1
                if epoch >= self.s.warmup_epochs and self.steps % self.s.train_steps == 0:
                    self.hyper_step(epoch)
            self.end_epoch(epoch, batch, max_epochs)
            if on_epoch is not None:
                on_epoch(epoch)
        return self

    def general_step(self, x, y, lam, epoch):
        """(a) the general weights at the current lambda, hyper term off [Eq. 13]."""
        self.module.train()
        self.context.h_net = None
        self.context.rates = lam[:self.n_rates]
        loss = self.loss_fn(self.module(self.inputs(x, lam)), y)
        self.check(loss, epoch, "training")
        self.opt_general.zero_grad()
        loss.backward()
        self.opt_general.step()

    def response_step(self, x, y, sigma, epoch):
        """(b) the response weights at per-example perturbed lambdas, plus the cut [Eq. 14]."""
        delta = sigma * torch.randn(len(x), len(self.names), device=self.device)
        lam_t = self.hp.values(self.hp.u.detach() + delta)
        self.context.rates = lam_t[:, :self.n_rates]
        x_in = self.inputs(x, lam_t)
        if self.s.linearize:
            def forward(h):
                self.context.h_net = h
                return self.module(x_in)
            out, tangent = jvp(forward, (torch.zeros_like(delta),), (delta,))
            pred = out + tangent
        else:
            self.context.h_net = delta
            pred = self.module(x_in)
        loss = self.loss_fn(pred, y)
        if self.s.mu > 0 and self.signs is not None:
            loss = loss + cut_penalty(self.pairs, self.signs, self.s.mu, self.s.eps2,
                                      self.s.cut_mode)
        self.check(loss, epoch, "response")
        self.opt_response.zero_grad()
        loss.backward()
        self.opt_response.step()

    def hyper_step(self, epoch):
        """``valid_steps`` steps of u (and the scales) on the mixed-level objective."""
        Xt, yt, Xv, yv = self.data
        self.module.eval()
        self.context.rates = None
        for _ in range(self.s.valid_steps):
            vi = next(self.val_iter)
            loss = self.hyper_term(Xv[vi].to(self.device), yv[vi].to(self.device))
            if self.s.theta is not None:
                ti = next(self.train_iter)
                loss = self.hyper_term(Xt[ti].to(self.device), yt[ti].to(self.device)) \
                    + self.s.theta * loss
            if self.s.tune_scales:
                loss = loss - self.s.entropy_weight * entropy(self.hp.sigma())
            self.check(loss, epoch, "hyper")
            self.opt_u.zero_grad()
            self.opt_rho.zero_grad()
            loss.backward()
            self.opt_u.step()
            if self.s.tune_scales:
                self.opt_rho.step()
            self.hyper_steps += 1
            self.hyper_rows.append({"epoch": epoch + 1, **self.current()})

    def hyper_term(self, x, y):
        """The loss of the response at perturbed hyper-parameters (differentiable in u, rho)."""
        n = x.shape[0]
        if self.s.tune_scales:
            u_tilde = self.hp.u + self.hp.sigma() * torch.randn(n, len(self.names),
                                                                device=self.device)
        else:
            u_tilde = self.hp.u.expand(n, -1)
        self.context.h_net = u_tilde - self.hp.u.detach()
        return self.loss_fn(self.module(x), y)

    def end_epoch(self, epoch, batch, max_epochs):
        """Evaluate on both parts, record the row, rebuild the cut; fail on divergence."""
        Xt, yt, Xv, yv = self.data
        self.context.h_net, self.context.rates = None, None
        row = {"epoch": epoch + 1, **self.current()}
        row.update(_evaluate(self.module, self.loss_fn, Xt, yt, batch, self.device, "train"))
        row.update(_evaluate(self.module, self.loss_fn, Xv, yv, batch, self.device, "valid"))
        with torch.no_grad():
            gaps = torch.cat([(a - b).abs().reshape(-1) for a, b in self.pairs])
            row.update(gap=float(gaps.mean()), mu=self.s.mu,
                       sigma=[float(s) for s in self.hp.sigma()], hyper_steps=self.hyper_steps)
            self.signs = _cut(self.pairs, self.signs, self.s.cut_memory)
        if not math.isfinite(row["train_loss"]):
            raise TrainingDivergedError(f"CuttingPlaneTuner: the training loss became "
                                        f"{row['train_loss']} at epoch {epoch + 1}")
        self.rows.append(row)
        if self.s.verbose:
            report("cutting_plane", self.s.verbose,
                   f"epoch {epoch + 1}/{max_epochs} train {row['train_loss']:.4f} "
                   f"valid {row['valid_loss']:.4f} gap {row['gap']:.4f} "
                   + " ".join(f"{n}={row[n]:.4f}" for n in self.names))

    # -- checkpoints -------------------------------------------------------------------------

    def _optimizers(self):
        return (self.opt_general, self.opt_response, self.opt_u, self.opt_rho)

    def state(self, epoch):
        """Everything the loop needs to go on after ``epoch`` (for a checkpoint)."""
        cuda = self.device.type == "cuda"
        return {"epoch": epoch, "done": epoch + 1, "module": self.module.state_dict(),
                "hp": self.hp.state_dict(),
                "optimizers": [o.state_dict() for o in self._optimizers()],
                "signs": self.signs, "steps": self.steps, "hyper_steps": self.hyper_steps,
                "rows": self.rows, "hyper_rows": self.hyper_rows, "first": self.first,
                "iterators": (self.train_iter, self.val_iter), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else None}

    def _restore(self, state):
        self.module.load_state_dict(state["module"])
        self.hp.load_state_dict(state["hp"])
        for opt, saved in zip(self._optimizers(), state["optimizers"]):
            opt.load_state_dict(saved)
        self.signs, self.steps, self.hyper_steps = (state["signs"], state["steps"],
                                                    state["hyper_steps"])
        self.rows, self.hyper_rows, self.first = (state["rows"], state["hyper_rows"],
                                                  state["first"])
        self.train_iter, self.val_iter = state["iterators"]
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None:
            torch.cuda.set_rng_state_all(state["cuda"])

    # -- helpers -----------------------------------------------------------------------------

    def inputs(self, x, lam):
        """The training inputs under the augmentations at ``lam`` (one row, or one per
        example)."""
        if "input_noise" in self.augment:
            scale = lam[..., self.augment["input_noise"]].reshape(-1, *([1] * (x.dim() - 1)))
            x = x + scale * torch.randn_like(x)
        if "cutout_holes" in self.augment:
            x = cutout(x, lam[..., self.augment["cutout_holes"]],
                       lam[..., self.augment["cutout_length"]], self.image_shape)
        return x

    def current(self):
        """``{name: value}`` of the hyper-parameters now."""
        with torch.no_grad():
            return dict(zip(self.names, (float(v) for v in self.hp.values())))

    def check(self, loss, epoch, where):
        """Fail on divergence (:func:`skhpo.nets.divergence`: non-finite, or above the net's
        guard's ``max_ratio`` times the first value of this loss)."""
        value = loss.item()
        self.first.setdefault(where, value if math.isfinite(value) else None)
        reason = divergence(value, self.first[where], self.max_ratio)
        if reason:
            reason = reason.replace("training loss", f"the {where} loss", 1)
            raise TrainingDivergedError(f"CuttingPlaneTuner: {reason} at epoch {epoch + 1}; "
                                        "the training diverged (try a smaller learning rate)")


@record
class _Batches:
    """An endless iterator of index batches, reshuffled (``torch.randperm``) when a pass is
    used up; an object rather than a generator, so a checkpoint can hold where it stands."""

    def __init__(self, n, batch):
        self.n, self.batch, self.parts, self.pos = n, batch, [], 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos == len(self.parts):
            self.parts, self.pos = list(torch.randperm(self.n).split(self.batch)), 0
        self.pos += 1
        return self.parts[self.pos - 1]


def _evaluate(module, loss_fn, X, y, batch, device, name):
    module.eval()
    losses, correct = [], 0
    with torch.no_grad():
        for idx in torch.arange(len(y)).split(max(batch, 512)):
            out = module(X[idx].to(device))
            target = y[idx].to(device)
            losses.append(float(loss_fn(out, target)) * len(idx))
            if out.dim() == 2 and out.shape[1] > 1 and not torch.is_floating_point(target):
                correct += int((out.argmax(dim=1) == target).sum())
    out = {f"{name}_loss": sum(losses) / len(y)}
    if not torch.is_floating_point(y):
        out[f"{name}_acc"] = correct / len(y)
    return out


def _cut(pairs, previous, memory):
    """The cut at the current weights: S = sign(W_e - W_h2) per layer (``"last"``), or the
    signs seen so far as two masks (``"all"``)."""
    signs = [torch.sign(a - b).detach() for a, b in pairs]
    if memory == "last":
        return signs
    if previous is None:
        return [(s > 0, s < 0) for s in signs]
    return [(p | (s > 0), m | (s < 0)) for (p, m), s in zip(previous, signs)]
