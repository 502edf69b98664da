"""Gain curves: the paired DRLoc − baseline difference of chosen study rows along an axis (images
per class, epochs, ...), one line per λ policy.

A study dir that holds a ``gain_curve.json`` gets ``gain_curve.png`` and ``gain_curve.md`` from
:func:`vt_drloc.report.study.write_study` (``python -m vt_drloc.report --study <dir>``), and every
other ``gain_curve_<name>.json`` its own ``gain_curve_<name>.png`` / ``.md`` (one figure per question). The file
names, per panel, the x-axis and for each series (a λ policy) the study row at each x value, by its
label in ``study.md`` (the cell name, plus its other swept values when the cell sweeps more; the
cell name alone serves for a cell with one DRLoc setting, and ``"<label>, λ=<λ>"`` as in
``study.png`` for a cell that swept several λ):

.. code-block:: json

    {"title": "ViT, CIFAR-10",
     "panels": [{"x": "images per class", "series": {
         "λ 1, warm-up / decay": {"100": "spc100_vit_lam1_wd", "500": "spc500_vit_lam1_wd"},
         "paper λ 0.1": {"100": "spc100_vit", "500": "spc500_vit"}}}]}

Every number is the rows' own (paired per seed, as in ``study.md``); nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from vt_drloc.report.figures import new_figure
from vt_drloc.report.markdown import markdown_table
from vt_drloc.report.stats import mean_std
from vt_drloc.report.sweep import SweepError
from vt_drloc.report.tables import delta_text, task_text


def gain_curve_specs(study_dir: str | Path) -> list[Path]:
    """The study dir's gain-curve specs: ``gain_curve.json`` and ``gain_curve_<name>.json``, sorted by name."""
    return sorted(p for p in Path(study_dir).glob("gain_curve*.json") if p.is_file())


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read and check a gain-curve spec (see the module docstring)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SweepError(f"{path} is not valid JSON ({err})") from None
    panels = spec.get("panels") if isinstance(spec, dict) else None
    if not isinstance(panels, list) or not panels:
        raise SweepError(f'{path}: expected {{"panels": [{{"x": ..., "series": {{name: {{x value: row label}}}}}}]}}')
    for panel in panels:
        if (
            not isinstance(panel, dict)
            or not isinstance(panel.get("x"), str)
            or not isinstance(panel.get("series"), dict)
        ):
            raise SweepError(
                f'{path}: each panel needs "x" (the axis name) and "series" ({{name: {{x value: row label}}}}), '
                f"got {panel!r}"
            )
        for name, points in panel["series"].items():
            for x in points:
                try:
                    float(x)
                except ValueError:
                    raise SweepError(
                        f'{path}: series {name!r} has x value {x!r}; x values are numbers (e.g. "100")'
                    ) from None
    return spec


def gain_points(rows: list, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per (panel, series, x): the row, its per-seed paired test differences (points)."""
    by_label: dict[str, list] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
        by_label.setdefault(f"{row.label}, λ={row.lam}", []).append(row)  # the spelling of study.png
        if row.label != row.cell:
            by_label.setdefault(row.cell, []).append(row)  # the cell alone, when that is unique
    points = []
    for panel in spec["panels"]:
        for series, xs in panel["series"].items():
            for x, label in sorted(xs.items(), key=lambda kv: float(kv[0])):
                if len(by_label.get(label, ())) != 1:
                    names = [
                        row.label if len(by_label[row.label]) == 1 else f"'{row.label}, λ={row.lam}'" for row in rows
                    ]
                    problem = (
                        "which the study does not have" if label not in by_label else "which names more than one row"
                    )
                    raise SweepError(
                        f"gain curve series {series!r} names row {label!r} at {panel['x']}={x}, {problem}; "
                        f"rows: {', '.join(sorted(names))}"
                    )
                row = by_label[label][0]
                points.append(
                    {
                        "panel": panel["x"],
                        "series": series,
                        "x": float(x),
                        "row": row,
                        "diffs": [100 * d for d in row.paired_test()],
                    }
                )
    return points


def gain_curve_markdown(points: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"# Gain curve: {title}",
        "",
        "Δ = paired test top-1 difference DRLoc − baseline (same seed), percentage points, mean ± std over seeds, "
        "n = seeds; head = the DRLoc runs' last-epoch training L1 / chance.",
        "",
    ]
    table = pd.DataFrame(
        [
            {
                "axis": p["panel"],
                "policy": p["series"],
                "x": f"{p['x']:g}",
                "Δ test acc1": delta_text(mean_std(p["diffs"]), scale=1.0),  # diffs are in points already
                "head L1 / chance": task_text(p["row"].drloc),
                "λ": p["row"].lam,
                "row": p["row"].label,
            }
            for p in points
        ],
        columns=["axis", "policy", "x", "Δ test acc1", "head L1 / chance", "λ", "row"],
    )
    lines += markdown_table(table)
    lines.append("")
    return "\n".join(lines)


def plot_gain_curve(points: list[dict[str, Any]], spec: dict[str, Any], title: str):
    """One panel per axis: Δ (mean ± std, seeds as dots) against x on a log axis, a line per policy."""
    panels = [panel["x"] for panel in spec["panels"]]
    fig = new_figure(4.2 * len(panels) + 0.6, 3.8)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    series_names = list(dict.fromkeys(p["series"] for p in points))
    colors = {name: f"C{i}" for i, name in enumerate(series_names)}
    for ax, panel in zip(axes, panels):
        xs_all = sorted({p["x"] for p in points if p["panel"] == panel})
        for name in series_names:
            mine = [p for p in points if p["panel"] == panel and p["series"] == name and p["diffs"]]
            if not mine:
                continue
            xs = [p["x"] for p in mine]
            stats = [mean_std(p["diffs"]) for p in mine]
            ax.errorbar(
                xs,
                [s[0] for s in stats],
                yerr=[s[1] or 0.0 for s in stats],
                fmt="-o",
                color=colors[name],
                capsize=4,
                label=name,
            )
            for p, (mean, _, n) in zip(mine, stats):
                ax.scatter([p["x"]] * len(p["diffs"]), p["diffs"], color=colors[name], s=10, alpha=0.5, zorder=3)
                ax.annotate(
                    f"n={n}",
                    (p["x"], mean),
                    textcoords="offset points",
                    xytext=(6, -10),
                    fontsize=7,
                    color=colors[name],
                )
        ax.axhline(0.0, color="gray", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        ax.minorticks_off()
        if xs_all:
            ax.set_xlim(xs_all[0] / 1.5, xs_all[-1] * 1.5)
        ax.set_xlabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")  # per panel: a series may appear in one panel only
    axes[0].set_ylabel("Δ test top-1 vs λ = 0 (points)")
    fig.suptitle(f"{title}\npaired gain of DRLoc over λ = 0 (dots = seeds, bars = mean ± std)", fontsize=10)
    return fig
