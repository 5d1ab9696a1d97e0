"""Any module through ``torch.func``: the fused engine's generic path.

A user's module cannot be rewritten into batched products by hand, so the K models run it
through ``torch.func.vmap`` over ``functional_call``, with their parameters stacked per
parameter (:class:`~._mlp.ParamLayout`). Randomness is the hard part: inside ``vmap`` an
``nn.Dropout`` would draw from torch's global generator, one draw for all models, so a model's
masks would depend on its group. Instead, in the engine's copy of the module every
``nn.Dropout`` becomes a layer that multiplies by a noise buffer, and each model's noise is
drawn outside ``vmap``, from its own generator, in the order the forward calls the layers and
as ``F.dropout`` draws it (``bernoulli_(1 - p)``, then ``/ (1 - p)``). ``vmap`` runs with
``randomness="error"``: any other random operation in the forward is an error, caught before
training, and the task trains alone with that reason, never with different numbers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

from ._mlp import ParamLayout

__all__ = ["FuncLayout", "stateful_layer"]


class _GivenNoise(nn.Module):
    """Stands for an ``nn.Dropout`` in the engine's copy: ``x * noise`` (the noise comes in as
    a buffer, per model); the identity where ``p = 0``, as ``F.dropout``."""

    def __init__(self, p):
        super().__init__()
        self.p = float(p)
        self.register_buffer("noise", torch.ones(()), persistent=False)

    def forward(self, x):
        return x if self.p == 0 else x * self.noise


def stateful_layer(module):
    """``"'path' (Class): why"`` for the first layer whose state training would change in
    place or whose randomness the engine cannot replay, or ""."""
    for path, layer in module.named_modules():
        name = f"layer '{path}' ({type(layer).__name__})"
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            return f"{name} keeps running statistics, which training updates in place"
        if isinstance(layer, nn.RNNBase):
            return f"{name}: recurrent layers are not fused"
        if isinstance(layer, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                              nn.FeatureAlphaDropout)):
            return f"{name}: the engine replays the masks of nn.Dropout only"
    return ""


class FuncLayout(ParamLayout):
    """A user's ``module`` for the fused engine; ``sample`` (a few input rows) finds the order
    in which its forward calls its dropout layers and checks, with two stacked copies, that
    the forward runs under ``vmap`` (a ``ValueError`` saying why if not)."""

    def __init__(self, module, sample):
        super().__init__(module)
        param = next(module.parameters(), None)
        if param is None:
            raise ValueError("the module has no parameters to train")
        sample = sample.to(param.device)
        reason = stateful_layer(module)
        if reason:
            raise ValueError(reason)
        self.module = copy.deepcopy(module)
        drops = {}
        for path, layer in list(self.module.named_modules()):
            if type(layer) is nn.Dropout:
                parent, _, attr = path.rpartition(".")
                given = _GivenNoise(layer.p)
                setattr(self.module.get_submodule(parent) if parent else self.module, attr,
                        given)
                drops[path] = given
        if "" in drops:
            raise ValueError("the module is a single nn.Dropout layer")
        self.names = [name for name, _ in self.module.named_parameters()]
        self.order = self._call_order(drops, sample)
        self._shapes = {}  # batch size -> the input shape and dtype of each dropout layer
        # two stacked copies through vmap, forward and backward: what cannot run fails here
        views = [v.detach().requires_grad_(True)
                 for v in self.views(torch.stack([self.flat(module)] * 2))]
        try:
            with torch.random.fork_rng(devices=[]):
                out = self.forward(views, torch.stack([sample, sample]), lambda i, h: h)
                torch.autograd.grad(out.float().sum(), views, allow_unused=True)
        except Exception as exc:
            raise ValueError(f"its forward does not run under torch.func.vmap "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None

    def _call_order(self, drops, sample):
        order = []
        hooks = [layer.register_forward_pre_hook(lambda m, a, path=path: order.append(path))
                 for path, layer in drops.items()]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self.module(sample)
        finally:
            for hook in hooks:
                hook.remove()
        twice = sorted({p for p in order if order.count(p) > 1})
        if twice:
            raise ValueError(f"the dropout layer '{twice[0]}' runs more than once in one "
                             "forward")
        return order

    def dropouts(self, module):
        named = dict(module.named_modules())
        return [named[path] for path in self.order]

    def _noise_shapes(self, views, x):
        """The input shape and dtype of each dropout layer for one model's batch of ``x``."""
        b = x.shape[1]
        if b not in self._shapes:
            seen = {}

            def record(path, inputs):  # a pre-hook must return None: it would replace them
                seen.setdefault(path, (tuple(inputs[0].shape), inputs[0].dtype))
            hooks = [self.module.get_submodule(path).register_forward_pre_hook(
                lambda m, a, path=path: record(path, a)) for path in self.order]
            try:
                with torch.no_grad():
                    functional_call(self.module, {n: v[0] for n, v in zip(self.names, views)},
                                    (x[0],))
            finally:
                for hook in hooks:
                    hook.remove()
            self._shapes[b] = [seen[path] for path in self.order]
        return self._shapes[b]

    def forward(self, views, x, dropout):
        """Every model's output for its batch ``x`` (K, b, ...); ``dropout(i, h)`` multiplies
        ``h`` by each model's noise of the i-th dropout layer in call order (so ``h`` of
        ones gives the noise itself)."""
        K = x.shape[0]
        noise = {}
        for i, (path, (shape, dtype)) in enumerate(zip(self.order,
                                                       self._noise_shapes(views, x))):
            noise[f"{path}.noise"] = dropout(i, torch.ones((K, *shape), dtype=dtype,
                                                           device=x.device))

        def one(params, buffers, xk):
            return functional_call(self.module, {**params, **buffers}, (xk,))
        return vmap(one, randomness="error")(dict(zip(self.names, views)), noise, x)

    @staticmethod
    def loss(net, out, y):
        """Each model's loss on its batch through the net's own ``get_loss`` (skhpo's nets:
        the criterion alone; the engine adds their penalties)."""
        training = not hasattr(net, "penalty_coefficients")
        return vmap(lambda o, t: net.get_loss(o, t, training=training))(out, y)
