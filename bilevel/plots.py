"""Figures from tidy run tables (pandas + matplotlib): median over seeds with a quantile band,
one panel per setting, one curve per method/variant (the papers' house style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def seed_bands(
    df: pd.DataFrame, x: str, y: str, by: Sequence[str], band: Sequence[float] = (0.2, 0.8)
) -> pd.DataFrame:
    """Median and the [lo, hi] quantiles of ``y`` over seeds, per ``by`` group and ``x``."""
    grouped = df.groupby([*by, x], sort=False)[y]
    out = grouped.median().rename("median").to_frame()
    out["lo"] = grouped.quantile(band[0])
    out["hi"] = grouped.quantile(band[1])
    out["n_seeds"] = grouped.count()
    return out.reset_index()


def plot_panels(
    df: pd.DataFrame,
    spec: dict[str, Any],
    panel_order: Sequence[str],
    curve_order: Sequence[str],
    title: str = "",
) -> plt.Figure:
    """One axis per panel, one line (median) and band per curve; shared y scale."""
    x, y = spec["x"], spec["y"]
    stats = seed_bands(df, x, y, ["panel", "curve"], spec.get("band", (0.2, 0.8)))
    n = len(panel_order)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes[0], panel_order, strict=True):
        for i, curve in enumerate(curve_order):
            s = stats[(stats.panel == panel) & (stats.curve == curve)]
            if s.empty:
                continue
            color = colors[i % len(colors)]
            ax.plot(s[x], s["median"], color=color, lw=1.3, label=curve)
            if (s["n_seeds"] > 1).any():
                ax.fill_between(s[x], s["lo"], s["hi"], color=color, alpha=0.2, lw=0)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(spec.get("xlabel", x))
        if spec.get("logy"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3, lw=0.5)
    axes[0][0].set_ylabel(spec.get("ylabel", y))
    axes[0][-1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
