"""Checkpoints: plain dicts of tensors and numbers, written atomically, read with weights_only."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import UserError

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


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same directory, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        torch.save(checkpoint, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


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
    missing = [key for key in KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(f"{path}: not a trainer checkpoint (missing {', '.join(missing)})")
    return checkpoint


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
    }


def save_checkpoints(
    directory: Path, checkpoint: dict[str, Any], policy: Any, *, is_best: bool
) -> None:
    """last.pt always; epoch-NNNN.pt per `every_epochs`, pruned to `keep_last`; best.pt."""
    last = directory / "last.pt"
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
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, target)
