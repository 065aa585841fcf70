"""bilevel.plots on small synthetic tables: grid shape, smoothing, bands, legend, labels, saving."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bilevel.plots import plot_panels, save_figure, smooth_runs

PANELS = ["a", "b"]
CURVES = [r"$\sigma$=0.1", "p = 2"]


def table(seeds=(0, 1, 2), steps=60, eval_every=1) -> pd.DataFrame:
    """An alternating (oscillating) metric per run, plus a smooth one, with per-seed wall time."""
    rows = []
    for panel in PANELS:
        for ci, curve in enumerate(CURVES):
            for seed in seeds:
                for step in range(steps + 1):
                    evaluated = step % eval_every == 0
                    rows.append(
                        {
                            "panel": panel,
                            "curve": curve,
                            "seed": seed,
                            "step": step,
                            "epoch": step / 10,
                            "wall_s": step * (0.01 + 0.001 * seed),
                            "oracle_calls": step * (3 + ci),
                            "samples": step * 8,
                            "status": "completed",
                            "true_hypergrad_norm": (1.0 + (step % 2) * 9.0 + seed) / (1 + step)
                            if evaluated
                            else np.nan,
                            "upper_loss": 1.0 / (1 + step) + 0.1 * seed,
                        }
                    )
    return pd.DataFrame(rows)


def median_line(fig, row=0, col=0, label=CURVES[0]):
    ax = fig.axes[row * len(PANELS) + col]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_single_y_string_is_one_row():
    fig = plot_panels(table(), {"x": "step", "y": "upper_loss"}, PANELS, CURVES, "t")
    assert len(fig.axes) == len(PANELS)
    assert fig.axes[0].get_ylabel() == r"$f(x, y)$"
    assert fig.axes[0].get_title() == "a" and fig._suptitle.get_text() == "t"


def test_two_y_metrics_give_two_rows_with_own_scales():
    spec = {"x": "step", "y": ["true_hypergrad_norm", "upper_loss"], "logy": [True, False]}
    fig = plot_panels(table(), spec, PANELS, CURVES)
    axes = fig.axes
    assert len(axes) == 2 * len(PANELS)
    top, bottom = axes[: len(PANELS)], axes[len(PANELS) :]
    assert all(ax.get_yscale() == "log" for ax in top)
    assert all(ax.get_yscale() == "linear" for ax in bottom)
    assert top[0].get_shared_y_axes().joined(top[0], top[1])
    assert not top[0].get_shared_y_axes().joined(top[0], bottom[0])
    assert top[0].get_ylabel() == r"$\|\nabla\Phi(x)\|$" and bottom[0].get_ylabel() == "$f(x, y)$"
    assert bottom[0].get_xlabel() == "step" and top[0].get_xlabel() == ""


def test_ylabel_list_and_mismatched_list_raises():
    spec = {"x": "step", "y": ["true_hypergrad_norm", "upper_loss"], "ylabel": ["A", "B"]}
    fig = plot_panels(table(), spec, PANELS, CURVES)
    assert [fig.axes[0].get_ylabel(), fig.axes[len(PANELS)].get_ylabel()] == ["A", "B"]
    with pytest.raises(ValueError, match="ylabel"):
        plot_panels(table(), {**spec, "ylabel": ["A"]}, PANELS, CURVES)


def test_smoothing_reduces_oscillation_and_raw_is_default():
    df = table()
    spec = {"x": "step", "y": "true_hypergrad_norm"}
    _, raw = median_line(plot_panels(df, spec, PANELS, CURVES))
    x, smooth = median_line(plot_panels(df, {**spec, "smooth": 8}, PANELS, CURVES))
    # raw: the exact medians over seeds, seed 1 being the median seed
    expected = (1.0 + (np.arange(61) % 2) * 9.0 + 1) / (1 + np.arange(61))
    np.testing.assert_allclose(raw, expected)
    tail = slice(20, None)
    assert np.std(np.diff(smooth[tail])) < 0.2 * np.std(np.diff(raw[tail]))
    np.testing.assert_array_equal(x, np.arange(61))


def test_smooth_runs_is_trailing_per_run():
    df = pd.DataFrame(
        {"panel": "a", "curve": "c", "seed": [0, 0, 0, 1, 1, 1], "step": [2, 0, 1] * 2}
        | {"y": [3.0, 1.0, 2.0, 30.0, 10.0, 20.0]}
    )
    out = smooth_runs(df, "step", "y", 2)
    assert list(out.y) == [1.0, 1.5, 2.5, 10.0, 15.0, 25.0]


def test_smoothing_is_stated_in_ylabel():
    fig = plot_panels(table(), {"x": "step", "y": "upper_loss", "smooth": 5}, PANELS, CURVES)
    assert fig.axes[0].get_ylabel().endswith("(running mean, w=5)")


def test_band_only_with_several_seeds():
    spec = {"x": "step", "y": "upper_loss", "band": [0.0, 1.0]}
    many = plot_panels(table(seeds=(0, 1, 2)), spec, PANELS, CURVES)
    one = plot_panels(table(seeds=(0,)), spec, PANELS, CURVES)
    assert len(many.axes[0].collections) == len(CURVES)
    assert len(one.axes[0].collections) == 0


def test_nan_rows_dropped_per_curve():
    df = table(eval_every=5)
    fig = plot_panels(df, {"x": "step", "y": "true_hypergrad_norm"}, PANELS, CURVES)
    x, y = median_line(fig)
    np.testing.assert_array_equal(x, np.arange(0, 61, 5))
    assert np.isfinite(y).all()


def test_legend_is_outside_every_axes_and_colours_consistent():
    spec = {"x": "step", "y": ["true_hypergrad_norm", "upper_loss"]}
    fig = plot_panels(table(), spec, PANELS, CURVES, "title")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == CURVES
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_tightbbox(renderer))
    colours = {
        ln.get_label(): ln.get_color() for ax in fig.axes for ln in ax.get_lines() if ln.get_label()
    }
    for ax in fig.axes:
        for ln in ax.get_lines():
            assert ln.get_color() == colours[ln.get_label()]
    assert len(set(colours.values())) == len(CURVES)


def test_math_labels_render():
    spec = {"x": "step", "y": "true_hypergrad_norm", "ylabel": r"$\|\nabla\Phi(x_t)\|$"}
    table_df = table().replace({"panel": {"a": r"$\sigma_g$ = 0.1"}})
    fig = plot_panels(table_df, spec, [r"$\sigma_g$ = 0.1", "b"], CURVES, r"cost $5")
    fig.canvas.draw()  # mathtext parses (a lone $ in the title is kept literal)
    assert "$" in fig.axes[0].get_ylabel() and "$" in fig.axes[0].get_title()
    assert fig.axes[0].get_lines() and fig._suptitle.get_text() == r"cost \$5"


@pytest.mark.parametrize(
    ("x", "xlabel"), [("wall_s", "train time (s)"), ("oracle_calls", "oracle calls")]
)
def test_other_x_columns(x, xlabel):
    fig = plot_panels(table(), {"x": x, "y": "upper_loss", "logx": True}, PANELS, CURVES)
    ax = fig.axes[0]
    assert ax.get_xlabel() == xlabel and ax.get_xscale() == "log"
    xs, ys = median_line(fig)
    assert len(xs) == 61  # seeds matched by step, not by their own wall times
    assert np.all(np.diff(xs) > 0)
    if x == "wall_s":  # the median wall time over seeds (seed 1)
        np.testing.assert_allclose(xs, np.arange(61) * 0.011)
    np.testing.assert_allclose(ys, 1.0 / (1 + np.arange(61)) + 0.1)


def test_missing_column_raises():
    with pytest.raises(KeyError, match="nope"):
        plot_panels(table(), {"x": "step", "y": "nope"}, PANELS, CURVES)


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig = plot_panels(table(), {"x": "epoch", "y": "upper_loss"}, PANELS, CURVES)
    paths = save_figure(fig, tmp_path / "sub" / "fig.png")
    assert [p.name for p in paths] == ["fig.png", "fig.pdf"]
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    assert fig.axes[0].get_xlabel() == "epoch"


def test_x_list_repeats_the_panels_per_x():
    """The papers' house style: the same panels against epoch and against train time."""
    spec = {"x": ["epoch", "wall_s"], "y": ["upper_loss", "true_hypergrad_norm"]}
    fig = plot_panels(table(), spec, PANELS, CURVES)
    axes = fig.axes
    assert len(axes) == 2 * 2 * len(PANELS)
    bottom = axes[2 * len(PANELS) :]
    assert [ax.get_xlabel() for ax in bottom] == ["epoch", "epoch", "train time (s)"] * 1 + [
        "train time (s)"
    ]
    assert [ax.get_title() for ax in axes[: 2 * len(PANELS)]] == PANELS * 2
    x_epoch = axes[0].get_lines()[0].get_xdata()
    x_time = axes[len(PANELS)].get_lines()[0].get_xdata()
    assert max(x_epoch) == pytest.approx(6.0) and max(x_time) < 1.0
    with pytest.raises(ValueError, match="expected 2"):
        plot_panels(table(), {**spec, "xlabel": ["only one"]}, PANELS, CURVES)
