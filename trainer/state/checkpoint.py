"""Checkpoints: what one holds (`RunState`), its one layout on disk (plain dicts of tensors and
numbers, read with weights_only), older layouts converted on reading, atomic writes.

A checkpoint is a .pt file (one process, DDP) or, under fsdp, a directory of the same name
holding the same layout (trainer.state.sharded). `load_checkpoint` reads either in one
process; `save_checkpoints` writes files, `save_sharded_checkpoints` (collective) directories.
trainer.state.sharded (torch.distributed.checkpoint, seconds to import) is imported where a
directory is met, so a run and a command that never meet one do not pay for it.
"""

from __future__ import annotations

import os
import random
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
import torch

from trainer.errors import UserError
from trainer.state import files
from trainer.state.optimizer_keys import optimizer_state_by_index, optimizer_state_by_name

if TYPE_CHECKING:
    from trainer.config import CheckpointConfig

# The one layout on disk. Optimizer states are keyed by optimizer name, also for one optimizer
# (whose name is `optimizer`); files written before that are converted by `upgrade`.
KEYS = (
    "model",
    "optimizers",
    "schedulers",
    "scalers",
    "updates",
    "groups",
    "epoch",
    "step",
    "batch_in_epoch",
    "samples_in_epoch",
    "epoch_sums",
    "epoch_counted",
    "rng",
    "rng_per_rank",
    "config",
    "metrics",
    "best",
    "early_stopping",
    "ema",
)
BY_OPTIMIZER = ("schedulers", "scalers", "updates", "groups")  # keyed as `optimizers` is
ONE_OPTIMIZER = "optimizer"  # the name of a one-optimizer config's optimizer


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


@dataclass
class OptimizerState:
    """What one optimizer's handle saves: its states, its update count and its groups."""

    optimizer: dict[str, Any]  # Optimizer.state_dict()
    scheduler: dict[str, Any] | None  # the scheduler's state_dict; None without a scheduler
    scaler: dict[str, Any] | None  # GradScaler.state_dict(); empty when scaling is off
    updates: int  # optimizer steps taken
    groups: dict[str, list[str]]  # group name -> parameter names (the manifest)


@dataclass
class EmaState:
    """The EMA weights (trainer.ema): `ema` in the layout, null in a run without them."""

    weights: dict[str, Any]  # the averaged module's state_dict, by the model's names
    updates: int  # updates so far (AveragedModel's n_averaged)
    decay: float
    every_steps: int
    warmup: dict[str, float] | None  # {power, gamma}, or None

    def to_checkpoint(self) -> dict[str, Any]:
        """Its fields as the checkpoint's `ema` mapping (the tensors themselves, not copies)."""
        return {key.name: getattr(self, key.name) for key in fields(self)}

    @classmethod
    def from_checkpoint(cls, ema: dict[str, Any]) -> EmaState:
        return cls(**{key.name: ema[key.name] for key in fields(cls)})


@dataclass
class RunState:
    """What a checkpoint holds. `to_checkpoint` and `from_checkpoint` are the one layout on
    disk; no other module reads a checkpoint's keys."""

    model: dict[str, Any]  # Module.state_dict() with the plain parameter names
    position: Position
    optimizers: dict[str, OptimizerState]  # by optimizer name
    rngs: list[dict[str, Any]]  # every rank's rng_state(), rank 0's first
    config: dict[str, Any]  # the resolved config
    metrics: dict[str, Any]  # the last epoch's record
    early_stopping: dict[str, Any] | None = None  # EarlyStopping.state_dict()
    ema: EmaState | None = None  # the EMA weights, where trainer.ema keeps them

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict: every key of KEYS, nothing that needs pickle to load."""
        position, states = self.position, self.optimizers
        return {
            "model": self.model,
            "optimizers": {name: state.optimizer for name, state in states.items()},
            "schedulers": {name: state.scheduler for name, state in states.items()},
            "scalers": {name: state.scaler for name, state in states.items()},
            "updates": {name: state.updates for name, state in states.items()},
            "groups": {name: state.groups for name, state in states.items()},
            "epoch": position.epoch,
            "step": position.step,
            "batch_in_epoch": position.batch_in_epoch,
            "samples_in_epoch": position.samples_in_epoch,
            "epoch_sums": dict(position.epoch_sums),
            "epoch_counted": position.epoch_counted,
            "rng": self.rngs[0],
            "rng_per_rank": self.rngs,
            "config": self.config,
            "metrics": dict(self.metrics),
            "best": position.best,
            "early_stopping": self.early_stopping,
            "ema": self.ema.to_checkpoint() if self.ema is not None else None,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> RunState:
        """The state a checkpoint of the one layout (as `upgrade` gives it) holds."""
        position = Position(
            epoch=checkpoint["epoch"],
            step=checkpoint["step"],
            batch_in_epoch=checkpoint["batch_in_epoch"],
            samples_in_epoch=checkpoint["samples_in_epoch"],
            epoch_sums=dict(checkpoint["epoch_sums"]),
            epoch_counted=checkpoint["epoch_counted"],
            best=checkpoint["best"],
        )
        optimizers = {
            name: OptimizerState(
                optimizer=state,
                scheduler=checkpoint["schedulers"][name],
                scaler=checkpoint["scalers"][name],
                updates=checkpoint["updates"][name],
                groups=checkpoint["groups"][name],
            )
            for name, state in checkpoint["optimizers"].items()
        }
        return cls(
            model=checkpoint["model"],
            position=position,
            optimizers=optimizers,
            rngs=list(checkpoint["rng_per_rank"]),
            config=checkpoint["config"],
            metrics=checkpoint["metrics"],
            early_stopping=checkpoint["early_stopping"],
            ema=EmaState.from_checkpoint(checkpoint["ema"]) if checkpoint.get("ema") else None,
        )


def not_finite(state: Mapping[str, object]) -> list[str]:
    """The names of a state_dict's floating-point tensors holding a NaN or inf (one host
    sync for all of them): weights that are never saved, and never resumed from."""
    tensors = {
        name: tensor
        for name, tensor in state.items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
    }
    if not tensors:
        return []
    finite = torch.stack([tensor.isfinite().all() for tensor in tensors.values()]).tolist()
    return [name for name, ok in zip(tensors, finite, strict=True) if not ok]


def upgrade(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of any earlier layout in the one layout: a one-optimizer file's
    `optimizer`, `scheduler`, `scaler` and flat `groups` keyed by its optimizer's name, and
    what older files lack derived as they were read then. Keys it cannot derive stay
    missing, and values of the wrong type stay as they are, for the checks to name."""
    upgraded = _keyed_by_name(dict(checkpoint))
    names = upgraded.get("optimizers")
    step, batches = upgraded.get("step"), upgraded.get("batch_in_epoch")
    if upgraded.get("updates") is None and isinstance(names, dict):  # one update per step then
        upgraded["updates"] = dict.fromkeys(names, step if _count(step) else 0)
    if "epoch_sums" not in upgraded:  # before the sums of every step metric: the loss's
        upgraded["epoch_sums"] = {"loss": upgraded.get("epoch_loss", 0.0)}
    upgraded.pop("epoch_loss", None)
    upgraded.setdefault("epoch_counted", batches if _count(batches) else 0)
    if upgraded.get("samples_in_epoch") is None:
        upgraded["samples_in_epoch"] = _samples_trained(upgraded)
    if upgraded.get("rng_per_rank") is None and "rng" in upgraded:
        upgraded["rng_per_rank"] = [upgraded["rng"]]
    upgraded.setdefault("early_stopping", None)
    upgraded.setdefault("ema", None)  # before trainer.ema
    return upgraded


def _keyed_by_name(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The optimizer states and groups of a one-optimizer file keyed by its optimizer's name;
    a file of several optimizers, keyed so already, loses its unused (null) singular keys."""
    singular = ("optimizer", "scheduler", "scaler")
    if checkpoint.get("optimizers") is not None or "optimizer" not in checkpoint:
        return {key: value for key, value in checkpoint.items() if key not in singular}
    # An `optimizers:` config of one entry was saved in this layout too, its groups by name.
    sections = checkpoint.get("config", {})
    sections = sections.get("optimizers") if isinstance(sections, dict) else None
    names = list(sections) if isinstance(sections, dict) else []
    keyed_groups = len(names) == 1
    name = names[0] if keyed_groups else ONE_OPTIMIZER
    for key in singular:
        if key in checkpoint:
            checkpoint[key + "s"] = {name: checkpoint.pop(key)}
    if "groups" in checkpoint and not keyed_groups:
        checkpoint["groups"] = {name: checkpoint["groups"]}
    return checkpoint


def _samples_trained(checkpoint: dict[str, Any]) -> int | None:
    """Samples of the epoch trained, for files from before they were saved: the batches
    trained times the batch size of the checkpoint's config (None where it has none)."""
    batches = checkpoint.get("batch_in_epoch")
    if not _count(batches) or batches == 0:
        return 0  # nothing trained, or a bad batch_in_epoch that the checks name
    data = checkpoint.get("config", {})
    data = data.get("data") if isinstance(data, dict) else None
    size = data.get("batch_size") if isinstance(data, dict) else None
    return batches * size if _count(size) else None


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename); a failed write leaves `path` as it
    was and no temporary file, and is a TrainingError."""
    with files.writing(path) as temporary:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        files.put_in_place(temporary, path)


def load_checkpoint(path: str | Path, *, option: str = "--resume") -> RunState:
    """A checkpoint in the one layout: a .pt file read with weights_only=True, or a sharded
    checkpoint directory read whole in this process (no process group), its optimizer states
    keyed by index as a file's are. A UserError if it is missing, not a trainer checkpoint,
    or has a key of the wrong type (naming each)."""
    path = Path(path)
    return _checked(path, _read(path, option=option, tensors=True))


def read_checkpoint_shapes(path: str | Path, *, option: str = "--resume") -> RunState:
    """What `load_checkpoint` gives, with every tensor on the meta device (saved shape and
    dtype): for a directory, no tensor is read; to check a checkpoint fits a model."""
    path = Path(path)
    saved = _checked(path, _read(path, option=option, tensors=False))
    if path.is_file():
        saved.model = {
            name: value.to("meta") if isinstance(value, torch.Tensor) else value
            for name, value in saved.model.items()
        }
    return saved


def load_model_state(
    path: str | Path, *, option: str = "CHECKPOINT", ema: bool = False
) -> dict[str, Any]:
    """The model's state dict (full, plain tensors) of a checkpoint file or directory, or with
    `ema` its EMA weights' (a UserError naming `path` where it has none); of a directory only
    those tensors are read, not the optimizer states."""
    path = Path(path)
    if not path.is_dir():
        saved = load_checkpoint(path, option=option)
        if not ema:
            return saved.model
        if saved.ema is None:
            raise UserError(no_ema(path))
        return saved.ema.weights
    from trainer.state.sharded import EMA, read_sharded  # DCP: seconds to import; when needed

    part = EMA if ema else "model"
    read = read_sharded(path, parts=(part,))
    if ema and read.get(EMA) is None:
        raise UserError(no_ema(path))
    state = read[EMA]["weights"] if ema else read["model"]
    check, expected = _SHAPES["model"]
    if not check(state):
        raise UserError(f"{path}: not a trainer checkpoint: {part!r} is not {expected}")
    return state


def no_ema(path: str | Path) -> str:
    """--ema with a checkpoint that holds no EMA weights."""
    return (
        f"--ema: {path} holds no EMA weights (its run had no trainer.ema); leave out --ema "
        "to use the model's weights"
    )


def _read(path: Path, *, option: str, tensors: bool) -> dict[str, Any]:
    """The dict a checkpoint file or directory holds, optimizer states keyed by index."""
    if path.is_dir():
        from trainer.state.sharded import read_sharded  # DCP: seconds to import; when needed

        return _by_index(path, read_sharded(path, tensors=tensors))
    if not path.is_file():
        aside = files.moved_aside(path)
        hint = f" (a save was interrupted; the previous one is {aside})" if aside.exists() else ""
        raise UserError(f"{option}: no checkpoint at {str(path)!r}{hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=not tensors)
    except Exception as err:
        raise UserError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: not a trainer checkpoint (a {type(checkpoint).__name__})")
    return checkpoint


def _by_index(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A directory's optimizer states (keyed by parameter name) keyed by index through the
    checkpoint's groups manifest; what does not fit is a UserError naming the optimizer."""
    states, groups = checkpoint.get("optimizers"), checkpoint.get("groups")
    if not (
        isinstance(states, dict)
        and isinstance(groups, dict)
        and _groups(groups)
        and set(groups) == set(states)
    ):
        return checkpoint  # the checks name what is wrong
    keyed = {}
    for name, state in states.items():
        if isinstance(state, dict) and "param_groups" in state:
            # DCP keeps a dict's leaves: an optimizer saved before its first step (no state
            # yet) comes back without its empty `state`.
            state = {"state": {}, **state}
        if not _optimizer_state(state):
            return checkpoint
        try:
            keyed[name] = optimizer_state_by_index(state, groups[name])
        except ValueError as err:
            raise UserError(
                f"{path}: not a trainer checkpoint: optimizer {name!r}'s state does not fit "
                f"its groups: {err}"
            ) from None
    return checkpoint | {"optimizers": keyed}


def _checked(path: Path, checkpoint: dict[str, Any]) -> RunState:
    """The RunState of a read checkpoint dict, upgraded; a UserError naming what is wrong."""
    checkpoint = upgrade(checkpoint)
    missing = [key for key in KEYS if key not in checkpoint]
    if missing:
        raise UserError(f"{path}: not a trainer checkpoint (missing {', '.join(missing)})")
    problems = checkpoint_problems(checkpoint)
    if problems:
        raise UserError([f"{path}: not a trainer checkpoint: {problem}" for problem in problems])
    return RunState.from_checkpoint(checkpoint)


def checkpoint_problems(checkpoint: dict[str, Any]) -> list[str]:
    """One line per key whose value has the wrong type or shape, naming the key and value."""
    problems = []
    for key, (check, expected) in _SHAPES.items():
        if key in checkpoint and not check(checkpoint[key]):
            problems.append(f"{key!r} is {_echo(checkpoint[key])}; expected {expected}")
    names = checkpoint.get("optimizers")
    if isinstance(names, dict):
        for key in BY_OPTIMIZER:
            keyed = checkpoint.get(key)
            if isinstance(keyed, dict) and set(keyed) != set(names):
                problems.append(
                    f"{key!r} is keyed by {sorted(keyed)}; expected the names in 'optimizers' "
                    f"({sorted(names)})"
                )
    ema, model = checkpoint.get("ema"), checkpoint.get("model")
    ema_names = set(ema["weights"]) if isinstance(ema, dict) and _ema(ema) else None
    names = set(model) if isinstance(model, dict) and _model_state(model) else None
    if ema_names is not None and names is not None and ema_names != names:
        problems.append("'ema' weights are keyed unlike 'model'; expected the same names")
    return problems


def _echo(value: object) -> str:
    """A short repr and the type of a value, for an error message."""
    return f"{reprlib.repr(value)} ({type(value).__name__})"


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_dict(value: object) -> bool:
    return isinstance(value, dict)


def _dict_of(value: object, check: Callable[[Any], bool]) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and check(v) for k, v in value.items()
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _model_state(value: object) -> bool:
    """A Module.state_dict(): tensors, and whatever a module's get_extra_state() returns."""
    return isinstance(value, dict) and all(
        isinstance(key, str) and (isinstance(v, torch.Tensor) or key.endswith("_extra_state"))
        for key, v in value.items()
    )


def _optimizer_state(value: object) -> bool:
    """An Optimizer.state_dict(): its `state` dict and a list of `param_groups` with params."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("state"), dict)
        and isinstance(value.get("param_groups"), list)
        and all(
            isinstance(group, dict) and isinstance(group.get("params"), list)
            for group in value["param_groups"]
        )
    )


def _rng(value: object) -> bool:
    """What rng_state() saves."""
    if not isinstance(value, dict):
        return False
    numpy, python = value.get("numpy"), value.get("python")
    return (
        isinstance(value.get("torch"), torch.Tensor)
        and value["torch"].dtype == torch.uint8
        and isinstance(value.get("cuda"), list)
        and all(isinstance(state, torch.Tensor) for state in value["cuda"])
        and isinstance(numpy, dict)
        and isinstance(numpy.get("name"), str)
        and isinstance(numpy.get("keys"), torch.Tensor)
        and all(_number(numpy.get(k)) for k in ("position", "has_gauss", "cached"))
        and isinstance(python, dict)
        and isinstance(python.get("version"), int)
        and isinstance(python.get("internal"), list)
        and all(isinstance(n, int) for n in python["internal"])
        and _optional(_number)(python.get("gauss_next"))
    )


def _best(value: object) -> bool:
    return isinstance(value, dict) and (
        isinstance(value.get("monitor"), str)
        and value.get("mode") in ("min", "max")
        and _optional(_number)(value.get("value"))
        and _count(value.get("epoch"))
    )


def _early_stopping(value: object) -> bool:
    return (
        isinstance(value, dict)
        and _optional(_number)(value.get("best"))
        and _count(value.get("bad_epochs"))
    )


def _ema(value: object) -> bool:
    return value is None or (
        isinstance(value, dict)
        and _model_state(value.get("weights"))
        and _count(value.get("updates"))
        and _number(value.get("decay"))
        and _count(value.get("every_steps"))
        and _optional(_ema_warmup)(value.get("warmup"))
    )


def _ema_warmup(value: object) -> bool:
    """trainer.ema.warmup as saved: {power, gamma}, both numbers."""
    return isinstance(value, dict) and _dict_of(value, _number) and set(value) == {"power", "gamma"}


def _groups(value: object) -> bool:
    """optimizer name -> group name -> parameter names."""
    return _dict_of(value, lambda groups: _dict_of(groups, _names))


_SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_model_state, "a state_dict (parameter name -> tensor)"),
    "optimizers": (
        lambda value: _dict_of(value, _optimizer_state) and bool(value),
        "optimizer name -> optimizer state_dict",
    ),
    "schedulers": (
        lambda value: _dict_of(value, _optional(_is_dict)),
        "optimizer name -> null or a scheduler state_dict",
    ),
    "scalers": (
        lambda value: _dict_of(value, _optional(_is_dict)),
        "optimizer name -> null or a GradScaler state_dict",
    ),
    "updates": (lambda value: _dict_of(value, _count), "optimizer name -> optimizer steps taken"),
    "groups": (_groups, "optimizer name -> group name -> parameter names"),
    "epoch": (_count, "a whole number >= 0 (epochs completed)"),
    "step": (_count, "a whole number >= 0 (training steps)"),
    "batch_in_epoch": (_count, "a whole number >= 0"),
    "samples_in_epoch": (_count, "a whole number >= 0"),
    "epoch_sums": (lambda value: _dict_of(value, _number), "metric name -> number"),
    "epoch_counted": (_count, "a whole number >= 0"),
    "rng": (_rng, "the RNG states (torch, cuda, numpy, python) that trainer saves"),
    "rng_per_rank": (
        lambda value: isinstance(value, list) and bool(value) and all(map(_rng, value)),
        "a list of RNG states, one per rank",
    ),
    "config": (_is_dict, "the resolved config (a dict)"),
    "metrics": (_is_dict, "a dict of the last epoch's metrics"),
    "best": (_optional(_best), "null or a dict of monitor, mode, value and epoch"),
    "early_stopping": (_optional(_early_stopping), "null or a dict of best and bad_epochs"),
    "ema": (_ema, "null or a dict of weights (a state_dict), updates, decay, every_steps, warmup"),
}


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, in weights_only-loadable types."""
    state = np.random.get_state()
    if isinstance(state, dict):  # np.random.set_bit_generator() put in another than MT19937
        raise TypeError(f"numpy's global RNG is a {state['bit_generator']}, not MT19937")
    name, keys, position, has_gauss, cached = state
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoints(
    directory: Path, state: RunState, policy: CheckpointConfig, *, is_best: bool
) -> None:
    """last.pt always; epoch-NNNN.pt per `every_epochs`, pruned to `keep_last`; best.pt."""
    directory.mkdir(parents=True, exist_ok=True)
    files.clean(directory)  # one writer per run: leftovers are a killed save's
    save_checkpoint(directory / "last.pt", state.to_checkpoint())
    _copies(directory, state, policy, is_best=is_best)


def save_sharded_checkpoints(
    directory: Path, state: RunState, policy: CheckpointConfig, *, is_best: bool
) -> None:
    """Collective (every rank of the process group calls it): what save_checkpoints writes,
    each checkpoint a directory (see trainer.state.sharded). On every rank `state.model` is
    this rank's model state dict (get_model_state_dict of the sharded model) and each
    `state.optimizers[name].optimizer` its get_optimizer_state_dict (keyed by parameter name);
    the other fields matter on rank 0 only. A kill -9 at any moment leaves the previous
    last.pt loadable (or its moved-aside copy, which the next save puts back); a failed
    write is a TrainingError on every rank."""
    from trainer.state.sharded import EMA, TENSOR_KEYS, save_sharded

    checkpoint = state.to_checkpoint()
    tensors = {key: checkpoint.pop(key) for key in TENSOR_KEYS}
    if checkpoint["ema"] is not None:  # its weights (this rank's shards) into the DCP files
        ema = checkpoint["ema"] = dict(checkpoint["ema"])
        tensors[EMA] = ema.pop("weights")

    def prepare() -> None:  # on rank 0, before any rank writes
        directory.mkdir(parents=True, exist_ok=True)
        files.clean(directory)

    save_sharded(
        directory / "last.pt",
        tensors,
        checkpoint,
        prepare=prepare,
        then=lambda: _copies(directory, state, policy, is_best=is_best),
    )


def full_to_sharded(
    model: torch.nn.Module, optimizers: Mapping[str, torch.optim.Optimizer], saved: RunState
) -> None:
    """Collective: a full checkpoint's states (`load_checkpoint` of a .pt, the same on every
    rank) loaded into a sharded `model` and its `optimizers` (by name); each optimizer state
    keyed by parameter name through the checkpoint's groups manifest first."""
    from trainer.state.sharded import load_full_states

    load_full_states(
        model,
        optimizers,
        saved.model,
        {
            name: optimizer_state_by_name(state.optimizer, state.groups)
            for name, state in saved.optimizers.items()
            if name in optimizers
        },
    )


def _copies(directory: Path, state: RunState, policy: CheckpointConfig, *, is_best: bool) -> None:
    """best.pt and epoch-NNNN.pt as copies of the last.pt just written; old epochs pruned."""
    last = directory / "last.pt"
    epoch = state.position.epoch
    if is_best:
        files.copy(last, directory / "best.pt")
    if (
        policy.every_epochs
        and epoch % policy.every_epochs == 0
        and state.position.batch_in_epoch == 0
    ):
        files.copy(last, directory / f"epoch-{epoch:04d}.pt")
        if policy.keep_last is not None:
            kept = sorted(directory.glob("epoch-*.pt"))
            for old in kept[: max(len(kept) - policy.keep_last, 0)]:
                files.remove(old)
