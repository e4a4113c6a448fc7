"""Resume: find the checkpoint, check it fits, restore states, say what differs and what wins.

Restore order: the model, optimizer and scheduler are built from the config first, then the
checkpoint's states are loaded into them. The checkpoint's optimizer state wins over the
config's optimizer options (use --reset-optimizer to load the weights only); a changed
scheduler section is rebuilt and fast-forwarded to where the run stopped.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.errors import UserError
from trainer.runs.rundir import in_use, lock_holder
from trainer.state.checkpoint import load_checkpoint, set_rng_state

if TYPE_CHECKING:
    from trainer.engine.build import Run


@dataclass
class Position:
    """Where training stands: what is done, and the best value so far."""

    epoch: int = 0  # epochs completed
    step: int = 0  # training steps taken (calls of the step: one per accumulation window)
    batch_in_epoch: int = 0  # batches of epoch `epoch + 1` already trained (per process)
    samples_in_epoch: int = 0  # samples of epoch `epoch + 1` already trained (all processes)
    epoch_sums: dict[str, float] = field(default_factory=dict)  # step metrics summed so far
    epoch_counted: int = 0  # batches of the epoch those sums cover (skipped ones left out)
    best: dict[str, Any] | None = None


def find_checkpoint(
    resume: str, *, run_base: Path, name: str
) -> tuple[Path | None, dict | None, list[str]]:
    """(path, checkpoint, notes) for `--resume PATH|auto`.

    `auto` takes the newest readable checkpoint of run `name` under `run_base` or
    `run_base-N` (unreadable ones are skipped and reported; a `-N` directory holding another
    run's checkpoints is left alone: it merely shares the prefix). It starts a new run only
    when the run has no checkpoint file at all and no live process is writing it; when
    every file is unreadable it is a UserError.
    """
    if resume != "auto":
        return Path(resume), _load_finite(resume), []
    run_dirs = _run_dirs(run_base)
    skipped: list[str] = []
    others: list[str] = []
    for path in _candidates(run_dirs):
        if any(path.is_relative_to(other) for other in others):
            continue
        try:
            checkpoint = _load_finite(path)
        except UserError as err:
            skipped += err.problems
            continue
        owner = (checkpoint.get("config") or {}).get("name")
        run_dir = path.parent.parent
        if owner != name:
            if run_dir == run_base:
                raise UserError(
                    f"--resume auto: {run_dir} holds run {owner!r} (the name in {path}'s "
                    f"config), not {name!r}; resume it with --resume {path}, or give this "
                    "run another name or trainer.out_dir"
                )
            others.append(str(run_dir))
            continue
        notes = [f"--resume auto: skipping {problem}" for problem in skipped]
        notes += [f"--resume auto: {d} holds another run's checkpoints, left alone" for d in others]
        return path, checkpoint, notes
    if skipped:
        raise UserError(
            [
                f"--resume auto: no readable checkpoint of {run_base}[-N]; not starting "
                "a new run over these:",
                *(f"  {problem}" for problem in skipped),
                "resume one that is intact with --resume PATH, or move these away to start "
                "a new run",
            ]
        )
    for run_dir in run_dirs:  # no checkpoint yet, but a process may be in its first epoch
        if str(run_dir) in others or _config_name(run_dir) not in (None, name):
            continue
        holder = lock_holder(run_dir)
        if holder is not None:
            raise UserError(f"--resume auto: {in_use(run_dir, holder)}")
    notes = [f"--resume auto: {d} holds another run's checkpoints, left alone" for d in others]
    return None, None, [
        *notes,
        f"--resume auto: no checkpoint of run {name!r} under {run_base}[-N]; starting a new run",
    ]


def _config_name(run_dir: Path) -> str | None:
    """The `name` in a run directory's config.yaml; None where there is none to read."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return config.get("name") if isinstance(config, dict) else None


def _load_finite(path: str | Path) -> dict[str, Any]:
    """A checkpoint to resume from: readable, and its model's tensors finite."""
    checkpoint = load_checkpoint(path)
    bad = [
        name
        for name, tensor in checkpoint["model"].items()
        if isinstance(tensor, torch.Tensor)
        and tensor.is_floating_point()
        and not bool(tensor.isfinite().all())
    ]
    if bad:
        raise UserError(
            f"{path}: the model's weights are not finite ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); resume from an earlier checkpoint"
        )
    return checkpoint


def _run_dirs(base: Path) -> list[Path]:
    """This run name's directories (`base`, `base-N`), the one written last first."""
    pattern = re.compile(re.escape(base.name) + r"(-\d+)?")
    dirs = [d for d in base.parent.glob(f"{base.name}*") if pattern.fullmatch(d.name)]

    def written(run_dir: Path) -> float:
        times = [0.0]
        for path in (run_dir / "checkpoints").glob("*.pt"):
            with contextlib.suppress(OSError):  # pruned while we look
                times.append(path.stat().st_mtime)
        return max(times)

    return sorted(dirs, key=written, reverse=True)


def _candidates(run_dirs: list[Path]) -> list[Path]:
    """Checkpoints to resume from, best first: in each directory last.pt, the epoch files
    (newest first), then best.pt."""
    ordered = []
    for directory in (run_dir / "checkpoints" for run_dir in run_dirs):
        epochs = sorted(directory.glob("epoch-*.pt"), reverse=True)
        last, best = directory / "last.pt", directory / "best.pt"
        ordered += [path for path in (last, *epochs, best) if path.is_file()]
    return ordered


def config_changes(old: dict[str, Any], new: dict[str, Any], *, reset_optimizer: bool) -> list[str]:
    """One line per config key that differs, saying which value wins."""
    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            continue
        section = key.split(".")[0]
        if section == "optimizers" and key.split(".")[2:3] == ["scheduler"]:
            section = "scheduler"
        if section in ("optimizer", "optimizers", "param_groups") and not reset_optimizer:
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
    from trainer.components.models import StateFit

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
    run: Run,
    *,
    reset_optimizer: bool,
    rank: int = 0,
    world_size: int = 1,
    path: Path | None = None,
) -> tuple[Position, list[str]]:
    """Load the checkpoint's states into the built run; returns (position, notes).

    Each optimizer's scheduler is loaded when its config section is unchanged, else rebuilt
    from the config and fast-forwarded to where the run stopped. An optimizer state that does
    not fit (another optimizer, other group sizes) is refused, naming `path`, before any
    state is loaded.
    """
    config = run.config
    problems = model_changes(checkpoint["model"], run.module)
    if problems:
        raise UserError(
            ["model: the checkpoint's weights do not fit the configured model:", *problems]
        )
    saved = optimizer_states(checkpoint)
    if set(saved) != set(run.optimizers):
        raise UserError(
            f"optimizers: the checkpoint has {', '.join(saved)}, the config "
            f"{', '.join(run.optimizers)}; a run keeps its set of optimizers (start a new run, "
            "or init_from the checkpoint's weights)"
        )
    moved = _moved_tensors(checkpoint["groups"], run.manifest(), several=len(saved) > 1)
    if moved and not reset_optimizer:
        raise UserError(
            [
                "param_groups: the groups differ from the checkpoint's:",
                *moved,
                "use --reset-optimizer to load the weights only",
            ]
        )
    if not reset_optimizer:
        where = path or "the checkpoint"
        misfits = [
            problem
            for name, handle in run.optimizers.items()
            for problem in _state_misfits(saved[name], handle.optimizer, name, where, len(saved))
        ]
        if misfits:
            raise UserError(misfits)
    run.module.load_state_dict(checkpoint["model"])
    position = Position(
        epoch=checkpoint["epoch"],
        step=checkpoint["step"],
        batch_in_epoch=checkpoint["batch_in_epoch"],
        samples_in_epoch=checkpoint.get("samples_in_epoch")
        or checkpoint["batch_in_epoch"] * config.data.batch_size,
        epoch_sums=dict(
            checkpoint.get("epoch_sums") or {"loss": checkpoint.get("epoch_loss", 0.0)}
        ),
        epoch_counted=checkpoint.get("epoch_counted", checkpoint["batch_in_epoch"]),
        best=checkpoint["best"],
    )
    notes, resolved = [], config.to_dict()
    changes = config_changes(checkpoint["config"], resolved, reset_optimizer=reset_optimizer)
    if changes:
        notes += ["config differs from the checkpoint's:", *changes]
    if reset_optimizer:
        notes.append("--reset-optimizer: loaded the weights only; fresh optimizer state")
    for name, handle in run.optimizers.items():
        state = saved[name]
        # Files from before update counts were saved: one update per step then.
        handle.updates = (checkpoint.get("updates") or {}).get(name, position.step)
        if not reset_optimizer:
            handle.optimizer.load_state_dict(state["optimizer"])
            if state["scaler"]:
                handle.scaler.load_state_dict(state["scaler"])
        scheduler_config = _optimizer_section(resolved, name, "scheduler")
        same_scheduler = state["scheduler_config"] == scheduler_config
        if same_scheduler and not reset_optimizer:
            handle.schedule.load_state_dict(state["scheduler"])
            continue
        for group in handle.optimizer.param_groups:  # back to the lrs the scheduler starts at
            group["lr"] = group.setdefault("initial_lr", group["lr"])
        handle.schedule = run.rebuild_schedule(name)
        last_epoch = handle.schedule.fast_forward(steps=position.step, epochs=position.epoch)
        if handle.schedule.scheduler is not None:
            label = "scheduler" if len(saved) == 1 else f"optimizers.{name}.scheduler"
            notes.append(
                f"{label}: rebuilt {type(handle.schedule.scheduler).__name__} from the "
                f"config, fast-forwarded to last_epoch={last_epoch}"
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
    return position, notes


def optimizer_states(checkpoint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each optimizer's saved optimizer, scheduler and scaler state, its scheduler config and
    the optimizer's name in the checkpoint's config."""
    config = checkpoint["config"]
    if checkpoint.get("optimizers"):
        return {
            name: {
                "optimizer": state,
                "scheduler": checkpoint["schedulers"][name],
                "scaler": checkpoint["scalers"][name],
                "scheduler_config": _optimizer_section(config, name, "scheduler"),
                "optimizer_name": (_optimizer_section(config, name, "optimizer") or {}).get("name"),
            }
            for name, state in checkpoint["optimizers"].items()
        }
    return {
        "optimizer": {
            "optimizer": checkpoint["optimizer"],
            "scheduler": checkpoint["scheduler"],
            "scaler": checkpoint["scaler"],
            "scheduler_config": config.get("scheduler"),
            "optimizer_name": (config.get("optimizer") or {}).get("name"),
        }
    }


def _optimizer_section(config: dict[str, Any], name: str, section: str) -> Any:
    """Optimizer `name`'s `optimizer` or `scheduler` section in a config dict, either form."""
    if config.get("optimizers"):
        return (config["optimizers"].get(name) or {}).get(section)
    return config.get(section)


def _state_misfits(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, name: str, where: Any, count: int
) -> list[str]:
    """Why optimizer `name`'s saved state cannot be loaded into the built `optimizer`: it is
    another optimizer's, or its groups hold other numbers of tensors (what torch refuses)."""
    key = "optimizer" if count == 1 else f"optimizers.{name}.optimizer"
    configured, saved_name = type(optimizer).__name__, saved["optimizer_name"]
    if saved_name is not None and re.split(r"[:.]", saved_name)[-1] != configured:
        return [
            f"{key}.name: {where} holds {saved_name}'s state, the config names {configured}; "
            f"resume with --reset-optimizer to load the weights only (a fresh {configured} "
            f"state), or set {key}.name: {saved_name}"
        ]
    saved_sizes = [len(group["params"]) for group in saved["optimizer"]["param_groups"]]
    sizes = {group["name"]: len(group["params"]) for group in optimizer.param_groups}
    if saved_sizes == list(sizes.values()):
        return []
    return [
        f"{key}: {where} holds an optimizer state for {sum(saved_sizes)} tensors in groups of "
        f"{', '.join(map(str, saved_sizes))}; the configured param groups have "
        f"{sum(sizes.values())} ({', '.join(f'{group}: {n}' for group, n in sizes.items())}); "
        "resume with --reset-optimizer to load the weights only"
    ]


def _moved_tensors(old: dict[str, Any], new: dict[str, Any], *, several: bool) -> list[str]:
    """manifest_changes over every optimizer's groups (tensors moving between optimizers too)."""
    if not several:
        return manifest_changes(old, new)
    return manifest_changes(_by_optimizer(old), _by_optimizer(new))


def _by_optimizer(manifest: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    return {
        f"{name}/{group}": params
        for name, groups in manifest.items()
        for group, params in groups.items()
    }
