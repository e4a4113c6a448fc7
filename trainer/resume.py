"""Resume: find the checkpoint, check it fits, restore states, say what differs and what wins.

Restore order: the model, optimizer and scheduler are built from the config first, then the
checkpoint's states are loaded into them. The checkpoint's optimizer state wins over the
config's optimizer options (use --reset-optimizer to load the weights only); a changed
scheduler section is rebuilt and fast-forwarded to where the run stopped.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import load_checkpoint, set_rng_state
from trainer.errors import UserError


@dataclass
class Position:
    """Where training stands: what is done, and the best value so far."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of epoch `epoch + 1` already trained (per process)
    samples_in_epoch: int = 0  # samples of epoch `epoch + 1` already trained (all processes)
    epoch_loss: float = 0.0  # summed batch losses of those batches
    best: dict[str, Any] | None = None


def find_checkpoint(resume: str, *, run_base: Path) -> tuple[Path | None, dict | None, list[str]]:
    """(path, checkpoint, notes) for `--resume PATH|auto`; auto skips unreadable files."""
    if resume != "auto":
        return Path(resume), load_checkpoint(resume), []
    notes = []
    for path in _candidates(run_base):
        try:
            return path, load_checkpoint(path), notes
        except UserError as err:
            notes.append(f"--resume auto: skipping {path}: {err.problems[0]}")
    notes.append(f"--resume auto: no checkpoint under {run_base}[-N]; starting a new run")
    return None, None, notes


def _candidates(base: Path) -> list[Path]:
    """This run name's checkpoints: newest directory first; in each, last.pt, then epoch files."""
    pattern = re.compile(re.escape(base.name) + r"(-\d+)?")
    dirs = [
        d / "checkpoints" for d in base.parent.glob(f"{base.name}*") if pattern.fullmatch(d.name)
    ]

    def newest(directory: Path) -> float:
        return max((f.stat().st_mtime for f in directory.glob("*.pt")), default=0.0)

    ordered = []
    for directory in sorted(dirs, key=newest, reverse=True):
        last = directory / "last.pt"
        ordered += [last] if last.is_file() else []
        ordered += sorted(directory.glob("epoch-*.pt"), reverse=True)
    return ordered


def config_changes(old: dict[str, Any], new: dict[str, Any], *, reset_optimizer: bool) -> list[str]:
    """One line per config key that differs, saying which value wins."""
    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            continue
        section = key.split(".")[0]
        if section in ("optimizer", "param_groups") and not reset_optimizer:
            wins = "the checkpoint's optimizer state wins; --reset-optimizer to use the config"
        elif section == "scheduler":
            wins = "config wins: the scheduler is rebuilt"
        else:
            wins = "config wins"
        lines.append(f"  {key}: {before.get(key)!r} (checkpoint) -> {after.get(key)!r} ({wins})")
    return lines


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        flat |= (
            _flatten(value, f"{prefix}{key}.")
            if isinstance(value, dict)
            else {f"{prefix}{key}": value}
        )
    return {k.rstrip("."): v for k, v in flat.items()}


def model_changes(saved: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """What does not fit between saved weights and the model: missing, extra, reshaped."""
    from trainer.models import StateFit

    return StateFit(saved, model).problems("the checkpoint")


def manifest_changes(old: dict[str, list[str]], new: dict[str, list[str]]) -> list[str]:
    """Parameters that moved between groups (or in and out of training), and reordered groups."""
    old_group = {p: g for g, params in old.items() for p in params}
    new_group = {p: g for g, params in new.items() for p in params}
    lines = [
        f"  {p}: group {old_group.get(p, '(not trained)')} -> {new_group.get(p, '(not trained)')}"
        for p in dict.fromkeys([*old_group, *new_group])
        if old_group.get(p) != new_group.get(p)
    ]
    if not lines and list(old) != list(new):
        lines.append(f"  group order: {list(old)} -> {list(new)}")
    return lines


def restore(
    checkpoint: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    config: Any,
    manifest: dict[str, list[str]],
    reset_optimizer: bool,
    rebuild_scheduler: Any,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Position, Any, list[str]]:
    """Load the checkpoint's states into the built objects; returns (position, scheduler, notes).

    `rebuild_scheduler(optimizer)` builds the config's scheduler anew.
    """
    problems = model_changes(checkpoint["model"], model)
    if problems:
        raise UserError(
            ["model: the checkpoint's weights do not fit the configured model:", *problems]
        )
    moved = manifest_changes(checkpoint["groups"], manifest)
    if moved and not reset_optimizer:
        raise UserError(
            [
                "param_groups: the groups differ from the checkpoint's:",
                *moved,
                "use --reset-optimizer to load the weights only",
            ]
        )
    model.load_state_dict(checkpoint["model"])
    position = Position(
        epoch=checkpoint["epoch"],
        step=checkpoint["step"],
        batch_in_epoch=checkpoint["batch_in_epoch"],
        samples_in_epoch=checkpoint.get("samples_in_epoch")
        or checkpoint["batch_in_epoch"] * config.data.batch_size,
        epoch_loss=float(checkpoint.get("epoch_loss", 0.0)),
        best=checkpoint["best"],
    )
    notes = []
    changes = config_changes(
        checkpoint["config"], config.model_dump(mode="json"), reset_optimizer=reset_optimizer
    )
    if changes:
        notes += ["config differs from the checkpoint's:", *changes]

    same_scheduler = checkpoint["config"].get("scheduler") == (
        config.scheduler.model_dump(mode="json") if config.scheduler else None
    )
    if reset_optimizer:
        notes.append("--reset-optimizer: loaded the weights only; fresh optimizer state")
    else:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
    if same_scheduler and not reset_optimizer:
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
    else:
        scheduler, last_epoch = _fast_forward(optimizer, config, position, rebuild_scheduler)
        if scheduler is not None:
            notes.append(
                f"scheduler: rebuilt {config.scheduler.name} from the config, "
                f"fast-forwarded to last_epoch={last_epoch}"
            )
    # Each rank's own RNG when the process count is the same as when it was saved;
    # otherwise rank 0's, and the other ranks a stream of their own from the seed.
    per_rank = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
    if len(per_rank) == world_size:
        set_rng_state(per_rank[rank])
    else:
        set_rng_state(per_rank[0])
        if rank:
            torch.manual_seed(config.seed + rank + position.step)
    return position, scheduler, notes


def _fast_forward(
    optimizer: torch.optim.Optimizer, config: Any, position: Position, rebuild_scheduler: Any
) -> tuple[Any, int]:
    """A new scheduler at the run's position: lrs back to `initial_lr`, then stepped forward."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"])
    scheduler = rebuild_scheduler(optimizer)
    if scheduler is None:
        return None, 0
    last_epoch = position.step if config.scheduler.interval == "step" else position.epoch
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.last_epoch = last_epoch
        return scheduler, last_epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": intended
        for _ in range(last_epoch):
            scheduler.step()
    return scheduler, last_epoch
