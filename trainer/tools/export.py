"""`trainer export`: a checkpoint's model weights as one file that needs no runner.

`.safetensors` (the optional `safetensors` package) or `.pt` (a plain state_dict, loadable
with torch.load(weights_only=True)), from a .pt checkpoint or a sharded checkpoint directory
alike; with `ema` the checkpoint's EMA weights (trainer.ema) instead.
`prefix` keeps only the keys that start with it, without it (`module.`, `generator.`);
an OUT that exists is replaced only with `force`. Written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserError
from trainer.state import files
from trainer.state.checkpoint import load_model_state

FORMATS = (".safetensors", ".pt")


def export_weights(
    checkpoint: str, out: str, *, prefix: str | None, force: bool, ema: bool = False
) -> str:
    """Write `checkpoint`'s model weights (with `ema`, its EMA weights, by the same names) to
    `out`; the line saying what was written. A UserError (before anything is read) for a bad
    OUT, and for a prefix no key has or a checkpoint without the EMA weights asked for."""
    target = Path(out)
    if target.suffix not in FORMATS:
        raise UserError(
            f"OUT: {out!r} has the suffix {target.suffix or '(none)'!r}; expected "
            f"{' or '.join(FORMATS)}"
        )
    if target.exists() and not force:
        raise UserError(f"OUT: {out!r} exists; --force to replace it")
    if target.suffix == ".safetensors":
        save_file = _safetensors_save_file()
    weights = _tensors(load_model_state(checkpoint, option="CHECKPOINT", ema=ema))
    if prefix is not None:
        weights = _stripped(weights, prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    with files.writing(target) as temporary:
        if target.suffix == ".safetensors":
            save_file(_unshared(weights), str(temporary))
        else:
            torch.save(weights, temporary)
        files.fsync_file(temporary)
        files.put_in_place(temporary, target)
    which = " (the EMA weights)" if ema else ""
    return f"wrote {out}{which}: {len(weights)} tensors, {os.path.getsize(target)} bytes"


def _tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict's tensors (a module's `_extra_state` is not weights, and not a tensor)."""
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def _stripped(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The keys that start with `prefix`, without it; a UserError when none does."""
    kept = {name[len(prefix) :]: t for name, t in weights.items() if name.startswith(prefix)}
    if not kept:
        examples = ", ".join(list(weights)[:3])
        raise UserError(
            f"--prefix: no key of the checkpoint's model starts with {prefix!r} "
            f"(its keys: {examples}{', ...' if len(weights) > 3 else ''})"
        )
    return kept


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor contiguous with memory of its own (safetensors refuses shared memory, such
    as tied weights: each name gets its copy)."""
    seen: set[int] = set()
    unshared = {}
    for name, tensor in weights.items():
        pointer = tensor.untyped_storage().data_ptr()
        unshared[name] = tensor.contiguous() if pointer not in seen else tensor.clone()
        seen.add(pointer)
    return unshared


def _safetensors_save_file() -> Any:
    """safetensors.torch.save_file (an optional extra); exit 2 naming it when missing."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError(
            "OUT: a .safetensors file needs safetensors, an optional extra: "
            "`uv sync --extra safetensors` or `pip install 'trainer[safetensors]'`"
        ) from None
    return save_file
