"""autoHyper's response surface: how much low-rank structure the layers' weights have gained.

For each weight matrix Y (a hidden ``nn.Linear`` weight, or a convolution kernel unfolded along
its input channels, "mode 3", and along its output channels, "mode 4"), empirical variational
Bayesian matrix factorisation (EVBMF; Nakajima, Sugiyama, Babacan and Tomioka, JMLR 2013, the
global analytic solution) estimates the noise variance and the rank K of the signal part. A
layer "has learned nothing" when K = 0. Freshly initialised layers are pure noise, so K = 0.

* Z_t = the fraction of (layer, unfolding) pairs with K = 0 at the end of epoch t;
* Z = the mean of Z_t over the epochs of a trial: 1 means nothing learned, 0 means every layer
  has structure.

Our choices (docs/autohyper.md): a matrix taller than wide is transposed (EVBMF is
symmetric in its roles only that way); the noise variance is searched on the scale-free problem
(Y divided by its RMS), so the rank does not depend on the weights' scale; a hidden linear layer
counts once (its two "unfoldings" are W and W^T, with the same EVBMF answer).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from skorch.callbacks import Callback
from torch import nn

__all__ = ["EVBMFResult", "evbmf", "tau_bar", "unfold", "layer_matrices", "knowledge_gain",
           "z_of_epoch", "StableRankRecorder"]

_TAU_COEF = 2.5129  # tau_bar ~ 2.5129 sqrt(alpha), the reference implementation's approximation


@dataclass
class EVBMFResult:
    """``rank`` K, noise variance ``sigma2``, the threshold on singular values and the shrunk
    singular values ``d`` (length K) of one matrix."""

    rank: int
    sigma2: float
    threshold: float
    d: np.ndarray


def tau_bar(alpha, exact=False):
    """The constant tau_bar of EVBMF for the aspect ratio ``alpha = L / M <= 1``: the positive
    root of phi(t) + phi(t / alpha) = 0 with phi(z) = ln(1 + z) / z - 1/2 (``exact=True``), or
    the reference's approximation 2.5129 sqrt(alpha) (default)."""
    if not exact:
        return _TAU_COEF * math.sqrt(alpha)

    def phi(z):
        return math.log1p(z) / z - 0.5

    return brentq(lambda t: phi(t) + phi(t / alpha), 1e-6, 1e3)


def evbmf(Y, exact_tau=False):
    """EVBMF of a fully observed matrix ``Y`` (any shape; transposed if taller than wide).

    Raises ``FloatingPointError`` if ``Y`` has a non-finite entry.
    """
    Y = torch.as_tensor(Y).detach().to("cpu", torch.float64)
    if Y.ndim != 2:
        raise ValueError(f"EVBMF needs a matrix, got shape {tuple(Y.shape)}")
    if not torch.isfinite(Y).all():
        raise FloatingPointError("the matrix has non-finite entries")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    gamma = torch.linalg.svdvals(Y).numpy()  # host: Y was moved to the CPU above
    scale = float(gamma @ gamma) / (L * M)  # sigma_bar^2 = ||Y||_F^2 / (L M)
    if scale == 0.0:
        return EVBMFResult(0, 0.0, 0.0, np.zeros(0))
    g = gamma / math.sqrt(scale)  # the scale-free problem: sigma_bar^2 = 1
    alpha = L / M
    tau = tau_bar(alpha, exact_tau)
    x_bar = (1 + tau) * (1 + alpha / tau)
    e_bar = min(math.ceil(L / (1 + alpha)) - 1, L)
    lower = max(g[e_bar] ** 2 / (M * x_bar), float(np.mean(g[e_bar:] ** 2)) / M)
    upper = 1.0

    def free_energy(sigma2):
        x = g ** 2 / (M * sigma2)
        psi = x - np.log(x)
        big = x > x_bar
        if big.any():
            xb = x[big]
            t = 0.5 * (xb - (1 + alpha) + np.sqrt((xb - (1 + alpha)) ** 2 - 4 * alpha))
            psi[big] += np.log(t + 1) + alpha * np.log(t / alpha + 1) - t
        return float(psi.sum())

    if lower < upper:
        sigma2 = float(minimize_scalar(free_energy, bounds=(lower, upper), method="bounded",
                                       options={"xatol": 1e-10}).x)
    else:
        sigma2 = upper
    threshold = math.sqrt(M * sigma2 * x_bar)
    keep = g > threshold
    gk = g[keep]
    a = 1 - (L + M) * sigma2 / gk ** 2
    d = gk / 2 * (a + np.sqrt(np.maximum(a ** 2 - 4 * L * M * sigma2 ** 2 / gk ** 4, 0.0)))
    root = math.sqrt(scale)
    return EVBMFResult(int(keep.sum()), sigma2 * scale, threshold * root, d * root)


def unfold(weight):
    """The matrices EVBMF reads from a weight: a conv kernel (C_out, C_in, kh, kw) gives its
    mode-3 (C_in x C_out kh kw) and mode-4 (C_out x C_in kh kw) unfoldings; a linear weight
    gives itself."""
    W = weight.detach()
    if W.ndim == 4:
        c_out, c_in = W.shape[:2]
        return [("mode3", W.transpose(0, 1).reshape(c_in, -1)), ("mode4", W.reshape(c_out, -1))]
    if W.ndim == 2:
        return [("linear", W)]
    raise ValueError(f"only conv kernels (4-D) and linear weights (2-D) unfold, got {W.ndim}-D")


def layer_matrices(module, include_linear="auto", exclude=()):
    """``[(layer name, unfolding name, matrix), ...]`` of the layers autoHyper reads.

    Convolution kernels (every ``nn.Conv2d``) count. ``include_linear``: ``"auto"`` adds the
    ``nn.Linear`` layers only when there is no convolution (an MLP); ``True`` always;
    ``False`` never. Layers named in ``exclude`` (the output layer, a single-channel stem)
    are skipped. An empty result is a ``ValueError``: there is nothing the metric can read.
    """
    all_convs = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    convs = [(n, m) for n, m in all_convs if n not in exclude]
    linears = [(n, m) for n, m in module.named_modules()
               if isinstance(m, nn.Linear) and n not in exclude]
    use_linear = include_linear is True or (include_linear == "auto" and not all_convs)
    layers = convs + (linears if use_linear else [])
    out = [(name, mode, Y) for name, layer in layers for mode, Y in unfold(layer.weight)]
    if not out:
        raise ValueError("the network has no layer the stable-rank metric can read (an "
                         "nn.Conv2d, or a hidden nn.Linear with include_linear=True/'auto')")
    return out


def knowledge_gain(result, n_channels):
    """The per-layer 'knowledge gain' G = (sum of d / d_1) / n_channels (0 when K = 0)."""
    if result.rank == 0:
        return 0.0
    return float(result.d.sum() / result.d[0]) / n_channels


def z_of_epoch(matrices, previous=None, exact_tau=False):
    """Z_t and the per-matrix records of one epoch.

    ``matrices`` is :func:`layer_matrices`' list; a matrix whose EVBMF fails (non-finite
    weights) reuses its rank from ``previous`` (the last epoch's records) or counts as empty,
    the reference's rule. Returns ``(Z_t, records)``, each record ``{layer, mode, rank, gain}``.
    """
    records = []
    for i, (name, mode, Y) in enumerate(matrices):
        try:
            res = evbmf(Y, exact_tau)
            rows = min(Y.shape) if mode == "linear" else Y.shape[0]
            rank, gain = res.rank, knowledge_gain(res, rows)
        except (FloatingPointError, np.linalg.LinAlgError, RuntimeError):
            rank, gain = (previous[i]["rank"], previous[i]["gain"]) if previous else (0, 0.0)
        records.append({"layer": name, "mode": mode, "rank": rank, "gain": gain})
    z = sum(r["rank"] == 0 for r in records) / len(records)
    return z, records


class StableRankRecorder(Callback):
    """Records Z_t and the per-matrix ranks at the end of every epoch of a skorch net.

    ``records`` holds one ``{"z": Z_t, "layers": [...]}`` per epoch; ``z`` is their mean Z.
    It only reads the module at the end of each epoch (``reads_epochs``), so the fused
    engine can train its net and call it with the weights of each epoch.
    """

    #: only reads ``net.module_`` in ``on_epoch_end`` (the fused engine honours it)
    reads_epochs = True

    def __init__(self, include_linear="auto", exclude=(), exact_tau=False):
        self.include_linear = include_linear
        self.exclude = exclude
        self.exact_tau = exact_tau

    def initialize(self):
        self.records = []
        return self

    def on_epoch_end(self, net, **kwargs):
        matrices = layer_matrices(net.module_, self.include_linear, self.exclude)
        previous = self.records[-1]["layers"] if self.records else None
        z, layers = z_of_epoch(matrices, previous, self.exact_tau)
        self.records.append({"z": z, "layers": layers})

    @property
    def z(self):
        return float(np.mean([r["z"] for r in self.records])) if self.records else 1.0
