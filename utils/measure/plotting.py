"""One look for every plot in the course: labelled axes with units, a title that names the device, and a
modest resolution so committed notebooks stay small."""
from __future__ import annotations

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
    try:
        import IPython
        if IPython.get_ipython() is None:
            matplotlib.use("Agg")          # scripts and tests: no display needed
    except ImportError:
        matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def use_course_style() -> None:
    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (7.5, 4.2),
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "font.size": 10, "axes.titlesize": 11,
        "legend.fontsize": 9, "legend.frameon": False,
    })


def new_axes(title: str, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False,
             ncols: int = 1, figsize=None):
    """A figure with labelled axes. Returns (fig, ax) or (fig, [axes]) for ncols > 1."""
    use_course_style()
    fig, axes = plt.subplots(1, ncols, figsize=figsize or (7.5 if ncols == 1 else 5 * ncols, 4.2))
    for ax in (axes if ncols > 1 else [axes]):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
    fig.suptitle(title) if ncols > 1 else axes.set_title(title)
    return fig, axes


def roofline(peak_flops: float, bandwidth: float, points: list[dict], title: str, ax=None):
    """Log-log roofline from *measured* ceilings. points: [{label, intensity, flops, marker?}], FLOP/s units.

    Draws the two roofs, the ridge point, and each measured point with its % of the attainable roof.
    """
    import numpy as np
    if ax is None:
        fig, ax = new_axes(title, "arithmetic intensity (FLOP / byte)", "achieved (TFLOP/s)", logx=True, logy=True)
    else:
        fig = ax.figure
    ridge = peak_flops / bandwidth
    lo = min([p["intensity"] for p in points] + [ridge]) / 4
    hi = max([p["intensity"] for p in points] + [ridge]) * 4
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(peak_flops, bandwidth * x) / 1e12, color="k", lw=2,
            label=f"roof: {bandwidth / 1e9:,.0f} GB/s, {peak_flops / 1e12:,.1f} TFLOP/s (measured)")
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.annotate(f"ridge {ridge:,.0f} FLOP/B", (ridge, peak_flops / 1e12), textcoords="offset points",
                xytext=(5, -14), fontsize=9, color="gray")
    for i, p in enumerate(points):
        roof = min(peak_flops, bandwidth * p["intensity"])
        ax.scatter(p["intensity"], p["flops"] / 1e12, s=45, marker=p.get("marker", "o"),
                   color=PALETTE[(i + 1) % len(PALETTE)], zorder=3,
                   label=f"{p['label']}: {p['flops'] / roof:.0%} of roof")
    ax.legend(loc="lower right")
    return fig, ax


def bar_labels(ax, bars, fmt: str = "{:.1f}") -> None:
    for b in bars:
        ax.annotate(fmt.format(b.get_height()), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
