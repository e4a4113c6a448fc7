"""Resume: find the checkpoint, check it fits, restore states, say what differs and what wins.

Restore order: the model, optimizer and scheduler are built from the config first, then the
checkpoint's states are loaded into them. The checkpoint's optimizer state wins over the
config's optimizer options (use --reset-optimizer to load the weights only); a changed
scheduler section is rebuilt and fast-forwarded to where the run stopped.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.config import flatten
from trainer.engine.distributed import SINGLE, Distributed
from trainer.engine.sharding import non_finite_weights
from trainer.errors import UserError
from trainer.runs.listing import read_config
from trainer.runs.rundir import in_use, lock_holder
from trainer.state.checkpoint import (
    Position,
    RunState,
    full_to_sharded,
    load_checkpoint,
    not_finite,
    read_checkpoint_shapes,
    set_rng_state,
)
from trainer.state.files import moved_aside

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.engine.build import Run


def find_checkpoint(
    resume: str, *, run_base: Path, name: str, sharded: bool = False
) -> tuple[Path | None, RunState | None, list[str]]:
    """(path, saved state, notes) for `--resume PATH|auto`.

    `auto` takes the newest readable checkpoint of run `name` under `run_base` or
    `run_base-N` (files and sharded checkpoint directories alike, and a checkpoint moved
    aside by a save killed between its renames; unreadable ones are skipped and reported; a
    `-N` directory holding another run's checkpoints is left alone: it merely shares the
    prefix). PATH, missing where its moved-aside copy is there, means that copy (noted).
    It starts a new run only when the run has no checkpoint at all and no live process is
    writing it; when every checkpoint is unreadable it is a UserError. `sharded` (a run
    under fsdp): of a checkpoint directory only the shapes are read here; each process
    loads its own shards in `restore`.
    """
    if resume != "auto":
        path, aside = Path(resume), moved_aside(Path(resume))
        if not path.exists() and aside.exists():  # a save killed between its renames
            note = f"--resume: {path} is missing (a save was interrupted); resuming from {aside}"
            return aside, _load_finite(aside, sharded), [note]
        return path, _load_finite(path, sharded), []
    run_dirs = _run_dirs(run_base)
    skipped: list[str] = []
    others: list[str] = []
    for path in _candidates(run_dirs):
        if any(path.is_relative_to(other) for other in others):
            continue
        try:
            saved = _load_finite(path, sharded)
        except UserError as err:
            skipped += err.problems
            continue
        owner = saved.config.get("name")
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
        return path, saved, notes
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
    notes.append(
        f"--resume auto: no checkpoint of run {name!r} under {run_base}[-N]; starting a new run"
    )
    return None, None, notes


def _config_name(run_dir: Path) -> object:
    """The `name` in a run directory's config.yaml; None where there is none to read."""
    return read_config(run_dir / "config.yaml", warn=lambda _: None).get("name")


def _load_finite(path: str | Path, sharded: bool = False) -> RunState:
    """A checkpoint to resume from: readable, and its model's tensors finite (a directory
    read for a sharded run: its shapes, the tensors checked once loaded)."""
    if sharded and Path(path).is_dir():
        return read_checkpoint_shapes(path)
    saved = load_checkpoint(path)
    _refuse_non_finite(path, not_finite(saved.model))
    return saved


def _refuse_non_finite(path: str | Path, bad: list[str]) -> None:
    if bad:
        raise UserError(
            f"{path}: the model's weights are not finite ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); resume from an earlier checkpoint"
        )


def _run_dirs(base: Path) -> list[Path]:
    """This run name's directories (`base`, `base-N`), the one written last first."""
    pattern = re.compile(re.escape(base.name) + r"(-\d+)?")
    dirs = [d for d in base.parent.glob(f"{base.name}*") if pattern.fullmatch(d.name)]

    def written(run_dir: Path) -> float:
        times = [0.0]
        checkpoints = run_dir / "checkpoints"
        for path in [*checkpoints.glob("*.pt"), *checkpoints.glob(".*.pt.previous")]:
            with contextlib.suppress(OSError):  # pruned while we look
                times.append(path.stat().st_mtime)
        return max(times)

    return sorted(dirs, key=written, reverse=True)


def _candidates(run_dirs: list[Path]) -> list[Path]:
    """Checkpoints to resume from, best first: in each directory last.pt (or, where a save
    was killed between its renames, the previous one moved aside), the epoch checkpoints
    (newest first), then best.pt (or its moved-aside copy); files or directories alike."""
    ordered = []
    for directory in (run_dir / "checkpoints" for run_dir in run_dirs):
        epochs = sorted(directory.glob("epoch-*.pt"), reverse=True)
        last, best = directory / "last.pt", directory / "best.pt"
        found = (last, moved_aside(last), *epochs, best, moved_aside(best))
        ordered += [path for path in found if path.exists()]
    return ordered


def config_changes(old: dict[str, Any], new: dict[str, Any], *, reset_optimizer: bool) -> list[str]:
    """One line per config key that differs, saying which value wins."""
    before, after = flatten(old), flatten(new)
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
    saved: RunState,
    run: Run,
    *,
    reset_optimizer: bool,
    job: Distributed = SINGLE,
    path: Path | None = None,
) -> tuple[Position, list[str]]:
    """Load the checkpoint's states into the built run; returns (position, notes).

    Each optimizer's scheduler is loaded when its config section is unchanged, else rebuilt
    from the config and fast-forwarded to where the run stopped. What does not fit (the
    model, the optimizers, their groups and states) is refused, naming `path`, before any
    state is loaded.
    """
    check_fit(saved, run, reset_optimizer=reset_optimizer, where=path or "the checkpoint")
    if run.sharded:
        load_shards(saved, run, job, reset_optimizer=reset_optimizer, path=path)
    else:
        run.module.load_state_dict(saved.model)
    notes, resolved = [], run.config.to_dict()
    changes = config_changes(saved.config, resolved, reset_optimizer=reset_optimizer)
    if changes:
        notes += ["config differs from the checkpoint's:", *changes]
    if reset_optimizer:
        notes.append("--reset-optimizer: loaded the weights only; fresh optimizer state")
    load_optimizers(saved, run, reset_optimizer=reset_optimizer)
    notes += load_schedulers(saved, run, reset_optimizer=reset_optimizer)
    notes += load_ema(saved, run, path=path)
    load_rng(saved, rank=job.rank, world_size=job.world_size, seed=run.config.seed)
    return saved.position, notes


def load_shards(
    saved: RunState, run: Run, job: Distributed, *, reset_optimizer: bool, path: Path | None
) -> None:
    """Each process's shards of the model and optimizer states (collective): from a sharded
    checkpoint directory by DCP, at any process count; from a whole state (a file that ddp
    or one process wrote) by slicing it."""
    optimizers = {} if reset_optimizer else {n: h.optimizer for n, h in run.optimizers.items()}
    ema = run.ema if saved.ema is not None else None
    for name in [n for n in optimizers if not saved.optimizers[n].optimizer["state"]]:
        # Saved before its first step: its groups alone (torch's sharded loading would first
        # give it a state by a step of lr 0).
        optimizers.pop(name).load_state_dict(saved.optimizers[name].optimizer)
    if path is None or not path.is_dir():
        full_to_sharded(run.module, optimizers, saved)
        if ema is not None and saved.ema is not None:
            ema.load(saved.ema)  # each rank keeps its shards of the whole average
        return
    from trainer.state.sharded import load_sharded_states  # DCP: seconds to import

    load_sharded_states(
        path, run.module, optimizers, ema.sharded_weights() if ema is not None else None
    )
    bad = non_finite_weights(run.module, job, run.device)
    if bad is not None:
        _refuse_non_finite(path, bad or ["on another process"])


def check_fit(saved: RunState, run: Run, *, reset_optimizer: bool, where: Path | str) -> None:
    """A UserError naming what of the checkpoint does not fit the built run: the model's
    weights, the set of optimizers, and (unless reset_optimizer) the groups and states."""
    problems = model_changes(saved.model, run.module)
    if problems:
        raise UserError(
            ["model: the checkpoint's weights do not fit the configured model:", *problems]
        )
    if set(saved.optimizers) != set(run.optimizers):
        raise UserError(
            f"optimizers: the checkpoint has {', '.join(saved.optimizers)}, the config "
            f"{', '.join(run.optimizers)}; a run keeps its set of optimizers (start a new run, "
            "or init_from the checkpoint's weights)"
        )
    if reset_optimizer:
        return
    old = {name: state.groups for name, state in saved.optimizers.items()}
    moved = _moved_tensors(old, run.manifest(), several=len(old) > 1)
    if moved:
        raise UserError(
            [
                "param_groups: the groups differ from the checkpoint's:",
                *moved,
                "use --reset-optimizer to load the weights only",
            ]
        )
    misfits = [
        problem
        for name, handle in run.optimizers.items()
        for problem in _state_misfits(saved, name, handle.optimizer, run.config, where)
    ]
    if misfits:
        raise UserError(misfits)


def load_optimizers(saved: RunState, run: Run, *, reset_optimizer: bool) -> None:
    """Each optimizer's update count, and (unless reset_optimizer) its and its scaler's
    state (a sharded run's optimizer states are loaded with its model's shards)."""
    for name, handle in run.optimizers.items():
        state = saved.optimizers[name]
        handle.updates = state.updates
        if not reset_optimizer and not run.sharded:
            handle.optimizer.load_state_dict(state.optimizer)
        if not reset_optimizer and state.scaler:
            handle.scaler.load_state_dict(state.scaler)


def load_schedulers(saved: RunState, run: Run, *, reset_optimizer: bool) -> list[str]:
    """Each scheduler's saved state where its config section is unchanged (and the optimizer
    state was loaded); else rebuilt and fast-forwarded to the position. Notes the rebuilt."""
    notes, resolved, position = [], run.config.to_dict(), saved.position
    for name, handle in run.optimizers.items():
        scheduler_config = _optimizer_section(resolved, name, "scheduler")
        unchanged = _optimizer_section(saved.config, name, "scheduler") == scheduler_config
        if unchanged and not reset_optimizer:
            handle.schedule.load_state_dict(saved.optimizers[name].scheduler)
            continue
        for group in handle.optimizer.param_groups:  # back to the lrs the scheduler starts at
            group["lr"] = group.setdefault("initial_lr", group["lr"])
        handle.schedule = run.rebuild_schedule(name)
        # A per-step scheduler steps once per update this optimizer took (a custom step may
        # take several a step, a skipped one none), not once per step.
        last_epoch = handle.schedule.fast_forward(
            steps=saved.optimizers[name].updates, epochs=position.epoch
        )
        if handle.schedule.scheduler is not None:
            notes.append(
                f"{_section_key(run.config.several_optimizers, name, 'scheduler')}: rebuilt "
                f"{type(handle.schedule.scheduler).__name__} from the config, fast-forwarded "
                f"to last_epoch={last_epoch}"
            )
    return notes


def load_ema(saved: RunState, run: Run, *, path: Path | None) -> list[str]:
    """The checkpoint's EMA weights (a sharded run's shards are loaded with its model's) and
    count of updates; notes where the checkpoint and trainer.ema differ."""
    ema, kept = run.ema, saved.ema
    if ema is None:
        return (
            []
            if kept is None
            else [
                f"trainer.ema: {path or 'the checkpoint'} holds EMA weights ({kept.updates} "
                "updates); this config has no trainer.ema, so they are not kept"
            ]
        )
    if kept is None:
        ema.restart()
        return [
            f"trainer.ema: {path or 'the checkpoint'} holds no EMA weights; the average "
            "starts from the resumed weights"
        ]
    if not run.sharded:
        ema.load(kept)
    else:
        ema.count.fill_(kept.updates)
    decay, every_steps, warmup = ema.saved_settings()
    if (decay, every_steps, warmup) != (kept.decay, kept.every_steps, kept.warmup):
        return [
            f"trainer.ema: the average of {kept.updates} updates is kept and goes on with the "
            f"config's settings (decay {decay:g}, every_steps {every_steps}, "
            f"warmup {warmup}; the checkpoint's: decay {kept.decay:g}, every_steps "
            f"{kept.every_steps}, warmup {kept.warmup})"
        ]
    return []


def load_rng(saved: RunState, *, rank: int, world_size: int, seed: int) -> None:
    """Each rank's own RNG when the process count is the same as when it was saved;
    otherwise rank 0's, and the other ranks a stream of their own from the seed."""
    if len(saved.rngs) == world_size:
        set_rng_state(saved.rngs[rank])
        return
    set_rng_state(saved.rngs[0])
    if rank:
        torch.manual_seed(seed + rank + saved.position.step)


def _optimizer_section(config: dict[str, Any], name: str, section: str) -> Any:
    """Optimizer `name`'s `optimizer` or `scheduler` section in a config dict, either form."""
    several = config.get("optimizers")
    if several:  # a damaged file's sections may be anything: compared, never read into
        entry = several.get(name) if isinstance(several, dict) else None
        return entry.get(section) if isinstance(entry, dict) else entry
    return config.get(section)


def _section_key(several: bool, name: str, section: str) -> str:
    """Optimizer `name`'s config key of `section`: `scheduler`, `optimizers.<name>.scheduler`."""
    return f"optimizers.{name}.{section}" if several else section


def _state_misfits(
    saved: RunState, name: str, optimizer: torch.optim.Optimizer, config: Config, where: Path | str
) -> list[str]:
    """Why optimizer `name`'s saved state cannot be loaded into the built `optimizer`: it is
    another optimizer's, or its groups hold other numbers of tensors (what torch refuses)."""
    key = _section_key(config.several_optimizers, name, "optimizer")
    configured = type(optimizer).__name__
    saved_section = _optimizer_section(saved.config, name, "optimizer")
    saved_name = saved_section.get("name") if isinstance(saved_section, dict) else None
    if isinstance(saved_name, str) and re.split(r"[:.]", saved_name)[-1] != configured:
        return [
            f"{key}.name: {where} holds {saved_name}'s state, the config names {configured}; "
            f"resume with --reset-optimizer to load the weights only (a fresh {configured} "
            f"state), or set {key}.name: {saved_name}"
        ]
    saved_state = saved.optimizers[name].optimizer
    saved_sizes = [len(group["params"]) for group in saved_state["param_groups"]]
    sizes = {group["name"]: len(group["params"]) for group in optimizer.param_groups}
    if saved_sizes == list(sizes.values()):
        return []
    return [
        f"{key}: {where} holds an optimizer state for {sum(saved_sizes)} tensors in groups of "
        f"{', '.join(map(str, saved_sizes))}; the configured param groups have "
        f"{sum(sizes.values())} ({', '.join(f'{group}: {n}' for group, n in sizes.items())}); "
        "resume with --reset-optimizer to load the weights only"
    ]


def _moved_tensors(
    old: dict[str, dict[str, list[str]]], new: dict[str, dict[str, list[str]]], *, several: bool
) -> list[str]:
    """manifest_changes over every optimizer's groups (tensors moving between optimizers too);
    with one optimizer, its groups by their own names."""
    if not several:
        return manifest_changes(next(iter(old.values())), next(iter(new.values())))
    return manifest_changes(_by_optimizer(old), _by_optimizer(new))


def _by_optimizer(manifest: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    return {
        f"{name}/{group}": params
        for name, groups in manifest.items()
        for group, params in groups.items()
    }
