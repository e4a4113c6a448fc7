"""Checkpoints: plain dicts of tensors and numbers, written atomically, read with weights_only."""

from __future__ import annotations

import contextlib
import os
import random
import reprlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import TrainingError, UserError

KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "step",
    "batch_in_epoch",
    "rng",
    "config",
    "groups",
    "metrics",
    "best",
)
# One optimizer's states are saved under these keys; several optimizers' under the plural
# keys, each a dict by optimizer name.
ONE_OPTIMIZER = ("optimizer", "scheduler", "scaler")
SEVERAL_OPTIMIZERS = ("optimizers", "schedulers", "scalers")


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename); a failed write leaves `path` as it
    was and no temporary file, and is a TrainingError."""
    with _writing(path) as temporary:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_dir(path.parent)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, unique to this writer (pid and a random suffix);
    removed, and the OSError turned into a one-line TrainingError, if the block fails."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
    except (OSError, RuntimeError) as err:
        cause = _os_error(err)  # torch.save reports a failed write as a RuntimeError
        if cause is None:
            raise
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise TrainingError(
            f"could not write {path}: {cause.strerror or cause}; the checkpoints written "
            "before are intact"
        ) from None


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError that `err` is, or that it was raised while handling."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, *, option: str = "--resume") -> dict[str, Any]:
    """A checkpoint read with weights_only=True; a UserError if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option}: no checkpoint at {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: not a trainer checkpoint (a {type(checkpoint).__name__})")
    several = checkpoint.get("optimizers") is not None
    required = [key for key in KEYS if not (several and key in ONE_OPTIMIZER)]
    required += list(SEVERAL_OPTIMIZERS) if several else []
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise UserError(f"{path}: not a trainer checkpoint (missing {', '.join(missing)})")
    problems = checkpoint_problems(checkpoint)
    if problems:
        raise UserError([f"{path}: not a trainer checkpoint: {problem}" for problem in problems])
    return checkpoint


def checkpoint_problems(checkpoint: dict[str, Any]) -> list[str]:
    """One line per key whose value has the wrong type or shape, naming the key and value."""
    several = checkpoint.get("optimizers") is not None
    unused = ONE_OPTIMIZER if several else SEVERAL_OPTIMIZERS  # may be there, as None
    problems = []
    for key, (check, expected) in _SHAPES.items():
        value = checkpoint.get(key)
        if key in unused and value is None:
            continue
        if key in checkpoint and not check(value):
            problems.append(f"{key!r} is {_echo(checkpoint[key])}; expected {expected}")
    names = checkpoint.get("optimizers")
    if isinstance(names, dict):
        for key in SEVERAL_OPTIMIZERS[1:]:
            keyed = checkpoint.get(key)
            if isinstance(keyed, dict) and set(keyed) != set(names):
                problems.append(
                    f"{key!r} is keyed by {sorted(keyed)}; expected the names in 'optimizers' "
                    f"({sorted(names)})"
                )
    return problems


def _echo(value: Any) -> str:
    """A short repr and the type of a value, for an error message."""
    return f"{reprlib.repr(value)} ({type(value).__name__})"


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _dict_of(value: Any, check: Callable[[Any], bool]) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and check(v) for k, v in value.items()
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _model_state(value: Any) -> bool:
    """A Module.state_dict(): tensors, and whatever a module's get_extra_state() returns."""
    return isinstance(value, dict) and all(
        isinstance(key, str) and (isinstance(v, torch.Tensor) or key.endswith("_extra_state"))
        for key, v in value.items()
    )


def _optimizer_state(value: Any) -> bool:
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


def _rng(value: Any) -> bool:
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


def _best(value: Any) -> bool:
    return isinstance(value, dict) and (
        isinstance(value.get("monitor"), str)
        and value.get("mode") in ("min", "max")
        and _optional(_number)(value.get("value"))
        and _count(value.get("epoch"))
    )


def _early_stopping(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _optional(_number)(value.get("best"))
        and _count(value.get("bad_epochs"))
    )


def _groups(value: Any) -> bool:
    """group -> parameter names; with several optimizers, optimizer -> that."""
    return _dict_of(value, _names) or _dict_of(value, lambda groups: _dict_of(groups, _names))


_SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_model_state, "a state_dict (parameter name -> tensor)"),
    "optimizer": (
        _optimizer_state,
        "an optimizer state_dict (a 'state' dict and a 'param_groups' list)",
    ),
    "optimizers": (
        lambda value: _dict_of(value, _optimizer_state) and bool(value),
        "optimizer name -> optimizer state_dict",
    ),
    "scheduler": (_optional(_is_dict), "null or a scheduler state_dict"),
    "schedulers": (lambda value: _dict_of(value, _optional(_is_dict)), "name -> null or dict"),
    "scaler": (_optional(_is_dict), "null or a GradScaler state_dict"),
    "scalers": (lambda value: _dict_of(value, _optional(_is_dict)), "name -> null or dict"),
    "epoch": (_count, "a whole number >= 0 (epochs completed)"),
    "step": (_count, "a whole number >= 0 (training steps)"),
    "batch_in_epoch": (_count, "a whole number >= 0"),
    "samples_in_epoch": (_optional(_count), "null or a whole number >= 0"),
    "epoch_loss": (_number, "a number"),
    "epoch_sums": (lambda value: _dict_of(value, _number), "metric name -> number"),
    "epoch_counted": (_count, "a whole number >= 0"),
    "rng": (_rng, "the RNG states (torch, cuda, numpy, python) that trainer saves"),
    "rng_per_rank": (
        _optional(lambda value: isinstance(value, list) and all(map(_rng, value))),
        "null or a list of RNG states, one per rank",
    ),
    "config": (_is_dict, "the resolved config (a dict)"),
    "groups": (_groups, "group name -> parameter names"),
    "metrics": (_is_dict, "a dict of the last epoch's metrics"),
    "best": (_optional(_best), "null or a dict of monitor, mode, value and epoch"),
    "early_stopping": (_optional(_early_stopping), "null or a dict of best and bad_epochs"),
    "updates": (
        _optional(lambda value: _dict_of(value, _count)),
        "null or optimizer name -> optimizer steps taken",
    ),
}


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, in weights_only-loadable types."""
    name, keys, position, has_gauss, cached = np.random.get_state()
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


def make_checkpoint(
    *,
    model: torch.nn.Module,
    optimizers: dict[str, dict[str, Any]],
    epoch: int,
    step: int,
    batch_in_epoch: int,
    epoch_sums: dict[str, float],
    epoch_counted: int,
    samples_in_epoch: int | None = None,
    rngs: list[dict[str, Any]] | None = None,
    config: Any,
    groups: dict[str, Any],
    metrics: dict[str, Any],
    best: dict[str, Any] | None,
    early_stopping: dict[str, Any] | None = None,
    updates: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict: every key of KEYS, nothing that needs pickle to load.

    `optimizers` is `Optimizers.state()`: one optimizer is saved under `optimizer`,
    `scheduler` and `scaler`; several under `optimizers`, `schedulers` and `scalers`, by name.
    """
    several = len(optimizers["optimizers"]) > 1
    states = dict.fromkeys(("optimizer", "scheduler", "scaler"))
    if several:
        states |= optimizers
    else:
        states |= {key: next(iter(optimizers[key + "s"].values())) for key in states}
    return {
        "model": model.state_dict(),
        **states,
        "epoch": epoch,
        "step": step,
        "batch_in_epoch": batch_in_epoch,
        "samples_in_epoch": samples_in_epoch,
        "epoch_loss": epoch_sums.get("loss", 0.0),
        "epoch_sums": dict(epoch_sums),
        "epoch_counted": epoch_counted,
        "rng": rngs[0] if rngs else rng_state(),
        "rng_per_rank": rngs or None,
        "config": config.to_dict(),
        "groups": groups,
        "metrics": dict(metrics),
        "best": best,
        "early_stopping": early_stopping,
        "updates": updates,
    }


def save_checkpoints(
    directory: Path, checkpoint: dict[str, Any], policy: Any, *, is_best: bool
) -> None:
    """last.pt always; epoch-NNNN.pt per `every_epochs`, pruned to `keep_last`; best.pt."""
    last = directory / "last.pt"
    for leftover in directory.glob(".*.tmp"):  # one writer per run: a .tmp is a killed one's
        leftover.unlink(missing_ok=True)
    save_checkpoint(last, checkpoint)
    epoch = checkpoint["epoch"]
    if is_best:
        _atomic_copy(last, directory / "best.pt")
    if (
        policy.every_epochs
        and epoch % policy.every_epochs == 0
        and checkpoint["batch_in_epoch"] == 0
    ):
        _atomic_copy(last, directory / f"epoch-{epoch:04d}.pt")
        if policy.keep_last is not None:
            kept = sorted(directory.glob("epoch-*.pt"))
            for old in kept[: max(len(kept) - policy.keep_last, 0)]:
                old.unlink()


def _atomic_copy(source: Path, target: Path) -> None:
    with _writing(target) as temporary:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, target)
