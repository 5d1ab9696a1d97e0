"""Module surgery for tunable regularisation, shared by the gradient methods.

* :func:`dropout_layers` finds the dropout layers of a module; :func:`set_dropout_rate` sets
  one rate, whatever the layer; :class:`DropoutRates` is a skorch callback that sets per-layer
  rates of an ordinary net when training begins (to retrain a plain net with tuned rates);
* :func:`replace_dropout` swaps the ``nn.Dropout`` layers of a user's module for
  :class:`~skhpo.hyper.concrete.ConcreteDropout` in place (HPM);
* :func:`convert_module` turns a module into a self-tuning network in place, with the layers of
  :mod:`skhpo.hyper.stn`, and :func:`general_state_dict` maps its general weights back onto
  the plain module (CPMLHO). The module's ``forward`` is never touched.

The layer classes live in :mod:`skhpo.hyper.concrete` and :mod:`skhpo.hyper.stn`.
"""

from skorch.callbacks import Callback
from torch import nn

from .concrete import ConcreteDropout
from .stn import HyperContext, HyperDropout, HyperLayer

__all__ = ["DropoutRates", "convert_module", "dropout_layers", "general_state_dict",
           "replace_dropout", "set_dropout_rate"]

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def dropout_layers(module):
    """``{path: layer}`` of the dropout layers of ``module`` (``nn.Dropout`` and its 1-3d
    channel variants, :class:`ConcreteDropout`, :class:`HyperDropout`), in registration
    order (path as in ``named_modules``)."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (*_DROPOUTS, ConcreteDropout, HyperDropout))}


def replace_dropout(module, temperature=0.1):
    """Replace every ``nn.Dropout`` of ``module`` (in place) by a :class:`ConcreteDropout`
    with the same rate; return ``{path: layer}`` of the concrete layers. Idempotent."""
    for path, layer in list(dropout_layers(module).items()):
        if type(layer) is nn.Dropout:
            parent_path, _, attr = path.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            new = ConcreteDropout(layer.p, temperature)
            new.train(layer.training)
            setattr(parent, attr, new)
    return dropout_layers(module)


class DropoutRates(Callback):
    """Set ``module_.<path>.p`` for each ``{path: rate}`` when training begins.

    Lets an ordinary skorch net be retrained with per-layer rates that its constructor
    cannot express (e.g. the rates a :class:`~skhpo.PopulationMutationSearch` found).
    """

    def __init__(self, rates):
        self.rates = rates

    def on_train_begin(self, net, **kwargs):
        layers = dropout_layers(net.module_)
        for path, rate in self.rates.items():
            if path not in layers:
                raise ValueError(f"DropoutRates: the module has no dropout layer {path!r}; "
                                 f"it has {sorted(layers)}")
            set_dropout_rate(layers[path], rate)


def set_dropout_rate(layer, rate):
    """Set the rate of one dropout layer: the buffer of a :class:`ConcreteDropout` (in place,
    so a ``functional_call`` sees it), else ``layer.p``."""
    if isinstance(layer, ConcreteDropout):
        layer.p.fill_(float(rate))
    else:
        layer.p = float(rate)









def convert_module(module, rate_paths, n_hyper):
    """Convert ``module`` in place for Delta-STN training.

    Every ``nn.Linear`` and ``nn.Conv2d`` becomes a :class:`HyperLayer` with ``n_hyper``
    hyper-inputs; the dropout layer at ``rate_paths[i]`` becomes a :class:`HyperDropout`
    reading rate ``i`` (other dropout layers keep their fixed rate). Returns the shared
    :class:`HyperContext`. Raises a ``ValueError`` if the module has no layer to convert or
    a path is not a dropout layer.
    """
    context = HyperContext(n_hyper)
    dropouts = dropout_layers(module)
    for path in rate_paths:
        if path not in dropouts:
            raise ValueError(f"the module has no dropout layer {path!r}; its dropout layers "
                             f"are {sorted(dropouts)}")
    targets = [(name, m) for name, m in module.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not targets:
        raise ValueError(f"{type(module).__name__} has no nn.Linear or nn.Conv2d layer to "
                         "convert into a self-tuning layer")
    for name, layer in targets:
        _replace(module, name, HyperLayer(layer, n_hyper, context))
    for i, path in enumerate(rate_paths):
        channel = isinstance(dropouts[path], (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))
        _replace(module, path, HyperDropout(i, context, channel))
    return context


def _replace(module, path, new):
    if not path:
        raise ValueError("the module itself is a single layer; wrap it in a container "
                         "(e.g. nn.Sequential) so that it can be converted")
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, new)


def general_state_dict(converted):
    """The converted module's general weights under the original module's names (the
    ``.base`` of every :class:`HyperLayer`); the response weights are left out."""
    hyper = [f"{name}." if name else "" for name, m in converted.named_modules()
             if isinstance(m, HyperLayer)]
    out = {}
    for key, value in converted.state_dict().items():
        prefix = next((p for p in hyper if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
        elif key.startswith(prefix + "base."):
            out[prefix + key[len(prefix) + 5:]] = value
    return out




