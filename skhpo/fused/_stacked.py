"""Any torch optimiser over the rows of a stacked buffer: the models' own optimiser class,
one instance for the group, stepping every model's row as one parameter.

Torch's optimisers are elementwise (but LBFGS, which the engine refuses): the update of a
value depends only on that value, its gradient, its state and the step's settings. So one
optimiser of the models' class whose parameters are the group's rows (each row one model's
weights, its state one row per moment) computes, value for value, what each model's own
optimiser computes on its parameter tensors: measured bitwise equal for Adam, AdamW, Adamax,
Adadelta, Adagrad, ASGD, NAdam, RAdam, RMSprop, Rprop and SGD (Nesterov too) on their default
single-tensor path, 18 models, five steps; for the classes of :data:`FOREACH_EXACT` the rows
step through torch's multi-tensor path, also bitwise equal and 10-25 % faster. It costs one
optimiser step for the group instead of one per model (18 models: 0.4-0.5 ms against ~3 ms).

Each step reads every model's settings from its own net's optimiser (its ``param_groups[0]``)
and groups the rows by them, so a learning-rate scheduler or any callback that changes a
model's settings acts on that model alone, as in its own fit; a row without a batch this step
has no gradient, and torch's optimiser leaves it and its state as they are.
"""

import inspect
from collections import defaultdict

import torch

__all__ = ["FOREACH_EXACT", "StackedOptimizer", "row_state", "stackable"]

#: optimisers whose multi-tensor (``foreach``) step is bitwise their single-tensor one on CPU
#: (tests/fused/test_replay.py checks each; NAdam, RAdam and ASGD differ by an ulp)
FOREACH_EXACT = (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adamax,
                 torch.optim.Adadelta, torch.optim.Adagrad, torch.optim.SGD, torch.optim.Rprop)


def stackable(nets, layout):
    """Whether one :class:`StackedOptimizer` replays the nets' own optimisers: one class,
    one parameter group each holding exactly its module's parameters, and no state yet that
    is not one tensor per parameter (e.g. a warm start's)."""
    if len({type(net.optimizer_) for net in nets}) != 1:
        return False
    for net in nets:
        groups = net.optimizer_.param_groups
        params = list(net.module_.parameters())
        if len(groups) != 1 or len(groups[0]["params"]) != len(params) or any(
                p is not q for p, q in zip(groups[0]["params"], params)):
            return False
        for p in params:
            state = net.optimizer_.state.get(p, {})
            if any(not isinstance(v, torch.Tensor) or (v.dim() and v.shape != p.shape)
                   for v in state.values()):
                return False
    return True


def row_state(net, layout, like):
    """``net``'s optimiser state (per parameter) as one row of the stacked buffer: each
    per-parameter tensor laid out as ``layout`` lays the weights in a row shaped ``like``,
    0-dim tensors (Adam's step count) as they are; ``{}`` without state."""
    states = [net.optimizer_.state.get(p, {}) for p in net.module_.parameters()]
    if not any(states):
        return {}
    out = {}
    for key, value in states[0].items():
        if value.dim() == 0:
            out[key] = value.clone()
            continue
        row = torch.zeros_like(like)
        for view, state in zip(layout._tensors(row), states):
            view.copy_(state[key])
        out[key] = row
    return out


class StackedOptimizer:
    """The models' own optimiser class over the rows of ``flat`` (``(K, P)``): ``nets`` (in row
    order) give each row its settings at every step (and any state their optimisers hold
    already); ``layout`` maps a row to the parameters' order."""

    def __init__(self, flat, nets, layout):
        self.params, self.nets, self.layout = [flat], list(nets), layout
        self.rows = list(flat.unbind(0))
        kind = type(nets[0].optimizer_)
        accepted = inspect.signature(kind).parameters
        defaults = nets[0].optimizer_.defaults
        self.opt = kind(self.rows, **{k: v for k, v in defaults.items() if k in accepted})
        # torch's multi-tensor path where it was measured bitwise equal to the single-tensor
        # one on CPU rows (the loop over rows then runs in C++, not Python)
        self.foreach = kind in FOREACH_EXACT and defaults.get("foreach") is None and \
            not defaults.get("differentiable") and not defaults.get("fused") and \
            flat.device.type == "cpu"
        for row, net in zip(self.rows, self.nets):
            state = row_state(net, layout, self.params[0][0])
            if state:
                self.opt.state[row] = state

    @torch.no_grad()
    def step(self, grads, active=None):
        """One step of every row whose ``active`` entry is True (all: None) with its net's
        current settings; ``grads[0]``: the ``(K, P)`` gradient."""
        groups = {}
        for j, (row, net) in enumerate(zip(self.rows, self.nets)):
            if active is not None and not bool(active[j]):
                row.grad = None
                continue
            row.grad = grads[0][j]
            settings = net.optimizer_.param_groups[0]
            key = tuple((k, _hashable(v)) for k, v in settings.items() if k != "params")
            groups.setdefault(key, (settings, []))[1].append(row)
        extra = {"foreach": True} if self.foreach else {}
        self.opt.param_groups = [{**{k: v for k, v in settings.items() if k != "params"},
                                  **extra, "params": rows} for settings, rows in groups.values()]
        self.opt.step()
        for row in self.rows:
            row.grad = None

    def keep(self, index):
        """Keep only the models at positions ``index`` (a retired model leaves the group)."""
        states = [self.opt.state.get(self.rows[j]) for j in index]
        self.nets = [self.nets[j] for j in index]
        self.params = [self.params[0][torch.as_tensor(index, device=self.params[0].device)]]
        self.rows = list(self.params[0].unbind(0))
        self.opt.state = defaultdict(dict)
        for row, state in zip(self.rows, states):
            if state:
                self.opt.state[row] = state

    def state_of(self, j):
        """Model ``j``'s state: one dict of rows (and scalars), as ``layout.load_state``
        takes it."""
        return [dict(self.opt.state.get(self.rows[j], {}))]


def _hashable(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.reshape(-1).tolist()))
    if isinstance(value, list):
        return tuple(value)
    return value
