"""Ready-made skorch estimators that are proper scikit-learn citizens.

:class:`TabularMLPClassifier`, :class:`TabularMLPRegressor` and :class:`SmallCNNClassifier`
are skorch nets (so every skorch feature and parameter works, ``module__*``, ``optimizer__*``,
callbacks, ``device``) that also validate their input like scikit-learn estimators: float32
conversion, ``n_features_in_``, ``classes_`` of any label type, NaN/shape errors, and a
``random_state``. They train on whole-tensor slices (:class:`skhpo.nets.ArrayBatchIterator`)
and stop with an error when the training loss diverges (:class:`skhpo.nets.FiniteLossGuard`).
"""

import inspect

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_array, check_random_state, column_or_1d
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNet, NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import EpochTimer, PassthroughScoring, PrintLog
from torch import nn

from .hyper.space import penalty_term
from .nets import ArrayBatchIterator, FiniteLossGuard, draw_seed, seed_everything

__all__ = ["TabularMLPClassifier", "TabularMLPRegressor", "SmallCNNClassifier",
           "MLPModule", "SmallCNNModule"]

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU, "selu": nn.SELU,
    "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid,
}


def _activation(name):
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(f"activation: got {name!r}; accepted: {sorted(ACTIVATIONS)}") from None


class MLPModule(nn.Module):
    """``depth`` x [Linear(width) -> activation -> Dropout] -> Linear(n_outputs) (logits).

    ``dropout`` is one rate for every hidden layer or a sequence of ``depth`` rates;
    ``input_dropout`` (if not None) adds a Dropout layer on the input, first."""

    def __init__(self, n_features, n_outputs, depth=2, width=128, dropout=0.0, activation="relu",
                 input_dropout=None):
        super().__init__()
        rates = [dropout] * depth if np.ndim(dropout) == 0 else list(dropout)
        if len(rates) != depth:
            raise ValueError(f"dropout has {len(rates)} rates for depth={depth} hidden layers: "
                             "give one float, or one rate per hidden layer")
        layers, n_in = [] if input_dropout is None else [nn.Dropout(input_dropout)], n_features
        for rate in rates:
            layers += [nn.Linear(n_in, width), _activation(activation), nn.Dropout(rate)]
            n_in = width
        layers.append(nn.Linear(n_in, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, X):
        return self.layers(X)


class SmallCNNModule(nn.Module):
    """``n_blocks`` x [Conv(same) -> activation -> MaxPool 2] -> Linear(width) -> activation
    -> Dropout -> Linear(n_outputs). Filters double in each block; pooling is skipped along an
    axis that is already of size 1."""

    def __init__(self, image_shape, n_outputs, n_blocks=2, n_filters=16, kernel_size=3,
                 width=64, dropout=0.0, activation="relu"):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape
        layers = []
        for i in range(n_blocks):
            out = n_filters * 2**i
            layers += [nn.Conv2d(c, out, kernel_size, padding="same"), _activation(activation)]
            ph, pw = min(2, h), min(2, w)
            if ph * pw > 1:
                layers.append(nn.MaxPool2d((ph, pw)))
                h, w = h // ph, w // pw
            c = out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c * h * w, width), _activation(activation),
                                  nn.Dropout(dropout), nn.Linear(width, n_outputs))

    def forward(self, X):
        return self.head(self.features(X.reshape(-1, *self.image_shape)))


class _SkhpoNetMixin:
    """Shared sklearn-citizen behaviour: validation, data-dependent module sizes, seeding.

    A model class defines ``_module_params`` (its parameters that go to the module) and
    ``_module_dims()`` (the module arguments that come from the data seen in fit).
    """

    #: estimator parameters that are passed on to the module's constructor
    _module_params: tuple = ()

    def _init_net(self, args):
        """``__init__`` body shared by the models: skorch's own arguments go to skorch's
        constructor, the others (architecture, ``random_state``) become attributes."""
        args = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        kwargs = args.pop("kwargs")
        base = next(c for c in type(self).__mro__
                    if c in (NeuralNetClassifier, NeuralNetRegressor))
        accepted = set(inspect.signature(base.__init__).parameters)
        accepted |= set(inspect.signature(NeuralNet.__init__).parameters)
        base.__init__(self, **{k: v for k, v in args.items() if k in accepted or "__" in k},
                      **kwargs)
        for key, value in args.items():
            if key not in accepted and "__" not in key:
                setattr(self, key, value)
        # skorch sets these in __init__; sklearn wants only parameters there. The class
        # attributes below give the same values until skorch assigns them during fit.
        for attr in ("history_", "initialized_", "virtual_params_"):
            self.__dict__.pop(attr, None)

    initialized_ = False
    history_ = None

    @property
    def virtual_params_(self):
        return self.__dict__.setdefault("_virtual_params", {})

    @virtual_params_.setter
    def virtual_params_(self, value):
        self.__dict__["_virtual_params"] = value

    def _get_param_names(self):
        # skorch treats every public attribute as a parameter; private state is not one
        return [k for k in super()._get_param_names() if not k.startswith("_")]

    def __sklearn_is_fitted__(self):
        return hasattr(self, "n_features_in_") and "module_" in self.__dict__

    def _set_training(self, training=True):
        # skorch calls this before every batch; Module.train() walks the whole module tree
        # each time. Only switch when the mode actually changes.
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, nn.Module) and module.training != training:
                module.train(training)

    def initialize_module(self):
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"{type(self).__name__} sizes its network from the data; "
                                 "call fit(X, y) instead of initialize().")
        kwargs = {p: getattr(self, p) for p in self._module_params}
        kwargs.update(self._module_dims())
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.initialized_instance(self.module, kwargs)
        coefs = self.penalty_coefficients()  # bad l2/l1 fail here, before any training
        self._penalized = any(coefs["l2"]) or any(coefs["l1"])
        return self

    # -- explicit penalties (l2, l1 per linear layer) ------------------------------------------

    def penalized_layers(self):
        """The ``nn.Linear`` layers of the module the ``l2``/``l1`` coefficients apply to."""
        return [m for m in self.module_.modules() if isinstance(m, nn.Linear)]

    def penalty_coefficients(self):
        """``{"l2": [...], "l1": [...]}``, one float per penalised layer; checks the values."""
        n = len(self.penalized_layers())
        out = {}
        for name in ("l2", "l1"):
            value = getattr(self, name, 0.0)
            coefs = [value] * n if np.ndim(value) == 0 else list(value)
            if len(coefs) != n:
                raise ValueError(f"{name} has {len(coefs)} coefficients but the module has {n} "
                                 "linear layers: give one float, or one per layer")
            if not all(isinstance(c, (int, float, np.number)) and np.isfinite(c) and c >= 0
                       for c in coefs):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
            out[name] = [float(c) for c in coefs]
        return out

    def penalty(self):
        """The penalty term sum_k l2_k ||W_k||^2 + l1_k ||W_k||_1 (a scalar tensor)."""
        coefs = self.penalty_coefficients()
        total = torch.zeros((), device=next(self.module_.parameters()).device)
        for layer, a, b in zip(self.penalized_layers(), coefs["l2"], coefs["l1"]):
            if a:
                total = total + a * penalty_term("l2", [layer.weight])
            if b:
                total = total + b * penalty_term("l1", [layer.weight])
        return total

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """The criterion, plus the ``l2``/``l1`` penalty when training."""
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if training and getattr(self, "_penalized", False):
            loss = loss + self.penalty()
        return loss

    def initialize(self):
        if self.random_state is not None:
            seed_everything(draw_seed(check_random_state(self.random_state)))
        return super().initialize()

    @property
    def _default_callbacks(self):
        return [("epoch_timer", EpochTimer()),
                ("train_loss", PassthroughScoring(name="train_loss", on_train=True)),
                ("valid_loss", PassthroughScoring(name="valid_loss")),
                ("finite_loss", FiniteLossGuard()),
                ("print_log", PrintLog())]

    def fit(self, X, y, **fit_params):
        """Validate ``X`` and ``y`` like a scikit-learn estimator, (re-)initialise the net
        unless ``warm_start`` and train for ``max_epochs``."""
        if not self.warm_start or not self.initialized_:
            self.initialized_ = False
        return self.partial_fit(X, y, **fit_params)

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs, initialising the net on the first call."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None")
        first = not self.initialized_
        X = self._check_X(X, reset=first)
        y = self._check_y(y, reset=first)
        if len(y) != len(X):
            raise ValueError(f"X and y have different lengths: {len(X)} and {len(y)}")
        if first:
            self.initialize()
        return super().partial_fit(X, y, **fit_params)

    def _check_X(self, X, reset):
        if not reset:
            check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=reset,
                          allow_nd=getattr(self, "_allow_nd", False))
        if reset:
            self._set_input_shape(X.shape)
        return X.reshape(len(X), -1) if X.ndim > 2 else X

    def _set_input_shape(self, shape):
        """Hook: remember the input shape seen in fit (images need it; tables do not)."""


class _ClassifierMixin(_SkhpoNetMixin):
    def check_data(self, X, y):
        """No-op: skorch's check would overwrite ``classes_`` with the encoded labels; the
        labels are validated and encoded (and ``classes_`` set) in ``_check_y``."""

    def _check_y(self, y, reset):
        y = column_or_1d(check_array(y, ensure_2d=False, dtype=None, input_name="y"), warn=True)
        check_classification_targets(y)
        if reset:
            labels = y if self.classes is None else np.asarray(self.classes)
            self.classes_inferred_ = np.unique(labels)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown[:5].tolist()} that are not in "
                             f"classes_ {self.classes_[:10].tolist()}")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``."""
        proba = super().predict_proba(self._check_X(X, reset=False)).astype(np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # exact in float64

    def predict(self, X):
        """The most probable label of each row, from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def _module_dims(self):
        return {"n_outputs": len(self.classes_)}


class TabularMLPClassifier(_ClassifierMixin, NeuralNetClassifier):
    """Multi-layer perceptron classifier for tabular data, a skorch net.

    Parameters
    ----------
    module : torch module class, default=MLPModule
        Built with ``n_features``, ``n_outputs`` and the architecture parameters below.
    depth : int, default=2
        Number of hidden layers.
    width : int, default=128
        Units in each hidden layer.
    dropout : float or sequence of floats, default=0.0
        Dropout probability after each hidden layer: one for all, or one per hidden layer.
    input_dropout : float or None, default=None
        Dropout probability on the input features (a Dropout layer before the first linear
        layer; None: no such layer, so the layer indices stay those of ``depth`` blocks).
    activation : str, default="relu"
        One of relu, tanh, gelu, elu, selu, leaky_relu, sigmoid.
    l2, l1 : float or sequence of floats, default=0.0
        Penalties added to the training loss: l2_k * ||W_k||^2 and l1_k * ||W_k||_1 (sums
        over the entries) for the weight matrix W_k of each ``nn.Linear`` layer, in the
        module's order, the output layer included; biases are not penalised. A float applies
        to every linear layer; a sequence gives one coefficient per layer. They enter the
        training objective explicitly (unlike ``optimizer__weight_decay``), so methods that
        differentiate through it can tune them.
    lr : float, default=1e-3
        Learning rate.
    batch_size : int, default=64
        Mini-batch size (``-1``: the whole training set).
    max_epochs : int, default=20
        Training epochs.
    optimizer : torch optimizer class, default=torch.optim.Adam
        Further optimizer arguments as ``optimizer__<name>`` (e.g.
        ``optimizer__weight_decay``).
    criterion : torch loss class, default=torch.nn.CrossEntropyLoss
        Applied to the logits.
    train_split : callable or None, default=None
        skorch's internal validation split; ``None`` trains on all data (the search
        estimators do their own validation).
    random_state : int, RandomState or None, default=None
        Seeds torch and numpy at the start of each fit (weights, dropout, shuffling).
    device : str, default="cpu"
        Torch device, e.g. ``"cuda"``.
    verbose : int, default=0
        skorch's epoch log.
    **kwargs
        Any other skorch ``NeuralNetClassifier`` parameter (``callbacks``,
        ``iterator_train__shuffle``, ``classes``, ``warm_start``, ...).

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in ``fit`` (any type).
    n_features_in_ : int
        Number of features seen in ``fit``.
    module_, history_ : skorch's fitted module and training history.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(max_epochs=20, random_state=0).fit(X, y)
    >>> net.score(X, y) > 0.9, net.predict(X[:3]).shape
    (True, (3,))
    """

    _module_params = ("depth", "width", "dropout", "activation", "input_dropout")

    def __init__(self, module=MLPModule, *, depth=2, width=128, dropout=0.0, activation="relu",
                 input_dropout=None, l2=0.0, l1=0.0, lr=1e-3, batch_size=64, max_epochs=20,
                 optimizer=torch.optim.Adam, criterion=nn.CrossEntropyLoss, train_split=None,
                 random_state=None,
                 device="cpu", verbose=0, iterator_train=ArrayBatchIterator,
                 iterator_valid=ArrayBatchIterator, iterator_train__shuffle=True, **kwargs):
        self._init_net(locals())

    def _module_dims(self):
        return {"n_features": self.n_features_in_, **super()._module_dims()}


class SmallCNNClassifier(_ClassifierMixin, NeuralNetClassifier):
    """Small convolutional classifier for small images, a skorch net.

    ``X`` is ``(n, H*W)``, ``(n, H, W)`` or ``(n, C, H, W)``; flat rows are read as square
    single-channel images when the feature count is a perfect square (sklearn's digits:
    64 -> 8x8), otherwise as 1 x n_features strips, unless ``image_shape`` says otherwise.

    Parameters
    ----------
    image_shape : tuple (C, H, W) or None, default=None
        Shape of one image; ``None`` infers it from ``X`` as described above.
    n_blocks : int, default=2
        Convolution blocks (conv -> activation -> 2x2 max-pool).
    n_filters : int, default=16
        Filters of the first block; doubled in each further block.
    kernel_size : int, default=3
        Convolution kernel size ("same" padding).
    width : int, default=64
        Units of the dense layer before the output layer.
    dropout : float, default=0.0
        Dropout probability before the output layer.
    activation : str, default="relu"
        As in :class:`TabularMLPClassifier`.
    l2, l1 : float or sequence of floats, default=0.0
        As in :class:`TabularMLPClassifier`, over the dense layers (the convolutions are not
        penalised).
    lr, batch_size, max_epochs, optimizer, criterion, train_split, random_state, device, \
verbose, **kwargs
        As in :class:`TabularMLPClassifier`.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skhpo import SmallCNNClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> images = X.reshape(-1, 1, 8, 8) / 16.0
    >>> net = SmallCNNClassifier(max_epochs=2, random_state=0).fit(images, y)
    >>> net.predict_proba(images[:3]).shape
    (3, 10)
    """

    _module_params = ("n_blocks", "n_filters", "kernel_size", "width", "dropout", "activation")
    _allow_nd = True

    def __init__(self, module=SmallCNNModule, *, image_shape=None, n_blocks=2, n_filters=16,
                 kernel_size=3, width=64, dropout=0.0, activation="relu", l2=0.0, l1=0.0,
                 lr=1e-3, batch_size=64, max_epochs=20, optimizer=torch.optim.Adam,
                 criterion=nn.CrossEntropyLoss, train_split=None, random_state=None,
                 device="cpu", verbose=0, iterator_train=ArrayBatchIterator,
                 iterator_valid=ArrayBatchIterator, iterator_train__shuffle=True, **kwargs):
        self._init_net(locals())

    def _set_input_shape(self, shape):
        self.image_shape_ = self._infer_image_shape(shape)

    def _infer_image_shape(self, shape):
        n_features = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if self.image_shape is not None:
            image = tuple(int(s) for s in self.image_shape)
            if len(image) != 3 or int(np.prod(image)) != n_features:
                raise ValueError(f"image_shape: got {self.image_shape!r}; it must be (C, H, W) "
                                 f"with C*H*W equal to the {n_features} values of each row")
            return image
        if len(shape) == 4:
            return tuple(shape[1:])
        if len(shape) == 3:
            return (1, shape[1], shape[2])
        side = int(round(np.sqrt(n_features)))
        return (1, side, side) if side * side == n_features else (1, 1, n_features)

    def _module_dims(self):
        return {"image_shape": self.image_shape_, **super()._module_dims()}


class TabularMLPRegressor(_SkhpoNetMixin, NeuralNetRegressor):
    """Multi-layer perceptron regressor for tabular data, a skorch net.

    Same parameters as :class:`TabularMLPClassifier`, with ``criterion=torch.nn.MSELoss``.
    ``y`` may be 1-D or 2-D (several outputs); ``predict`` returns the same shape.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from skhpo import TabularMLPRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> net = TabularMLPRegressor(max_epochs=5, random_state=0).fit(X, y)
    >>> net.predict(X[:2]).shape
    (2,)
    """

    _module_params = ("depth", "width", "dropout", "activation", "input_dropout")

    def __init__(self, module=MLPModule, *, depth=2, width=128, dropout=0.0, activation="relu",
                 input_dropout=None, l2=0.0, l1=0.0, lr=1e-3, batch_size=64, max_epochs=20,
                 optimizer=torch.optim.Adam, criterion=nn.MSELoss, train_split=None,
                 random_state=None, device="cpu",
                 verbose=0, iterator_train=ArrayBatchIterator, iterator_valid=ArrayBatchIterator,
                 iterator_train__shuffle=True, **kwargs):
        self._init_net(locals())

    def _check_y(self, y, reset):
        y = check_array(y, ensure_2d=False, dtype=np.float32, input_name="y")
        if reset:
            self._y_ndim = y.ndim
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        return y.reshape(len(y), -1)

    @property
    def predict_proba(self):
        raise AttributeError(f"{type(self).__name__} is a regressor and has no predict_proba")

    def predict(self, X):
        """Predictions of shape ``(n,)`` or ``(n, n_outputs)`` like the fitted ``y``."""
        X = self._check_X(X, reset=False)
        out = self.forward(X, training=False).cpu().numpy().astype(np.float64)
        return out.ravel() if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _module_dims(self):
        return {"n_features": self.n_features_in_, "n_outputs": self.n_outputs_}
