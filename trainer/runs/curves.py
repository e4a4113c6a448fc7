"""`trainer plot`: metric curves of one or several runs, in the terminal or as a PNG.

Against `step` (default), a metric is drawn from whichever records carry it more often in a
run: the step records (`train/loss`, `lr/<group>` every `log_every` steps), or, where they are
sparser (a `log_every` near or above the epoch's length), the epoch records; a metric only
epoch records carry (`val/...`) from those. Against `epoch`, from the epoch records. Several
runs share each chart, one mark (or line colour) per run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import UserError, did_you_mean
from trainer.runs.listing import find_runs
from trainer.runs.metrics_file import is_epoch_record, metric_names, read_records
from trainer.runs.report import pyplot, save_figure

MARKS = "*o+x#@%&"
PNG_WIDTH = 9.0  # inches; at PNG_DPI: 900 pixels wide
PANEL_HEIGHT = 3.0  # inches per metric: 300 pixels
PNG_DPI = 100

Points = list[tuple[float, float]]


def find_run(run: str) -> Path:
    """A run directory given by path, or by name under `runs/` (`<study>/trial-0003` too)."""
    for candidate in (Path(run), Path("runs") / run):
        if (candidate / "metrics.jsonl").is_file() or (candidate / "config.yaml").is_file():
            return candidate
    known = list(find_runs(Path("runs"))) if Path("runs").is_dir() else []
    listed = f" (runs under runs/: {', '.join(known)})" if known else ""
    raise UserError(
        f"RUN: {run!r} is neither a run directory nor a run name"
        f"{did_you_mean(run, known)}{listed}"
    )


def curve(records: list[dict[str, Any]], metric: str, *, x: str) -> Points:
    """(x, value) of `metric`: against `step`, from the step records unless the epoch records
    carry it more often; against `epoch`, from the epoch records."""
    carrying = [r for r in records if r.get(metric) is not None]
    epochs = [r for r in carrying if is_epoch_record(r)]
    steps = [r for r in carrying if not is_epoch_record(r)]
    chosen = steps if x == "step" and len(steps) >= len(epochs) else epochs
    return [(float(r[x]), float(r[metric])) for r in chosen]


def default_metrics(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """train/loss and every validation metric the runs logged, in the order first logged."""
    keys = dict.fromkeys(k for records in runs.values() for r in records for k in r)
    return [k for k in keys if k == "train/loss" or k.startswith("val/")]


def collect(
    runs: dict[str, list[dict[str, Any]]], metrics: list[str], *, x: str
) -> dict[str, dict[str, Points]]:
    """metric -> run -> points; no metric, a metric no run logged, or nothing to draw is a
    UserError listing what they did log."""
    logged = list(
        dict.fromkeys(k for records in runs.values() for r in records for k in metric_names(r))
    )
    if not metrics:
        raise UserError(
            "--metric: these runs logged neither train/loss nor a val/ metric; name one "
            f"(metrics: {', '.join(logged)})"
        )
    unknown = [m for m in metrics if m not in logged]
    if unknown:
        raise UserError(
            [
                f"--metric: {m!r} is not logged by these runs{did_you_mean(m, logged)} "
                f"(metrics: {', '.join(logged)})"
                for m in unknown
            ]
        )
    panels = {m: {name: curve(records, m, x=x) for name, records in runs.items()} for m in metrics}
    if not any(points for series in panels.values() for points in series.values()):
        raise UserError(f"--metric: {', '.join(metrics)}: no point to draw against --x {x}")
    return panels


def load_runs(
    run_args: list[str], *, warn: Callable[[str], None]
) -> dict[str, list[dict[str, Any]]]:
    """run label -> records; a label is the directory's name, or its path when names repeat.
    A run without metrics yet is left out with a warning, or a UserError if all are."""
    paths = [find_run(run) for run in run_args]
    names = [p.name for p in paths]
    runs, empty = {}, []
    for path in paths:
        records = read_records(path / "metrics.jsonl", warn=warn)
        label = path.name if names.count(path.name) == 1 else str(path)
        if records:
            runs[label] = records
        else:
            empty.append(f"RUN: {str(path)!r} has no metrics yet (nothing in its metrics.jsonl)")
    if not runs:
        raise UserError(empty)
    for line in empty:
        warn(f"{line}; not drawn")
    return runs


def chart(
    series: dict[str, Points], *, title: str, x: str, width: int = 64, height: int = 12
) -> str:
    """A terminal chart of several runs' points, one mark per run."""
    points = [p for run_points in series.values() for p in run_points]
    if not points:
        return f"{title}: no points"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high, y_low, y_high = min(xs), max(xs), min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    for mark, run_points in zip(MARKS, series.values(), strict=False):
        for px, py in run_points:
            column = round((px - x_low) / ((x_high - x_low) or 1) * (width - 1))
            row = round((py - y_low) / ((y_high - y_low) or 1) * (height - 1))
            grid[height - 1 - row][column] = mark
    label = max(len(f"{y_high:.4g}"), len(f"{y_low:.4g}"))
    lines = [title]
    for index, cells in enumerate(grid):
        axis = f"{y_high:.4g}" if index == 0 else f"{y_low:.4g}" if index == height - 1 else ""
        lines.append(f"{axis:>{label}} |{''.join(cells)}")
    lines.append(f"{'':>{label}} +{'-' * width}")
    ends = f"{x} {x_low:g} .. {x_high:g}"
    lines.append(f"{'':>{label}}  {ends}")
    legend = ", ".join(f"{m} {name}" for m, name in zip(MARKS, series, strict=False))
    lines.append(f"{'':>{label}}  {legend}")
    return "\n".join(lines)


def write_png(panels: dict[str, dict[str, Points]], path: str, *, x: str) -> None:
    """One panel per metric, stacked, every run a line with a legend; 900 x 300n pixels."""
    plt = pyplot("--out")
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(PNG_WIDTH, PANEL_HEIGHT * len(panels)), squeeze=False
    )
    for ax, (metric, series) in zip(axes[:, 0], panels.items(), strict=True):
        for name, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name, marker=".")
        ax.set_ylabel(metric)
        ax.set_xlabel(x)
        ax.legend()
    figure.tight_layout()
    try:
        save_figure(figure, str(path), option="--out", dpi=PNG_DPI)
    finally:
        plt.close(figure)
