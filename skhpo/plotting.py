"""Matplotlib views of fitted skhpo searches (needs matplotlib: extra ``test``, ``bench`` or
``docs``)."""

import numpy as np

from .search import CuttingPlaneTuner, PopulationMutationSearch

__all__ = ["plot_schedules", "plot_walk"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('skhpo.plotting needs matplotlib: pip install "skhpo[docs]"') from None
    return plt


def _panels(plt, axes, n, size):
    """``(figure, axes)``: the given Axes, or a new row of ``n`` panels of ``size`` each."""
    if axes is None:
        fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False)
        return fig, axes[0]
    axes = np.atleast_1d(axes)
    return axes[0].figure, axes


def plot_walk(search, axes=None):
    """Z against each tuned hyper-parameter with the trust-region walk drawn on it (the
    picture of autoHyper's Figure 3) for a fitted :class:`~skhpo.AutoHyperSearchCV`.

    Every trial is a dot (x: its value of the hyper-parameter, log scale; y: its Z; a cross
    if it diverged); the walk's centres are joined in order, and the final point is a star.
    Returns the matplotlib ``Figure``. ``axes``: one Axes per tuned hyper-parameter, or None.
    """
    if not hasattr(search, "steps_"):
        raise ValueError("plot_walk needs a fitted AutoHyperSearchCV (no steps_ attribute)")
    plt = _pyplot()
    names = list(search.best_params_)
    fig, axes = _panels(plt, axes, len(names), (4.5, 3.5))
    params, z = search.history_["params"], np.array(search.history_["z"], float)
    diverged = np.array([s == "diverged" for s in search.history_["status"]])
    by_value = {tuple(p.values()): zi for p, zi in zip(params, z)}
    centres = [tuple(pt) for pt in search.steps_["point"]]
    for ax, name in zip(axes, names):
        x = np.array([p[name] for p in params], float)
        ax.scatter(x[~diverged], z[~diverged], s=18, color="tab:blue", alpha=0.6,
                   label="trials")
        if diverged.any():
            ax.scatter(x[diverged], z[diverged], marker="x", color="tab:red", label="diverged")
        i = names.index(name)
        walk_x = [c[i] for c in centres]
        walk_z = [by_value.get(c, np.nan) for c in centres]
        ax.plot(walk_x, walk_z, "-o", color="black", markersize=3, linewidth=1, label="walk")
        best = search.best_params_[name]
        ax.scatter([best], [by_value.get(tuple(search.best_params_.values()), np.nan)],
                   marker="*", s=160, color="tab:orange", zorder=3, label="chosen")
        ax.axvline(best, color="tab:orange", linewidth=0.8, linestyle="--")
        if np.all(x > 0):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("Z (fraction of layers with no structure)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_schedules(search, axes=None):
    """Each tuned hyper-parameter over training, one panel per hyper-parameter.

    For a fitted :class:`~skhpo.PopulationMutationSearch`: every student's value after each
    step (thin lines; a dot where it copied a top student and was mutated), the best student
    in bold. For a fitted :class:`~skhpo.CuttingPlaneTuner`: the value after every hyper step.
    Returns the matplotlib ``Figure``. ``axes``: one Axes per hyper-parameter, or None.
    """
    if not isinstance(search, (PopulationMutationSearch, CuttingPlaneTuner)):
        raise ValueError("plot_schedules draws PopulationMutationSearch and CuttingPlaneTuner "
                         f"schedules; got a {type(search).__name__}")
    history = getattr(search, "history_", None)
    if history is None or not hasattr(search, "best_params_"):
        raise ValueError("plot_schedules needs a fitted PopulationMutationSearch or "
                         "CuttingPlaneTuner")
    population = isinstance(search, PopulationMutationSearch)
    plt = _pyplot()
    names = list(search.best_params_)
    fig, axes = _panels(plt, axes, len(names), (4.2, 3.4))
    for ax, name in zip(axes, names):
        if population:
            step = np.array(history["step"])
            student = np.array(history["student"])
            values = np.array(history[name], float)
            copied = np.array(history["exploited_from"]) >= 0
            for k in np.unique(student):
                sel = student == k
                best = k == search.best_index_
                ax.plot(step[sel], values[sel], color="black" if best else "tab:blue",
                        linewidth=2 if best else 0.8, alpha=1 if best else 0.4,
                        label="best student" if best else None)
            ax.scatter(step[copied], values[copied], s=10, color="tab:red", zorder=3,
                       label="exploited (copied, then mutated)")
            ax.set_xlabel("step")
        else:
            values = np.array(search.hyper_history_.get(name, []), float)
            ax.plot(np.arange(1, len(values) + 1), values, color="tab:blue")
            ax.set_xlabel("hyper step")
        if np.all(values > 0) and values.max() / values.min() > 100:
            ax.set_yscale("log")
        ax.set_title(name, fontsize="small")
        ax.grid(alpha=0.3)
    if population:
        axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig
