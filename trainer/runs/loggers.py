"""Viewers of a run beside metrics.jsonl (which stays the source of truth): TensorBoard.

`logging: {tensorboard: true}` writes event files to `<run dir>/tb/`: every record that goes
to metrics.jsonl, the resolved config as text and the param-group table. Step records keep
their names (`train/loss`, `lr/<group>`); epoch records keep `val/...` and `epoch`, and put
the rest under `epoch/` (`epoch/train/loss`, the epoch's mean), so no tag holds two values at
one step. Rank 0 alone writes. A resumed run continues the same directory: TensorBoard purges
what an earlier process logged after the checkpoint's step, so no step appears twice.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trainer.components.registry import needs_extra
from trainer.errors import UserError
from trainer.runs.metrics_file import is_epoch_record

if TYPE_CHECKING:
    from trainer.config import Config

TENSORBOARD_DIR = "tb"


class Writer(Protocol):
    """What a viewer implements; `Loggers` calls it on rank 0 only."""

    def write(self, record: dict[str, Any]) -> None: ...

    def describe(self, config_yaml: str, groups: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) for every number of a metrics.jsonl record, as TensorBoard shows it."""
    epoch_record = is_epoch_record(record)
    for key, value in record.items():
        if key == "step" or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if not epoch_record:
            if key != "epoch":
                yield key, float(value)
        elif key == "epoch" or key.startswith("val/"):
            yield key, float(value)
        else:
            yield f"epoch/{key}", float(value)


def groups_markdown(groups: dict[str, Any]) -> str:
    """The param-group table (`trainer groups --json`'s document) as a markdown table."""
    lines = [
        "| group | rule | tensors | elements | lr | weight_decay | options |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group in groups["groups"]:
        options = ", ".join(f"{k}={v}" for k, v in group["options"].items()) or "-"
        name = f"{group['optimizer']}/{group['name']}" if "optimizer" in group else group["name"]
        lines.append(
            f"| {name} | {group['rule'] or '-'} | {len(group['params'])} | "
            f"{group['numel']:,} | {group['lr']:.6g} | {group['weight_decay']:.6g} | {options} |"
        )
    lines.append(f"\nfrozen: {len(groups['frozen'])} tensors")
    return "\n".join(lines)


class TensorBoard:
    """Event files under `log_dir`, continued past `start_step` by a resumed run."""

    def __init__(self, log_dir: Path, *, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops events an earlier process wrote after the checkpoint.
        self.start_step = start_step
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def write(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step=record["step"])
        if is_epoch_record(record):
            self.writer.flush()  # an epoch's numbers are on disk even if the run dies later

    def describe(self, config_yaml: str, groups: dict[str, Any]) -> None:
        # Markdown: a code block keeps the YAML's indentation.
        config_block = "\n".join("    " + line for line in config_yaml.splitlines())
        self.writer.add_text("config", config_block, global_step=self.start_step)
        self.writer.add_text("param_groups", groups_markdown(groups), global_step=self.start_step)

    def close(self) -> None:
        self.writer.close()


class Loggers:
    """Every configured viewer; on ranks other than 0, none."""

    def __init__(self, writers: list[Writer]) -> None:
        self.writers = writers

    def write(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (a step's or an epoch's)."""
        for writer in self.writers:
            writer.write(record)

    def describe(self, config_yaml: str, groups: dict[str, Any]) -> None:
        """The resolved config (YAML text) and the param groups (`trainer groups --json`)."""
        for writer in self.writers:
            writer.describe(config_yaml, groups)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def check_loggers(config: Config) -> list[str]:
    """Loggers whose optional package is missing, before anything is built or written."""
    if config.logging.tensorboard and importlib.util.find_spec("tensorboard") is None:
        return [needs_extra("logging.tensorboard", package="tensorboard", extra="tensorboard")]
    return []


def open_loggers(config: Config, run_dir: Path, *, enabled: bool, start_step: int) -> Loggers:
    """The viewers `config.logging` names, writing into `run_dir` (rank 0: `enabled`)."""
    problems = check_loggers(config)
    if problems:
        raise UserError(problems)
    writers: list[Writer] = []
    if enabled and config.logging.tensorboard:
        writers.append(TensorBoard(run_dir / TENSORBOARD_DIR, start_step=start_step))
    return Loggers(writers)
