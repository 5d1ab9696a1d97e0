"""One-step look-ahead hypergradients for any skorch module (HPM's hypergradient).

For weights ``theta`` and hyper-parameters ``h``, on a training batch and a validation batch::

    theta+(h) = theta - eta * (g(theta, h) + wd * theta),  g = grad_theta L_train(theta, h)
    hypergradient = d/dh L_val(theta+(h))

``L_train`` is the net's loss with the module in training mode (dropout on, its rates possibly
tuned through :class:`~skhpo.hyper.layers.ConcreteDropout`) plus the tuned ``l2``/``l1``
penalties; ``L_val`` is the plain loss in evaluation mode. Both run through
:func:`torch.func.functional_call`, so the module is never modified. A hyper-parameter that
enters ``L_train`` (dropout, l2, l1) needs the double backward through ``g``; the learning rate
and the weight decay enter only the step, and their gradients are the closed forms
``-<u, g + wd theta>`` and ``-eta <u, theta>`` with ``u = grad L_val(theta+)``.

The virtual step is plain SGD whatever the net's optimiser is (as in DARTS).
"""

from dataclasses import dataclass

import torch
from torch.func import functional_call

from ..nets import module_mode
from .layers import dropout_layers, set_dropout_rate
from .space import check_domain, penalty_term
from .transforms import Box

__all__ = ["KINDS", "HyperParam", "apply_hyperparams", "lookahead_loss", "resolve_hyperparam"]

#: how a hyper-parameter enters training
KINDS = ("lr", "weight_decay", "l2", "l1", "dropout")
ACCEPTED = ("lr, optimizer__weight_decay, l2, l1 (skhpo models), l2[i] / l1[i] (the i-th "
            "linear layer), dropout or module__dropout (every dropout layer), dropout[path] "
            "(one dropout layer, path as in module.named_modules())")


@dataclass(frozen=True)
class HyperParam:
    """One tuned hyper-parameter.

    ``name`` is the user's name, ``kind`` one of :data:`KINDS`, ``box`` its range;
    ``targets`` are the weight names (l2, l1, weight_decay) or dropout-rate buffer names
    (dropout) it acts on, and ``layers`` the indices into ``net.penalized_layers()`` (l2, l1).
    """

    name: str
    kind: str
    box: Box
    targets: tuple = ()
    layers: tuple = ()


def resolve_hyperparam(net, pname, box, where="param_bounds"):
    """The :class:`HyperParam` that the parsed name ``pname``
    (:class:`~skhpo.hyper.space.ParamName`) means for the initialised ``net``; a
    ``ValueError`` if the module does not use it."""
    module, name, kind = net.module_, pname.name, pname.kind
    check_domain(where, pname, box.lo, box.hi, what="box")
    if kind == "lr":
        return HyperParam(name, "lr", box)
    if kind == "weight_decay":
        params = [n for n, p in module.named_parameters() if p.requires_grad]
        return HyperParam(name, "weight_decay", box, tuple(params))
    if kind in ("l2", "l1"):
        if not hasattr(net, "penalized_layers") or not hasattr(net, kind):
            raise ValueError(f"{where}[{name!r}]: {type(net).__name__} has no {kind} "
                             "penalty; use a skhpo model (TabularMLPClassifier, ...) or "
                             "optimizer__weight_decay")
        layers = net.penalized_layers()
        index = range(len(layers)) if pname.index is None else [pname.index]
        if pname.index is not None and pname.index >= len(layers):
            raise ValueError(f"{where}[{name!r}]: the module has {len(layers)} linear "
                             f"layers ({kind}[0] ... {kind}[{len(layers) - 1}])")
        by_id = {id(p): n for n, p in module.named_parameters()}
        return HyperParam(name, kind, box, tuple(by_id[id(layers[i].weight)] for i in index),
                          tuple(index))
    if kind == "dropout":
        layers = dropout_layers(module)
        if pname.path is not None:
            if pname.path not in layers:
                raise ValueError(f"{where}[{name!r}]: the module has no dropout layer "
                                 f"{pname.path!r}; its dropout layers are {sorted(layers)}")
            layers = {pname.path: layers[pname.path]}
        if not layers:
            raise ValueError(f"{where}[{name!r}]: the module has no nn.Dropout layer, so "
                             "a dropout rate has nothing to act on")
        return HyperParam(name, "dropout", box, tuple(f"{p}.p" if p else "p" for p in layers))
    raise ValueError(f"{where}: {name!r} is not a hyper-parameter the look-ahead "
                     f"hypergradient can tune; accepted: {ACCEPTED}")


def apply_hyperparams(net, hypers, values):
    """Make the net train with ``values`` (``{name: float}``): optimiser groups, penalties,
    dropout rates (:func:`~skhpo.hyper.layers.set_dropout_rate`)."""
    for hp in hypers:
        v = float(values[hp.name])
        if hp.kind in ("lr", "weight_decay"):
            for group in net.optimizer_.param_groups:
                group[hp.kind] = v
        elif hp.kind in ("l2", "l1"):
            coefs = net.penalty_coefficients()[hp.kind]
            for i in hp.layers:
                coefs[i] = v
            setattr(net, hp.kind, coefs)
            net._penalized = True
        else:
            for target in hp.targets:
                set_dropout_rate(net.module_.get_submodule(target.rpartition(".")[0]), v)


def lookahead_loss(module, loss_fn, hypers, values, batches, *, lr, weight_decay=0.0):
    """``L_val(theta+(h))`` of one virtual SGD step, differentiable in the tensors of
    ``values`` (``{name: scalar tensor}``; names absent from it keep their trained value).

    ``loss_fn(y_pred, y)`` is the unpenalised loss; ``batches`` is ``(train_batch,
    val_batch)``, each ``(X, y)``: the step on the first, the loss on the second; ``lr`` and
    ``weight_decay`` are the step's values when they are not tuned. The step starts from the
    module's trainable weights (detached).
    """
    params = {n: p.detach().requires_grad_(True) for n, p in module.named_parameters()
              if p.requires_grad}
    train_batch, val_batch = batches
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    eta, wd = lr, weight_decay
    penalty, rates, double = 0.0, {}, False
    for hp in hypers:
        if hp.name not in values:
            continue
        v = values[hp.name]
        if hp.kind == "lr":
            eta = v
        elif hp.kind == "weight_decay":
            wd = v
        elif hp.kind in ("l2", "l1"):
            penalty = penalty + v * penalty_term(hp.kind, [params[t] for t in hp.targets])
            double = True
        else:
            rates.update({t: v for t in hp.targets})
            double = True
    with module_mode(module, training=True):
        X, y = train_batch
        train_loss = loss_fn(_call(module, {**params, **buffers, **rates}, X), y) + penalty
        grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=double)
        stepped = {n: p - eta * (g + wd * p) for (n, p), g in zip(params.items(), grads)}
        module.eval()
        Xv, yv = val_batch
        return loss_fn(_call(module, {**stepped, **dict(module.named_buffers())}, Xv), yv)


def _call(module, tensors, X):
    if isinstance(X, dict):
        return functional_call(module, tensors, (), X)
    return functional_call(module, tensors, (X,))
