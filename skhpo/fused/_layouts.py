"""How one model's weights sit in a row of the stacked ``(K, P)`` buffer, and the stacked
forward of K models, for every kind of module the fused engine trains:

* :class:`MLPLayout` — skhpo's ``MLPModule``: per linear layer W^T then its bias, one
  ``torch.baddbmm`` per layer;
* :class:`CNNLayout` — skhpo's ``SmallCNNModule``: per-model convolutions, a batched dense
  head;
* :class:`FuncLayout` — any other module, through ``torch.func.vmap`` over
  ``functional_call``, with each model's dropout noise drawn outside ``vmap`` from its own
  generator (:func:`stateful_layer` names the layers it cannot replay).

:func:`layout_of` picks one. Each layout's ``forward(views, x, dropout)`` takes the buffer's
per-parameter views and the K models' batches ``x`` (K, b, ...) and calls ``dropout(i, h)``
for the i-th dropout layer, so the group that runs it draws the noise.

The generic path, in more detail: a user's module cannot be rewritten into batched products
by hand, so the K models run it through ``vmap``, with their parameters stacked per
parameter (:class:`ParamLayout`). Inside ``vmap`` an ``nn.Dropout`` would draw from torch's
global generator, one draw for all models, so a model's masks would depend on its group.
Instead, in the engine's copy of the module every ``nn.Dropout`` becomes a layer that
multiplies by a noise buffer, and each model's noise is drawn outside ``vmap``, from its own
generator, in the order the forward calls the layers and as ``F.dropout`` draws it.
``vmap`` runs with ``randomness="error"``: any other random operation in the forward is an
error, caught before training, and the task trains alone with that reason, never with
different numbers.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..hyper.concrete import ConcreteDropout
from ..models import MLPModule, SmallCNNModule
from ._inputs import apply, leaf, stack

__all__ = ["CNNLayout", "ChainLayout", "FuncLayout", "MLPLayout", "ParamLayout", "flat_weights",
           "layer_views", "layout_of", "module_signature", "stateful_layer"]

def _structure(module):
    """``[("dropout", layer) | ("linear", layer) | ("act", layer)]`` of an ``MLPModule``
    (its dropout layers may be :class:`~skhpo.hyper.ConcreteDropout`, as in HPM's students)."""
    out = []
    for layer in module.layers:
        kind = "linear" if isinstance(layer, nn.Linear) else \
            "dropout" if isinstance(layer, (nn.Dropout, ConcreteDropout)) else "act"
        out.append((kind, layer))
    return out


def flat_weights(module):
    """The row of ``module`` (an ``MLPModule``) in a stacked buffer: per linear layer W^T
    (in x out, flattened), then its bias."""
    return torch.cat([t for kind, layer in _structure(module) if kind == "linear"
                      for t in (layer.weight.detach().T.reshape(-1), layer.bias.detach())])


def layer_views(flat, shapes):
    """``[(W (k, in, out), b (k, 1, out)), ...]``: views of the rows of ``flat`` (k, P), one
    pair per linear layer of ``shapes`` (``[(in, out), ...]``)."""
    out, start = [], 0
    for n_in, n_out in shapes:
        W = flat[:, start:start + n_in * n_out].view(-1, n_in, n_out)
        start += n_in * n_out
        out.append((W, flat[:, start:start + n_out].view(-1, 1, n_out)))
        start += n_out
    return out


def _shapes(module):
    return [(layer.in_features, layer.out_features)
            for kind, layer in _structure(module) if kind == "linear"]


def layout_of(module, sample=None):
    """The layout of ``module``: an ``MLPModule``, a ``SmallCNNModule``, a module whose
    forward is a chain of linear layers and elementwise steps (:class:`ChainLayout`), or any
    other module through ``torch.func`` (:class:`FuncLayout`; ``sample``: a few input rows)."""
    if isinstance(module, SmallCNNModule):
        return CNNLayout(module)
    if type(module) is MLPModule:
        return MLPLayout(module)
    try:
        return ChainLayout(module, sample)
    except ValueError:
        return FuncLayout(module, sample)


class _Layout:
    """What every layout shares: writing one model's row into its module and its optimiser
    state into its optimiser, once ``_tensors(row)`` says which tensor of the row is which
    parameter (in ``module.parameters()`` order, shaped as the parameter, views of the row)."""

    #: the module's buffers the group stacks per model (none but on the torch.func path)
    buffer_names = ()

    def train(self, mode=True):
        """Training or evaluation mode of the stacked forward (dropout is the group's to
        apply; a layout without mode-dependent layers has nothing to switch)."""

    def write(self, module, row):
        """One model's row of the stacked buffer into ``module``'s parameters."""
        with torch.no_grad():
            for p, t in zip(module.parameters(), self._tensors(row)):
                p.copy_(t)

    def load_state(self, net, state):
        """One model's optimiser state into ``net``'s optimiser, as torch keeps it per
        parameter: ``state`` maps a key to a row of the stacked buffer (Adam's moments, SGD's
        momentum buffer) or to a scalar tensor (Adam's step count: one copy per parameter).
        An empty ``state`` leaves the optimiser without state (SGD without momentum)."""
        rows = {key: self._tensors(value) for key, value in state.items()
                if isinstance(value, torch.Tensor) and value.dim() > 0}
        scalars = {key: value for key, value in state.items() if key not in rows}
        optimizer = net.optimizer_
        optimizer.state.clear()
        if not state:
            return
        for i, p in enumerate(net.module_.parameters()):
            optimizer.state[p] = {
                **{key: copy.deepcopy(value) for key, value in scalars.items()},
                **{key: rows[key][i].clone(memory_format=torch.contiguous_format)
                   for key in rows}}


class MLPLayout(_Layout):
    """skhpo's ``MLPModule``: per linear layer W^T (in x out) then its bias; the stacked
    forward is one ``torch.baddbmm`` per linear layer."""

    def __init__(self, module):
        structure = _structure(module)
        self.kinds = [kind for kind, _ in structure]
        self.acts = [layer for kind, layer in structure if kind == "act"]
        self.shapes = _shapes(module)
        self.n_linear = len(self.shapes)

    def flat(self, module):
        return flat_weights(module)

    def views(self, flat):
        return [t for pair in layer_views(flat, self.shapes) for t in pair]

    def linear_weights(self, views):
        return views[0::2]

    @staticmethod
    def dropouts(module):
        return [layer for kind, layer in _structure(module) if kind == "dropout"]

    def forward(self, views, x, dropout, buffers=None):
        """Every model's output for its batch ``x`` (K, b, in); ``dropout(i, h)`` applies the
        i-th dropout layer (the module has no ``buffers``)."""
        h, lin, drop = x, 0, 0
        for kind in self.kinds:
            if kind == "linear":
                h = torch.baddbmm(views[2 * lin + 1], h, views[2 * lin])
                lin += 1
            elif kind == "dropout":
                h = dropout(drop, h)
                drop += 1
            else:
                h = self.acts[lin - 1](h)
        return h

    def _tensors(self, row):
        return [t for W, b in layer_views(row.detach()[None], self.shapes)
                for t in (W[0].T, b[0, 0])]


class ParamLayout(_Layout):
    """Every parameter of the module in its own layout, in ``module.parameters()`` order: the
    views of the buffer are ``(K, *parameter shape)``."""

    def __init__(self, module):
        self.shapes = [tuple(p.shape) for p in module.parameters()]
        linear = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
        self.linear = [i for i, p in enumerate(module.parameters()) if id(p) in linear]
        self.n_linear = len(self.linear)

    def flat(self, module):
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def views(self, flat):
        out, start = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(flat[:, start:start + n].view(-1, *shape))
            start += n
        return out

    def linear_weights(self, views):
        return [views[i] for i in self.linear]

    @staticmethod
    def dropouts(module):
        return [m for m in module.modules() if isinstance(m, (nn.Dropout, ConcreteDropout))]

    def _tensors(self, row):
        return [t[0] for t in self.views(row.detach()[None])]


class CNNLayout(ParamLayout):
    """skhpo's ``SmallCNNModule``, its parameters as :class:`ParamLayout` keeps them. The
    convolutions run per model (a grouped convolution, ``groups=K``, was no faster on a CPU
    and its weight gradients depend on K in their last bits); the dense head is one
    ``torch.baddbmm`` per linear layer, the loss and the optimiser step are batched."""

    def __init__(self, module):
        super().__init__(module)
        self.image_shape = tuple(module.image_shape)
        self.features, self.head = list(module.features), list(module.head)

    def forward(self, views, x, dropout, buffers=None):
        K, b = x.shape[:2]
        params = iter(views)
        h = x.reshape(K, b, *self.image_shape)
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                # one convolution per model: as fast as one grouped convolution on a CPU here,
                # and a model's arithmetic then never depends on its group (bitwise)
                W, bias = next(params), next(params)
                h = torch.stack([F.conv2d(h[k], W[k], bias[k], layer.stride, layer.padding,
                                          layer.dilation) for k in range(K)])
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(K, b, -1)  # each model's C*H*W, as nn.Flatten orders them
            else:  # activation, max pooling: per sample
                out = layer(h.reshape(K * b, *h.shape[2:]))
                h = out.reshape(K, b, *out.shape[1:])
        drop = 0
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                W, bias = next(params), next(params)
                h = torch.baddbmm(bias.unsqueeze(1), h, W.transpose(1, 2))
            elif isinstance(layer, (nn.Dropout, ConcreteDropout)):
                h = dropout(drop, h)
                drop += 1
            else:
                h = layer(h)
        return h


class _GivenNoise(nn.Module):
    """Stands for a dropout layer in the engine's copy: ``x * noise`` (the noise comes in as
    a buffer, per model); the identity where ``p = 0``, as ``F.dropout``. ``dims``: the
    input dimensions of a feature dropout (``Dropout2d``: 4), None for ``nn.Dropout``."""

    def __init__(self, p, dims=None):
        super().__init__()
        self.p, self.dims = float(p), dims
        self.register_buffer("noise", torch.ones(()), persistent=False)

    def noise_shape(self, shape):
        """The noise of an input of ``shape``: ``F.dropout``'s is the input's, a feature
        dropout's one value per sample and channel."""
        if self.dims is None:
            return shape
        return (*shape[:2], *[1] * (len(shape) - 2))

    def forward(self, x):
        return x * self.noise  # ones where the model's rate is 0 or in evaluation: exact


#: dropout layers whose masks the engine draws per model, and the input dimensions of each
#: (a feature dropout drops whole channels: its noise is ``(N, C, 1, ...)``)
_DROPOUTS = {nn.Dropout: None, nn.Dropout1d: 3, nn.Dropout2d: 4, nn.Dropout3d: 5}


def stateful_layer(module):
    """``"'path' (Class): why"`` for the first layer whose state training would change in a
    way the engine cannot follow or whose randomness it cannot replay, or ""."""
    for path, layer in module.named_modules():
        name = f"layer '{path}' ({type(layer).__name__})"
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats \
                and layer.momentum is None:
            return (f"{name} has momentum=None (a cumulative average of its statistics); "
                    "a momentum (e.g. 0.1, the default) fuses")
        if isinstance(layer, (nn.modules.batchnorm._LazyNormBase, nn.SyncBatchNorm)):
            return f"{name}: lazy and synchronised batch norms are not fused"
        if isinstance(layer, nn.RNNBase):
            return f"{name}: recurrent layers are not fused"
        if isinstance(layer, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
            return f"{name}: the engine replays the masks of nn.Dropout and Dropout1d/2d/3d"
    return ""


def module_signature(module):
    """What models must share to run through one copy of ``module`` on the ``torch.func``
    path: per submodule its class, its settings (``extra_repr``) and its plain attributes,
    and its parameters' and buffers' shapes; a dropout layer's rate left out (each model's
    noise is its own), so that a grid over dropout rates trains in one group."""
    out = []
    for path, layer in module.named_modules():
        settings = "" if type(layer) in _DROPOUTS else layer.extra_repr()
        plain = sorted((k, repr(v)) for k, v in vars(layer).items()
                       if not k.startswith("_") and k != "training"
                       and not (type(layer) in _DROPOUTS and k == "p"))
        out.append((path, type(layer).__qualname__, type(layer).__module__, settings,
                    tuple(plain)))
    out.append(tuple((n, tuple(t.shape), str(t.dtype)) for n, t in module.state_dict().items()))
    return tuple(out)


#: layers a chain runs on the stacked (K, b, features) activations as they are: elementwise,
#: so each model's values are what the layer gives it alone
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.ReLU6,
                nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink, nn.Identity)
_ELEMENTWISE_FUNCTIONS = {torch.relu, F.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu,
                          F.leaky_relu, F.elu, F.softplus, torch.nn.functional.tanh,
                          torch.nn.functional.sigmoid}
_LAST_DIM = (nn.Softmax, nn.LogSoftmax)
_LAST_DIM_FUNCTIONS = {torch.softmax, F.softmax, torch.log_softmax, F.log_softmax}


class ChainLayout(ParamLayout):
    """A module whose forward (traced by ``torch.fx``) is a chain of ``nn.Linear`` layers,
    ``nn.Dropout`` layers and elementwise steps (activations, a softmax over the last
    dimension, a ``squeeze(-1)``) on 2-d input: the stacked forward runs the chain on the
    (K, b, features) activations, one ``torch.baddbmm`` per linear layer, as
    :class:`MLPLayout` runs skhpo's own MLP (no ``vmap``: about 1 ms less per step). Any
    other forward is a ``ValueError`` (:class:`FuncLayout` then runs it)."""

    def __init__(self, module, sample):
        super().__init__(module)
        if not isinstance(sample, torch.Tensor) or sample.dim() != 2 or \
                sample.dtype != torch.float32 or \
                any(True for _ in module.buffers()):
            raise ValueError("a chain takes 2-d float32 input and keeps no buffers")
        try:
            graph = torch.fx.symbolic_trace(module).graph
        except Exception as exc:
            raise ValueError(f"its forward cannot be traced ({type(exc).__name__})") from None
        index = {id(p): i for i, p in enumerate(module.parameters())}
        layers = dict(module.named_modules())
        self.steps, self.order, inputs = [], [], 0
        for node in graph.nodes:
            if node.op == "placeholder":
                inputs += not str(node.target).startswith("*")
            elif node.op == "output":
                self.output = node.args[0]
            else:
                self.steps.append((node, self._step(node, layers, index)))
        if inputs != 1 or not isinstance(self.output, torch.fx.Node):
            raise ValueError("a chain has one input and one output")
        if len(set(self.order)) != len(self.order):
            raise ValueError("a dropout layer runs more than once in one forward")
        used = {i for _, step in self.steps if step[0] == "linear" for i in step[1:] if
                i is not None}
        if used != set(range(len(self.shapes))):
            raise ValueError("a parameter is used outside a linear layer")
        self._dropout_layers = list(self.order)
        self.linear = sorted(step[1] for _, step in self.steps if step[0] == "linear")
        self.n_linear = len(self.linear)

    def _step(self, node, layers, index):
        """What the chain does at ``node``: ``("linear", weight index, bias index)``,
        ``("dropout", i)``, ``("layer", module)`` or ``("call", function, kwargs)``."""
        if node.op == "call_module":
            layer = layers[node.target]
            if isinstance(layer, nn.Linear):
                bias = None if layer.bias is None else index[id(layer.bias)]
                return ("linear", index[id(layer.weight)], bias)
            if type(layer) is nn.Dropout:
                self.order.append(node.target)
                return ("dropout", len(self.order) - 1)
            if isinstance(layer, _ELEMENTWISE) and not list(layer.parameters()):
                return ("layer", layer)
            if isinstance(layer, _LAST_DIM) and layer.dim in (-1, 1):
                return ("call", type(layer).__name__.lower(), {})
            raise ValueError(f"layer '{node.target}' ({type(layer).__name__}) is not a step "
                             "of a chain")
        if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS and \
                len(node.args) == 1 and set(node.kwargs) <= {"inplace"}:
            return ("call", node.target, {})
        if node.op == "call_function" and node.target in _LAST_DIM_FUNCTIONS and \
                node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None) in (-1, 1):
            return ("call", node.target, {"dim": -1})
        if node.op == "call_method" and node.target == "squeeze" and \
                tuple(node.args[1:]) in ((-1,), (1,)) and not node.kwargs:
            return ("call", "squeeze", {})
        raise ValueError(f"'{node.target}' is not a step of a chain")

    def dropouts(self, module):
        named = dict(module.named_modules())
        return [named[path] for path in self._dropout_layers]

    def forward(self, views, x, dropout, buffers=None):
        """Every model's output for its batch ``x`` (K, b, in); ``dropout(i, h)`` applies the
        i-th dropout layer in call order."""
        values = {}
        h = x
        for node, step in self.steps:
            arg = values.get(node.args[0], x) if node.args else x
            kind = step[0]
            if kind == "linear":
                W = views[step[1]].transpose(1, 2)
                h = torch.bmm(arg, W) if step[2] is None else \
                    torch.baddbmm(views[step[2]].unsqueeze(1), arg, W)
            elif kind == "dropout":
                h = dropout(step[1], arg)
            elif kind == "layer":
                h = step[1](arg)
            elif step[1] == "squeeze":
                h = arg.squeeze(-1)
            elif step[1] in ("softmax", "logsoftmax"):
                h = arg.softmax(-1) if step[1] == "softmax" else arg.log_softmax(-1)
            else:
                h = step[1](arg, **step[2])
            values[node] = h
        return values[self.output]

    loss = staticmethod(lambda net, out, y: net_loss(net, out, y))


class FuncLayout(ParamLayout):
    """A user's ``module`` for the fused engine; ``sample`` (a few input rows) finds the order
    in which its forward calls its dropout layers and checks, with two stacked copies, that
    the forward runs under ``vmap`` (a ``ValueError`` saying why if not)."""

    def __init__(self, module, sample):
        super().__init__(module)
        param = next(module.parameters(), None)
        if param is None:
            raise ValueError("the module has no parameters to train")
        sample = apply(lambda t: t.to(param.device), sample)
        reason = stateful_layer(module)
        if reason:
            raise ValueError(reason)
        #: the module's buffers (BatchNorm's running statistics), which the group stacks per
        #: model and passes to :meth:`forward`
        self.buffer_names = [name for name, _ in module.named_buffers()]
        self.module = copy.deepcopy(module)
        drops = {}
        for path, layer in list(self.module.named_modules()):
            if type(layer) in _DROPOUTS:
                parent, _, attr = path.rpartition(".")
                given = _GivenNoise(layer.p, _DROPOUTS[type(layer)])
                setattr(self.module.get_submodule(parent) if parent else self.module, attr,
                        given)
                drops[path] = given
        if "" in drops:
            raise ValueError("the module is a single dropout layer")
        self.names = [name for name, _ in self.module.named_parameters()]
        self.order = self._call_order(drops, sample)
        self._shapes = {}  # batch size -> the noise shape and dtype of each dropout layer
        # two stacked copies through vmap, forward and backward: what cannot run fails here
        views = [v.detach().requires_grad_(True)
                 for v in self.views(torch.stack([self.flat(module)] * 2))]
        buffers = {name: torch.stack([b.detach().clone()] * 2)
                   for name, b in module.named_buffers()}
        try:
            with torch.random.fork_rng(devices=[]):
                out = self.forward(views, stack([sample, sample]), lambda i, h: h, buffers)
                torch.autograd.grad(out.float().sum(), views, allow_unused=True)
        except Exception as exc:
            raise ValueError(f"its forward does not run under torch.func.vmap "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None

    def _call_order(self, drops, sample):
        order, dims = [], {}

        def called(path, inputs):
            order.append(path)
            dims[path] = inputs[0].dim()
        hooks = [layer.register_forward_pre_hook(lambda m, a, path=path: called(path, a))
                 for path, layer in drops.items()]
        try:  # (the engine's copy: its own running statistics are never used)
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                _call(self.module, sample)
        finally:
            for hook in hooks:
                hook.remove()
        twice = sorted({p for p in order if order.count(p) > 1})
        if twice:
            raise ValueError(f"the dropout layer '{twice[0]}' runs more than once in one "
                             "forward")
        for path in order:
            want = drops[path].dims
            if want is not None and dims[path] != want:
                raise ValueError(f"the feature dropout '{path}' gets {dims[path]}-d input "
                                 f"(the engine replays it on batched {want}-d input)")
        return order

    def dropouts(self, module):
        named = dict(module.named_modules())
        return [named[path] for path in self.order]

    def train(self, mode=True):
        self.module.train(mode)

    def _noise_shapes(self, views, x):
        """The input shape and dtype of each dropout layer for one model's batch of ``x``."""
        b = leaf(x).shape[1]
        if b not in self._shapes:
            seen = {}

            def record(layer, path, inputs):  # a pre-hook returns None (else: new inputs)
                seen.setdefault(path, (layer.noise_shape(tuple(inputs[0].shape)),
                                       inputs[0].dtype))
            hooks = [self.module.get_submodule(path).register_forward_pre_hook(
                lambda m, a, path=path: record(m, path, a)) for path in self.order]
            try:
                with torch.no_grad():
                    _call(self.module, apply(lambda t: t[0], x),
                          {n: v[0] for n, v in zip(self.names, views)})
            finally:
                for hook in hooks:
                    hook.remove()
            self._shapes[b] = [seen[path] for path in self.order]
        return self._shapes[b]

    def forward(self, views, x, dropout, buffers=None):
        """Every model's output for its batch ``x`` (K, b, ...); ``dropout(i, h)`` multiplies
        ``h`` by each model's noise of the i-th dropout layer in call order (so ``h`` of
        ones gives the noise itself). ``buffers``: each buffer of the module stacked per
        model (K, ...), which a training forward updates in place (BatchNorm's running
        statistics, per model: torch's batching rule of ``batch_norm``)."""
        K, device = leaf(x).shape[0], leaf(x).device
        noise = dict(buffers or {})
        for i, (path, (shape, dtype)) in enumerate(zip(self.order,
                                                       self._noise_shapes(views, x))):
            noise[f"{path}.noise"] = dropout(i, torch.ones((K, *shape), dtype=dtype,
                                                           device=device))

        def one(params, buffers, xk):
            return _call(self.module, xk, {**params, **buffers})
        return vmap(one, randomness="error")(dict(zip(self.names, views)), noise, x)

    loss = staticmethod(lambda net, out, y: net_loss(net, out, y))


def _call(module, x, tensors=None):
    """``module``'s forward on ``x`` (a dict of inputs: as keyword arguments, as skorch calls
    a module with a ``SliceDict``), with ``tensors`` in place of its parameters and buffers."""
    args, kwargs = ((), x) if isinstance(x, dict) else ((x,), {})
    if tensors is None:
        return module(*args, **kwargs)
    return functional_call(module, tensors, args, kwargs)


def net_loss(net, out, y):
    """Each model's loss on its batch through the net's own ``get_loss``, called on the
    model's slice (so a criterion ``vmap`` cannot batch, e.g. one with class weights and
    label smoothing, computes what it computes in the model's own fit; skhpo's nets: the
    criterion alone, the engine adds their penalties)."""
    training = not hasattr(net, "penalty_coefficients")
    return torch.stack([net.get_loss(o, t, training=training) for o, t in zip(out, y)])
