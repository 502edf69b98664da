"""Sweep figures: ``summary.png`` (every job as a point, mean ± std and seed count per setting,
the paired difference vs λ = 0) and ``curves.png`` (val/acc1 per epoch, baseline vs DRLoc).
Drawn on matplotlib's Agg canvas, never pyplot, so this works headless and leaves a notebook's
backend alone."""

from __future__ import annotations

import io
import math

from vt_drloc.report.stats import mean_std
from vt_drloc.report.sweep import CURVE_METRIC, LAMBDA_KEY, Setting, Sweep, as_number, value_key


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _group_label(sweep: Sweep, setting: Setting) -> str:
    # a job that did not override a swept key ran the config's value (e.g. baselines copied into a cell)
    return ", ".join(f"{k}={setting.values[k] or '(not set)'}" for k in sweep.group_keys) or "all"


def _grouped(sweep: Sweep) -> list[tuple[str, list[Setting]]]:
    out: dict[str, list[Setting]] = {}
    for setting in sweep.settings():
        out.setdefault(_group_label(sweep, setting), []).append(setting)
    return list(out.items())


def _x_positions(sweep: Sweep) -> tuple[dict[str, float], bool]:
    """x position of each value of the x key; numeric keys keep their values."""
    key = sweep.x_key
    texts = sorted({j.overrides.get(key, "") for j in sweep.jobs} if key else {""}, key=value_key)
    numbers = [as_number(t) for t in texts]
    if key and all(n is not None for n in numbers):
        return {t: n for t, n in zip(texts, numbers)}, True
    return {t: float(i) for i, t in enumerate(texts)}, False


# The accuracy panels span at least this many percentage points, so a difference of a fraction of a
# point between two settings is drawn at its true scale rather than stretched across the axis.
MIN_SPAN_PCT = 10.0


def _setting_x(sweep: Sweep, setting: Setting, positions: dict[str, float]) -> float:
    return positions[setting.values.get(sweep.x_key, "")] if sweep.x_key else 0.0


def _widen(ax, min_span: float) -> None:
    low, high = ax.get_ylim()
    if high - low < min_span:
        middle = (low + high) / 2
        ax.set_ylim(middle - min_span / 2, middle + min_span / 2)


def plot_summary(sweep: Sweep):
    """``summary.png``: each job's val / test acc1 as a point at its x value (λ, or the first swept
    key), the mean ± std over its seeds as a marker labelled with the seed count, on an axis at
    least :data:`MIN_SPAN_PCT` points tall; when λ = 0 baselines exist, a last panel shows the
    per-seed paired differences (DRLoc run minus the baseline of the same seed) with a zero line."""
    metrics = [
        (k, t)
        for k, t in (("val_acc1", "val acc1"), ("test_acc1", "test acc1"))
        if any(j.metric(k) is not None for j in sweep.jobs)
    ]
    metrics = metrics or [("val_acc1", "val acc1")]
    settings = sweep.settings()
    paired = [(st, base) for st in settings if (base := sweep.baseline_of(st, settings)) is not None and base is not st]
    delta_key = metrics[-1][0]
    panels = len(metrics) + (1 if paired else 0)
    fig = new_figure(4.6 * panels, 4.0)
    axes = fig.subplots(1, panels, squeeze=False, sharex=True)[0]  # the Δ panel on the same λ scale
    positions, numeric = _x_positions(sweep)
    groups = _grouped(sweep)
    spread = (max(positions.values()) - min(positions.values())) if len(positions) > 1 else 1.0
    jitter = spread * 0.04 if numeric else 0.15
    for ax, (key, title) in zip(axes, metrics):
        for index, (label, group) in enumerate(groups):
            shift = (index - (len(groups) - 1) / 2) * jitter * 0.6
            for i, setting in enumerate(group):
                values = [100 * v for v in (j.metric(key) for j in setting.ok_jobs) if v is not None]
                _draw_spread(
                    ax,
                    _setting_x(sweep, setting, positions) + shift,
                    values,
                    f"C{index % 10}",
                    label if i == 0 else None,
                    jitter,
                )
        ax.set_title(f"{title}: each job (dots), mean ± std (n = seeds)", fontsize=9)
        ax.set_ylabel(f"{title} (%)")
        _widen(ax, MIN_SPAN_PCT)
    if paired:
        ax = axes[-1]
        by_group = {label: index for index, (label, _) in enumerate(groups)}
        labelled: set[str] = set()
        for setting, base in paired:
            mine, theirs = setting.by_seed(delta_key), base.by_seed(delta_key)
            diffs = [100 * (mine[s] - theirs[s]) for s in mine if s in theirs]
            label = _group_label(sweep, setting)
            index = by_group.get(label, 0)
            shift = (index - (len(groups) - 1) / 2) * jitter * 0.6
            _draw_spread(
                ax,
                _setting_x(sweep, setting, positions) + shift,
                diffs,
                f"C{index % 10}",
                None if label in labelled else label,
                jitter,
            )
            labelled.add(label)
        ax.axhline(0.0, color="0.3", linewidth=1, linestyle="--")
        ax.set_title(f"Δ {delta_key.replace('_', ' ')} vs λ = 0, paired by seed", fontsize=9)
        ax.set_ylabel("percentage points")
        _widen(ax, 4.0)
    for ax in axes:
        ax.margins(x=0.15)
        ax.set_xlabel("λ (drloc.lambda_drloc)" if sweep.x_key == LAMBDA_KEY else (sweep.x_key or "job"))
        if not numeric:
            ax.set_xticks(list(positions.values()), list(positions.keys()), rotation=30 if len(positions) > 4 else 0)
        ax.grid(alpha=0.3)
    if len(groups) > 1 and axes[0].get_legend_handles_labels()[0]:
        # one legend for all panels, below them, so it hides no point
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="outside lower center", fontsize=7, title=", ".join(sweep.group_keys), title_fontsize=7
        )
    failed = len(sweep.failed)
    fig.suptitle(
        f"Sweep {sweep.path.name}" + (f" ({failed} failed job{'s' if failed != 1 else ''} left out)" if failed else ""),
        fontsize=11,
    )
    return fig


def _draw_spread(ax, x: float, values: list[float], color: str, label: str | None, jitter: float) -> None:
    """Every job as a small point around ``x``; their mean ± std as a larger marker labelled n=."""
    if not values:
        return
    offsets = [0.0] if len(values) == 1 else [(-0.5 + i / (len(values) - 1)) * jitter for i in range(len(values))]
    ax.scatter([x + o for o in offsets], values, s=16, alpha=0.5, color=color, linewidths=0)
    mean, std, n = mean_std(values)
    ax.errorbar(
        [x], [mean], yerr=[std or 0.0], marker="D", markersize=6, capsize=5, color=color, label=label, linestyle="none"
    )
    ax.annotate(f"n={n}", (x, mean), textcoords="offset points", xytext=(7, 4), fontsize=7, color=color)


def plot_curves(sweep: Sweep, metric: str = CURVE_METRIC):
    """``curves.png``: ``metric`` per epoch, baseline (λ=0, dashed black) vs DRLoc, one panel per group."""
    groups = _grouped(sweep)
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig = new_figure(5.0 * columns, 3.8 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    x_values = (
        sorted({s.values.get(sweep.x_key, "") for _, ss in groups for s in ss}, key=value_key) if sweep.x_key else [""]
    )
    cmap = _colormap()
    drloc_values = [v for v in x_values if not (sweep.x_key == LAMBDA_KEY and as_number(v) == 0.0)]
    anything = False
    for ax, (label, settings) in zip(axes, groups):
        for setting in settings:
            curve = setting.mean_curve(metric)
            if not curve:
                continue
            anything = True
            value = setting.values.get(sweep.x_key, "") if sweep.x_key else ""
            epochs = [e + 1 for e, _, _ in curve]
            means = [100 * m for _, m, _ in curve]
            stds = [100 * s if s is not None else 0.0 for _, _, s in curve]
            if sweep.x_key == LAMBDA_KEY and as_number(value) == 0.0:
                style = {"color": "black", "linestyle": "--", "label": "baseline (λ=0)"}
            else:
                shade = drloc_values.index(value) / max(1, len(drloc_values) - 1) if value in drloc_values else 0.0
                name = "DRLoc λ" if sweep.x_key == LAMBDA_KEY else (sweep.x_key or "run")
                style = {"color": cmap(0.15 + 0.7 * shade), "label": f"{name}={value}" if sweep.x_key else name}
            ax.plot(epochs, means, marker="o", markersize=3, **style)
            if any(stds):
                ax.fill_between(
                    epochs,
                    [m - s for m, s in zip(means, stds)],
                    [m + s for m, s in zip(means, stds)],
                    color=style["color"],
                    alpha=0.15,
                )
        if sweep.group_keys:
            ax.set_title(label, fontsize=10)
        ax.xaxis.set_major_locator(_integer_locator())
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[len(groups) :]:
        ax.set_axis_off()
    if not anything:
        axes[0].text(
            0.5,
            0.5,
            f"no {metric} logged\n(the CSV logger writes <job>/csv/metrics.csv)",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
    fig.suptitle(f"{metric} per epoch, mean ± std over seeds: baseline vs DRLoc", fontsize=11)
    return fig


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _colormap():
    from matplotlib import colormaps

    return colormaps["viridis"]


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
