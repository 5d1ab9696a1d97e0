"""The benchmark's picture: test score against wall time, one panel per task."""

import numpy as np

__all__ = ["plot_results"]


def plot_results(rows, path):
    """Save a PNG of ``rows`` (``run_benchmark``'s result rows) to ``path``: every run is a
    small dot, each method's median (wall time, test score) a large marker; wall time on a
    log scale when it spans more than a decade. Needs matplotlib (extra ``test`` or ``bench``)."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError('the plot needs matplotlib: pip install "skhpo[bench]"') from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m in methods:
            sel = [r for r in rows if r["task"] == task and r["method"] == m]
            if not sel:
                continue
            wall = np.array([r["wall_time"] for r in sel])
            score = np.array([r["test_score"] for r in sel])
            ax.scatter(wall, score, s=12, alpha=0.4, color=colors[m])
            ax.scatter(np.median(wall), np.median(score), s=90, marker="D",
                       color=colors[m], edgecolor="black", label=m)
        walls = [r["wall_time"] for r in rows if r["task"] == task]
        if max(walls) > 10 * min(walls):  # log scale only where it spans a decade
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(task)
        ax.set_xlabel("wall time (s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test score")
    axes[0][-1].legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
