"""Figures from tidy run tables (pandas + matplotlib) in the papers' house style.

Per registry entry: a grid of panels, one column per setting (panel) and one row per logged metric
(``y``), one curve per method/variant; each curve is the median over seeds with a quantile band.
The x axis is any column of the table: step, epoch, train wall time, oracle calls or samples.
``plot_panels`` is a pure function of the table; ``save_figure`` writes it as PNG and PDF.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

#: Default x-axis labels of the known x columns.
X_LABELS: dict[str, str] = {
    "step": "step",
    "epoch": "epoch",
    "wall_s": "train time (s)",
    "oracle_calls": "oracle calls",
    "samples": "samples",
}

#: Default (mathtext) labels of the metrics the tasks log; other names pass through unchanged.
METRIC_LABELS: dict[str, str] = {
    "true_hypergrad_norm": r"$\|\nabla\Phi(x)\|$",
    "hypergrad_norm": r"$\|\hat\nabla\Phi(x)\|$",
    "upper_loss": r"$f(x, y)$",
    "lower_loss": r"$g(x, y)$",
    "lower_error": r"$\|y - y^*(x)\|$",
    "grad_x_f_norm": r"$\|\nabla_x f(x, y)\|$",
    "test_upper_loss": r"test $f(x, y)$",
    "train_loss": "train loss",
    "val_loss": "validation loss",
    "test_loss": "test loss",
    "train_acc": "train accuracy",
    "val_acc": "validation accuracy",
    "test_acc": "test accuracy",
}

DEFAULT_BAND = (0.2, 0.8)


def _as_list(value: Any, n: int, name: str) -> list[Any]:
    """A scalar broadcast to ``n`` entries, or a list that must have ``n`` entries."""
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(f"plot.{name} has {len(value)} entries, expected {n} (one per x or y)")
        return list(value)
    return [value] * n


def _text(label: str) -> str:
    """``label`` as matplotlib text: ``$...$`` is mathtext; a lone ``$`` is kept literal."""
    label = str(label)
    return label.replace("$", r"\$") if label.count("$") % 2 else label


def metric_label(name: str) -> str:
    """The default axis label of a metric or x column (mathtext for the known metrics)."""
    return METRIC_LABELS.get(name, X_LABELS.get(name, name))


@dataclass(frozen=True)
class PowerLaw:
    """y ≈ c·x^slope fitted on log–log axes over [x_lo, x_hi] at ``n`` points; ``r2`` is the
    coefficient of determination of log y (NaN where it is undefined)."""

    slope: float
    log_c: float
    r2: float
    x_lo: float
    x_hi: float
    n: int

    def __call__(self, x: Any) -> Any:
        return np.exp(self.log_c) * np.asarray(x, dtype=float) ** self.slope


def power_law_fit(
    x: Sequence[float],
    y: Sequence[float],
    x_range: Sequence[float | None] | None = None,
    points: int | None = None,
) -> PowerLaw:
    """Least-squares line through (log x, log y): the power law y ≈ c·x^slope (UniBiO Fig. 5:
    the running average of ‖∇Φ(x_t)‖ over t < T against T, linear regression on log–log axes).

    Only pairs with x, y > 0 and x within ``x_range`` = [lo, hi] (None: unbounded) are fitted;
    with ``points`` = n, only the pairs whose x is nearest to n log-spaced values over that range
    (each decade weighs the same, as several runs of log-spaced lengths T would; a dense linear
    grid of T would let the last decade decide the slope). NaN slope with fewer than two x."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    lo, hi = x_range if x_range is not None else (None, None)
    keep = (xs > 0) & (ys > 0) & np.isfinite(xs) & np.isfinite(ys)
    if lo is not None:
        keep &= xs >= lo
    if hi is not None:
        keep &= xs <= hi
    order = np.argsort(xs[keep], kind="stable")
    xs, ys = xs[keep][order], ys[keep][order]
    lx, ly = np.log(xs), np.log(ys)
    if points is not None and len(lx) > 0:
        grid = np.linspace(lx[0], lx[-1], int(points))
        nearest = np.unique(np.abs(lx[None, :] - grid[:, None]).argmin(axis=1))
        xs, lx, ly = xs[nearest], lx[nearest], ly[nearest]
    if len(np.unique(lx)) < 2:
        return PowerLaw(math.nan, math.nan, math.nan, math.nan, math.nan, len(lx))
    slope, log_c = np.polyfit(lx, ly, 1)
    residual = float(((ly - (slope * lx + log_c)) ** 2).sum())
    total = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else math.nan
    return PowerLaw(float(slope), float(log_c), r2, float(xs[0]), float(xs[-1]), len(lx))


@dataclass(frozen=True)
class AffineFit:
    """y ≈ l0 + l1·x (the (L0, L1)-smoothness bound L(x) ≤ L0 + L1‖∇Φ(x)‖ when y is a local
    smoothness and x a gradient norm) fitted by least squares with l0, l1 ≥ 0 to ``n`` points
    with x in [x_lo, x_hi]. ``residual``: the root-mean-square of y − (l0 + l1·x), in y's
    units; ``const_residual``: the same for the best constant (the standard deviation of y);
    ``r2`` = 1 − (residual / const_residual)², what the x-dependence explains (NaN where y is
    constant)."""

    l0: float
    l1: float
    residual: float
    const_residual: float
    r2: float
    x_lo: float
    x_hi: float
    n: int

    def __call__(self, x: Any) -> Any:
        return self.l0 + self.l1 * np.asarray(x, dtype=float)


def affine_fit(x: Sequence[float], y: Sequence[float]) -> AffineFit:
    """Least-squares y ≈ l0 + l1·x over the finite pairs, constrained to l0, l1 ≥ 0 (a local
    smoothness bound has no negative part): the unconstrained line when both are ≥ 0, else the
    better of the line through the origin (l0 = 0) and the constant (l1 = 0), the two faces of
    the constraint (for two parameters the constrained optimum lies on one of them). NaN with
    fewer than two distinct x."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if len(np.unique(xs)) < 2:
        nan = math.nan
        return AffineFit(nan, nan, nan, nan, nan, nan, nan, len(xs))

    def rms(l0: float, l1: float) -> float:
        return float(np.sqrt(np.mean((ys - l0 - l1 * xs) ** 2)))

    l1, l0 = np.polyfit(xs, ys, 1)
    if l0 < 0 or l1 < 0:
        faces = [(0.0, max(float(xs @ ys / (xs @ xs)), 0.0)), (max(float(ys.mean()), 0.0), 0.0)]
        l0, l1 = min(faces, key=lambda f: rms(*f))
    residual, const = rms(float(l0), float(l1)), float(ys.std())
    r2 = 1.0 - (residual / const) ** 2 if const > 0 else math.nan
    return AffineFit(float(l0), float(l1), residual, const, r2, float(xs.min()), float(xs.max()),
                     len(xs))  # fmt: skip


def smooth_runs(
    df: pd.DataFrame, x: str, y: str, window: int, by: Sequence[str] = ("panel", "curve", "seed")
) -> pd.DataFrame:
    """Trailing running mean of ``y`` over ``window`` evaluations (``min_periods=1``), per run.

    Each run (one ``by`` group) is ordered by ``x`` first; rows whose ``y`` is NaN should already be
    dropped, so the window counts evaluations, not x units.
    """
    if window < 1:
        raise ValueError(f"smooth window must be >= 1, got {window}")
    keys = [k for k in by if k in df.columns]
    out = df.sort_values([*keys, x], kind="stable").copy()
    if keys:
        rolled = out.groupby(keys, sort=False)[y].rolling(window, min_periods=1).mean()
        out[y] = rolled.reset_index(level=list(range(len(keys))), drop=True)
    else:
        out[y] = out[y].rolling(window, min_periods=1).mean()
    return out


def seed_bands(
    df: pd.DataFrame,
    x: str,
    y: str,
    by: Sequence[str],
    band: Sequence[float] = DEFAULT_BAND,
    align: str | None = None,
) -> pd.DataFrame:
    """Median and the [lo, hi] quantiles of ``y`` over seeds, per ``by`` group and ``x``.

    With ``align`` (e.g. ``"step"``) the seeds are matched on that column instead of ``x`` and the
    x position is the median of ``x`` over seeds: for x columns that differ from seed to seed at
    the same evaluation (train wall time, sometimes oracle calls).
    """
    key = align if align and align != x else x
    grouped = df.groupby([*by, key], sort=False)
    out = grouped[y].median().rename("median").to_frame()
    out["lo"] = grouped[y].quantile(band[0])
    out["hi"] = grouped[y].quantile(band[1])
    out["n_seeds"] = grouped[y].count()
    if key != x:
        out[x] = grouped[x].median()
    return out.reset_index().sort_values([*by, x], kind="stable")


def plot_panels(
    df: pd.DataFrame,
    spec: dict[str, Any],
    panel_order: Sequence[str],
    curve_order: Sequence[str],
    title: str = "",
) -> plt.Figure:
    """The figure of a registry entry: rows = y metrics, columns = panels, one curve per variant.

    ``spec`` is the entry's ``plot:`` mapping:

    - ``x``: the x column (step | epoch | wall_s | oracle_calls | samples | any column), or a list
      of them: the panels repeat once per x (the papers' "vs epoch" and "vs time" side by side);
      ``xlabel`` (a string or a list aligned with ``x``) defaults to a readable name.
    - ``y``: a metric column or a list of them, one row of panels each; each row has its own y
      scale, shared across its panels. ``ylabel`` is a string or a list aligned with ``y``;
      the default is a mathtext label for the known metrics (``METRIC_LABELS``), else the name.
    - ``logy``: bool or a list aligned with ``y`` (default False); ``logx``: bool (default False).
    - ``band``: [lo, hi] quantiles over seeds (default [0.2, 0.8]) drawn around the median line,
      only where a curve has more than one seed.
    - ``smooth``: optional int K: a trailing running mean over K evaluations (``min_periods=1``)
      applied to each run, i.e. per (panel, curve, seed) along x, before the statistics over seeds;
      the y label gets a second line "(running mean, w=K)". Absent or 0/1: the raw values.
    - ``fit``: a power law fitted to each curve's median (:func:`power_law_fit`), drawn dashed over
      its fitted range, with its slope and R² listed in the panel's corner: ``true`` for every
      (x, y), or ``{"fits": {y: x}, "range": [lo, hi], "points": n}`` for the listed pairs (what
      ``bilevel-figure`` passes for ``fit: true``: the summary's ``slope`` settings, and
      ``"affine": {y: x}``, the summary's ``affine`` fits).
    - ``kind``: ``line`` (the default: median and band over seeds) or ``scatter``: every row
      is a point (x, y), one colour per curve, all seeds together; a fit listed in
      ``fit["affine"]`` for that (y, x) is drawn dashed over the x range of the curve's points,
      with L0, L1 and R² in the corner (:func:`affine_fit` of the pooled points, as the summary).

    Rows whose y is NaN (steps without an evaluation) are dropped per metric. When the table has a
    ``step`` column and x is another column, the seeds are matched by step and each point sits at
    the median x over seeds. Labels containing ``$...$`` render as mathtext. Each curve keeps its
    colour in every panel; a single legend sits below the axes, off the data.
    """
    xs = list(spec["x"]) if isinstance(spec["x"], list | tuple) else [spec["x"]]
    ys = list(spec["y"]) if isinstance(spec["y"], list | tuple) else [spec["y"]]
    columns = [(x, panel) for x in xs for panel in panel_order]
    n_rows, n_cols = len(ys), len(columns)
    if not panel_order:
        raise ValueError("plot_panels needs at least one panel")
    missing = [c for c in [*xs, *ys] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the table ({', '.join(df.columns)})")
    ylabels = _as_list(spec.get("ylabel"), n_rows, "ylabel")
    xlabels = dict(zip(xs, _as_list(spec.get("xlabel"), len(xs), "xlabel"), strict=True))
    logys = _as_list(spec.get("logy", False), n_rows, "logy")
    band = tuple(spec.get("band") or DEFAULT_BAND)
    window = int(spec.get("smooth") or 0)
    fit = spec.get("fit") or {}
    scatter = spec.get("kind", "line") == "scatter"
    if spec.get("kind", "line") not in ("line", "scatter"):
        raise ValueError(f"plot.kind={spec['kind']!r}: not one of line, scatter")
    by = ["panel", "curve"]

    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(3.3 * n_cols + 0.6, 2.6 * n_rows + 1.0),
        sharex="col",
        sharey="row",
        squeeze=False,
        layout="constrained",
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {c: colors[i % len(colors)] for i, c in enumerate(curve_order)}
    drawn: set[str] = set()

    for r, y in enumerate(ys):
        data = df[df[y].notna()]
        stats_of = {}
        for x in xs if not scatter else []:
            align = "step" if "step" in df.columns and x != "step" else None
            smoothed = smooth_runs(data, align or x, y, window) if window > 1 else data
            stats_of[x] = seed_bands(smoothed, x, y, by, band, align=align)
        for c, (x, panel) in enumerate(columns):
            ax = axes[r][c]
            if scatter:
                points = data[(data.panel == panel) & data[x].notna()]
                affine = fit is not True and fit.get("affine", {}).get(y) == x
                drawn |= _draw_scatter(ax, points, x, y, curve_order, color_of, affine)
            else:
                drawn |= _draw_lines(ax, stats_of[x], panel, x, curve_order, color_of)
                if fit is True or fit.get("fits", {}).get(y) == x:
                    stats = stats_of[x]
                    _draw_fits(ax, stats[stats.panel == panel], x, curve_order, color_of, fit)
            if r == 0:
                ax.set_title(_text(panel), fontsize=10)
            if r == n_rows - 1:
                ax.set_xlabel(_text(xlabels[x] or metric_label(x)))
            if logys[r]:
                ax.set_yscale("log")
            if spec.get("logx"):
                ax.set_xscale("log")
            ax.grid(True, which="major", alpha=0.3, lw=0.5)
            ax.tick_params(labelsize=8)
        ylabel = _text(ylabels[r] or metric_label(y))
        if window > 1:
            ylabel += f"\n(running mean, w={window})"
        axes[r][0].set_ylabel(ylabel)

    handles = [
        Line2D([], [], color=color_of[c], lw=1.4, label=_text(c)) for c in curve_order if c in drawn
    ]
    if handles:
        # as many columns as fit the figure's width (9-pt labels: ~0.075 in a character)
        per_entry = 0.45 + 0.075 * max(len(h.get_label()) for h in handles)
        fits = max(1, int(fig.get_size_inches()[0] / per_entry))
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 6, fits),
            frameon=False,
            fontsize=9,
        )
    if title:
        width = max(30, int(fig.get_size_inches()[0] * 11))  # 11-pt: ~11 characters an inch
        fig.suptitle(textwrap.fill(_text(title), width), fontsize=11)
    return fig


def _draw_lines(
    ax: plt.Axes,
    stats: pd.DataFrame,
    panel: str,
    x: str,
    curve_order: Sequence[str],
    color_of: dict[str, str],
) -> set[str]:
    """Each curve's median over seeds, with its band where it has more than one seed."""
    drawn = set()
    for curve in curve_order:
        s = stats[(stats.panel == panel) & (stats.curve == curve)]
        if s.empty:
            continue
        color = color_of[curve]
        ax.plot(s[x], s["median"], color=color, lw=1.4, label=_text(curve))
        if (s["n_seeds"] > 1).any():
            ax.fill_between(s[x], s["lo"], s["hi"], color=color, alpha=0.18, lw=0)
        drawn.add(curve)
    return drawn


def _draw_fits(
    ax: plt.Axes,
    stats: pd.DataFrame,
    x: str,
    curve_order: Sequence[str],
    color_of: dict[str, str],
    fit: dict[str, Any] | bool,
) -> None:
    """Each curve's power law (fitted to its median) dashed, and "curve: slope s (R² r)" per
    curve in the panel's lower left corner, in the curve's colour."""
    x_range = None if fit is True else fit.get("range")
    points = None if fit is True else fit.get("points")
    lines = []
    for curve in curve_order:
        s = stats[stats.curve == curve]
        if s.empty:
            continue
        law = power_law_fit(s[x], s["median"], x_range, points)
        if math.isnan(law.slope):
            continue
        grid = np.geomspace(law.x_lo, law.x_hi, 50)
        ax.plot(grid, law(grid), color=color_of[curve], lw=1.0, ls="--")
        lines.append((f"{_text(curve)}: slope {law.slope:.2f} ($R^2$ {law.r2:.2f})", curve))
    for i, (text, curve) in enumerate(reversed(lines)):
        ax.text(0.03, 0.04 + 0.075 * i, text, transform=ax.transAxes, fontsize=7,
                color=color_of[curve])  # fmt: skip


def _draw_scatter(
    ax: plt.Axes,
    points: pd.DataFrame,
    x: str,
    y: str,
    curve_order: Sequence[str],
    color_of: dict[str, str],
    affine: bool,
) -> set[str]:
    """Each curve's rows as points; with ``affine``, its :func:`affine_fit` dashed over its x
    range and "curve: L0 = a, L1 = b (R² r)" in the upper left corner. Returns the curves drawn."""
    drawn, lines = set(), []
    for curve in curve_order:
        pts = points[points.curve == curve]
        if pts.empty:
            continue
        color = color_of[curve]
        ax.scatter(pts[x], pts[y], s=12, color=color, alpha=0.6, lw=0)
        drawn.add(curve)
        line = affine_fit(pts[x], pts[y]) if affine else None
        if line is None or math.isnan(line.l1):
            continue
        grid = np.linspace(line.x_lo, line.x_hi, 50)
        ax.plot(grid, line(grid), color=color, lw=1.0, ls="--")
        text = f"{_text(curve)}: $L_0$ {line.l0:.3g}, $L_1$ {line.l1:.3g} ($R^2$ {line.r2:.2f})"
        lines.append((text, curve))
    for i, (text, curve) in enumerate(lines):
        ax.text(0.03, 0.96 - 0.075 * i, text, transform=ax.transAxes, fontsize=7, va="top",
                color=color_of[curve])  # fmt: skip
    return drawn


def save_figure(fig: plt.Figure, path_png: Path) -> list[Path]:
    """Write ``fig`` as PNG (150 dpi) and as PDF beside it (same stem); return both paths."""
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    path_pdf = path_png.with_suffix(".pdf")
    fig.savefig(path_png, dpi=150)
    fig.savefig(path_pdf, metadata={"CreationDate": None})  # same figure, same bytes
    return [path_png, path_pdf]
