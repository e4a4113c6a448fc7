"""What a run prints: device, param groups, progress (rich on a terminal, plain lines otherwise)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from trainer.components.param_groups import GroupsReport
    from trainer.state.checkpoint import RunState


def make_console(**kwargs: Any) -> Console:
    """A console for tables and lines; off a terminal it is wide, so tables are not squeezed."""
    console = Console(highlight=False, **kwargs)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def number(value: object) -> str:
    """Metrics and hyperparameters in a short, exact-enough form."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def groups_table(
    report: GroupsReport, *, optimizer: str | None = None, lrs: dict[str, float] | None = None
) -> Table:
    """One row per param group: what the optimizer gets (`lrs`: the lr each group has now,
    a resumed run's rather than the config's); with layer_decay, each group's layer and the
    scale on its lr."""
    title = f"param groups of optimizers.{optimizer}" if optimizer else "param groups"
    table = Table(title=title, title_justify="left")
    layered = any(group.layer is not None for group in report.groups)
    columns = ["group", "rule", "tensors", "elements", "lr", "weight_decay", "options"]
    if layered:
        columns[4:4] = ["layer", "lr_scale"]
    for column in columns:
        numeric = column in ("tensors", "elements", "layer", "lr_scale")
        table.add_column(column, justify="right" if numeric else "left")
    for group in report.groups:
        options = ", ".join(f"{k}={number(v)}" for k, v in group.options.items())
        layer = [str(group.layer), number(group.lr_scale)] if layered else []
        table.add_row(
            group.name,
            group.rule or "-",
            str(len(group.params)),
            f"{group.numel:,}",
            *layer,
            number(lrs[group.name] if lrs else group.lr),
            number(group.weight_decay),
            options or "-",
        )
    return table


def groups_footer(report: GroupsReport) -> str:
    """Frozen counts (by the config, by the model) and rule hits, below the groups table."""
    lines = [
        f"frozen: {len(report.frozen_by_config)} tensors by param_groups.freeze, "
        f"{len(report.frozen_by_model)} by the model"
    ]
    if report.held_norms:
        lines[0] += (
            f"; {len(report.held_norms)} frozen norm layers kept in eval mode "
            "(param_groups.freeze_norm_stats)"
        )
    if report.rule_hits:
        hits = ", ".join(f"{rule} {count}" for rule, count in report.rule_hits.items())
        lines.append(f"rule hits (tensors): {hits}")
    return "\n".join(lines)


def sharding_lines(units: Sequence[tuple[str, int]], checkpointed: list[str]) -> list[str]:
    """trainer.strategy: fsdp's units (module, parameters it holds; the root last) and the
    modules whose activations are recomputed, below the groups table."""
    lines = []
    if units:
        total = sum(count for _, count in units)
        listed = ", ".join(f"{name or '(root)'} {count:,}" for name, count in units)
        lines.append(f"fsdp units ({len(units)}, {total:,} parameters): {listed}")
        if len(units) == 1:
            lines.append("fsdp: no fsdp.units: the root alone is sharded (gathered whole)")
    if checkpointed:
        shown = ", ".join(checkpointed[:8]) + (", ..." if len(checkpointed) > 8 else "")
        lines.append(f"activation checkpointing ({len(checkpointed)} modules): {shown}")
    return lines


def groups_json(reports: dict[str, GroupsReport], *, several: bool) -> dict[str, Any]:
    """`trainer groups --json`: one optimizer's document, or `optimizers: {name: ...}` too."""
    first = next(iter(reports.values())).to_json()
    if not several:
        return first
    per_optimizer = {name: report.to_json() for name, report in reports.items()}
    return {
        "groups": [
            {**group, "optimizer": name}
            for name, document in per_optimizer.items()
            for group in document["groups"]
        ],
        "optimizers": {name: {"groups": doc["groups"]} for name, doc in per_optimizer.items()},
        **{
            key: first[key]
            for key in ("frozen", "frozen_by_config", "frozen_by_model", "held_norms")
        },
        "rule_hits": {
            f"{name}/{rule}": hits
            for name, doc in per_optimizer.items()
            for rule, hits in doc["rule_hits"].items()
        },
        "unmatched_rules": [],
    }


def names_table(reports: dict[str, GroupsReport], model: torch.nn.Module) -> Table:
    """Every parameter with its shape and group (or why it is frozen)."""
    from trainer.components.param_groups import clean_name

    several = len(reports) > 1
    report = next(iter(reports.values()))
    where = {
        name: f"{optimizer}/{group.name}" if several else group.name
        for optimizer, groups in reports.items()
        for group in groups.groups
        for name in group.params
    }
    where |= {name: "frozen (param_groups.freeze)" for name in report.frozen_by_config}
    where |= {name: "frozen (by the model)" for name in report.frozen_by_model}
    table = Table(title="parameters", title_justify="left")
    for column in ("parameter", "shape", "group"):
        table.add_column(column)
    for raw_name, param in model.named_parameters():
        name = clean_name(raw_name)
        table.add_row(name, "x".join(map(str, param.shape)) or "scalar", where[name])
    return table


def checkpoint_summary(saved: RunState) -> str:
    """What `trainer inspect` prints: position, lr per group, metrics, best, config."""
    import yaml

    position, best = saved.position, saved.position.best
    several = len(saved.optimizers) > 1
    lines = [
        f"epoch: {position.epoch} completed, step: {position.step}, "
        f"batch_in_epoch: {position.batch_in_epoch}",
    ]
    for name, state in saved.optimizers.items():
        label = f" ({name})" if several else ""
        groups = state.optimizer["param_groups"]
        lines += [
            f"lr{label}: "
            + ", ".join(f"{g.get('name', i)} {number(g['lr'])}" for i, g in enumerate(groups)),
            f"groups{label}: "
            + ", ".join(f"{n} ({len(p)} tensors)" for n, p in state.groups.items()),
        ]
    lines += [
        "metrics: " + "  ".join(f"{k} {number(v)}" for k, v in saved.metrics.items()),
        f"best: {best['monitor']} {number(best['value'])} at epoch {best['epoch']}"
        if best
        else "best: -",
        *ema_lines(saved),
        "config:",
        yaml.safe_dump(saved.config, sort_keys=False).rstrip(),
    ]
    return "\n".join(lines)


def ema_lines(saved: RunState) -> list[str]:
    """The EMA weights a checkpoint holds (trainer.ema), if any."""
    ema = saved.ema
    if ema is None:
        return []
    warmup = ema.warmup
    how = (
        f", warmup power {number(warmup['power'])} gamma {number(warmup['gamma'])}"
        if warmup
        else ""
    )
    return [
        f"ema: EMA weights, decay {number(ema.decay)}, every {ema.every_steps} step(s){how}, "
        f"{ema.updates} updates (eval --ema, export --ema)"
    ]


def schedule_table(table: dict[str, list[float]], unit: str, *, rows: int = 40) -> Table:
    """lr per group per epoch (or step); long schedules are shown at evenly spaced rows."""
    length = len(next(iter(table.values()), []))
    count = min(rows, length)
    shown = sorted({round(i * (length - 1) / max(count - 1, 1)) for i in range(count)})
    caption = (
        f"{len(shown)} of {length} {unit}s shown; --json lists all"
        if (len(shown) < length)
        else None
    )
    out = Table(
        title=f"lr per {unit}", title_justify="left", caption=caption, caption_justify="left"
    )
    out.add_column(unit, justify="right")
    for name in table:
        out.add_column(name, justify="right")
    for index in shown:
        out.add_row(str(index + 1), *(f"{lrs[index]:.6g}" for lrs in table.values()))
    return out


CHART_MARKS = "*o+x#@"


def schedule_chart(
    table: dict[str, list[float]],
    unit: str,
    *,
    width: int = 60,
    height: int = 10,
    x_axis: str | None = None,
) -> str:
    """A terminal line chart of every series over its steps (one mark per series); the
    scale is logarithmic when the values span more than a factor of 10. `x_axis` says what
    the columns are (default: `<unit> 1 .. N`)."""
    values = [v for lrs in table.values() for v in lrs]
    if not values:
        return ""
    low, high = min(values), max(values)
    scale = math.log10 if low > 0 and high / low > 10 else float
    length = len(next(iter(table.values())))
    columns = min(width, length)
    grid = [[" "] * columns for _ in range(height)]
    for mark, lrs in zip(CHART_MARKS, table.values(), strict=False):
        for column in range(columns):
            value = lrs[column * (length - 1) // max(columns - 1, 1)]
            span = scale(high) - scale(low)
            row = 0 if span == 0 else round((scale(value) - scale(low)) / span * (height - 1))
            grid[height - 1 - row][column] = mark
    label = max(len(f"{high:.3g}"), len(f"{low:.3g}"))
    lines = []
    for index, cells in enumerate(grid):
        axis = f"{high:.3g}" if index == 0 else f"{low:.3g}" if index == height - 1 else ""
        lines.append(f"{axis:>{label}} |{''.join(cells)}")
    lines.append(f"{'':>{label}} +{'-' * columns}")
    log = scale is math.log10
    if x_axis is None:
        lines.append(f"{'':>{label}}  {unit} 1 .. {length}{', log scale' if log else ''}")
    else:
        lines.append(f"{'':>{label}}  {x_axis}{'; y on a log scale' if log else ''}")
    legend = ", ".join(f"{m} {name}" for m, name in zip(CHART_MARKS, table, strict=False))
    lines.append(f"{'':>{label}}  {legend}")
    return "\n".join(lines)


def pyplot(option: str = "--plot") -> Any:
    """matplotlib.pyplot (an optional extra) drawing to files; exit 2 naming `option` without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from trainer.errors import UserError

        raise UserError(
            f"{option}: needs matplotlib, an optional extra: `uv sync --extra plot` "
            "or `pip install 'trainer[plot]'`"
        ) from None
    return plt


def plot_schedule(table: dict[str, list[float]], unit: str, path: str) -> None:
    """Write the lr schedule as a picture (matplotlib, an optional extra)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    for name, lrs in table.items():
        axes.plot(range(1, len(lrs) + 1), lrs, label=name)
    axes.set_xlabel(unit)
    axes.set_ylabel("lr")
    axes.legend()
    figure.tight_layout()
    try:
        save_figure(figure, path, option="--plot")
    finally:
        plt.close(figure)


def save_figure(figure: Figure, path: str, *, option: str, **savefig: Any) -> None:
    """figure.savefig(path); a path that cannot be written is a UserError naming `option`."""
    try:
        figure.savefig(path, **savefig)
    except OSError as err:
        from trainer.errors import UserError

        raise UserError(f"{option}: cannot write {path!r} ({err.strerror or err})") from None


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The per-epoch summary: every metric of the epoch on one line."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    parts += [f"{k} {number(v)}" for k, v in record.items() if k not in ("epoch",)]
    return "  ".join(parts)


def lr_text(lrs: dict[str, float], *, several: bool) -> str:
    """The lrs of a progress line: one value, a `low-high` range where groups differ, and
    per optimizer (`generator 0.001  discriminator 0.01`) with several."""
    by_optimizer: dict[str, list[float]] = {}
    for key, lr in lrs.items():
        name = key.split("/")[1] if several else ""
        by_optimizer.setdefault(name, []).append(lr)
    parts = []
    for name, values in by_optimizer.items():
        low, high = min(values), max(values)
        span = number(low) if low == high else f"{number(low)}-{number(high)}"
        parts.append(f"{name} {span}" if name else span)
    return "  ".join(parts) or "-"


class Reporter:
    """Prints a run's progress: a rich bar on a terminal, periodic plain lines otherwise."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or make_console()
        self.live = self.console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None
        self._epochs = 0

    def device(self, device: torch.device, reason: str) -> None:
        self.note(f"device: {device} ({reason})")

    def groups(
        self, reports: dict[str, GroupsReport], *, lrs: dict[str, dict[str, float]] | None = None
    ) -> None:
        """One table per optimizer (titled by name when there are several), then the footer."""
        several = len(reports) > 1
        for name, report in reports.items():
            self.console.print(
                groups_table(report, optimizer=name if several else None, lrs=(lrs or {}).get(name))
            )
        self.note(groups_footer(next(iter(reports.values()))))

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        self._epochs = epochs
        if not self.live:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} samples/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=batches, completed=done, loss="-", lr="-", speed="-"
        )

    def advance(self) -> None:
        """One batch done (cheap: no device sync, nothing printed off a terminal)."""
        if self._progress is not None:
            self._progress.advance(self._task)

    def log(
        self,
        record: dict[str, Any],
        *,
        batch: int,
        batches: int,
        samples_per_s: float,
        several: bool = False,
    ) -> None:
        """A periodic step record (every trainer.log_every steps)."""
        lr = lr_text({k: v for k, v in record.items() if k.startswith("lr/")}, several=several)
        train = {k: v for k, v in record.items() if k.startswith("train/")}
        if self._progress is not None:
            self._progress.update(
                self._task,
                loss="  ".join(f"{k[6:]} {number(v)}" for k, v in train.items()) or "-",
                lr=lr,
                speed=f"{samples_per_s:,.0f}",
            )
            return
        metrics = "  ".join(f"{k} {number(v)}" for k, v in train.items())
        self.note(
            f"epoch {record['epoch']}/{self._epochs}  batch {batch}/{batches}  "
            f"step {record['step']}  {metrics}  lr {lr}  {samples_per_s:,.0f} samples/s"
        )

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.stop()
        self.note(epoch_line(record, self._epochs))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
