"""Device choice (`trainer.device`) and mixed precision (`trainer.precision`)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from trainer.errors import UserError

Batch = Any  # whatever the loader yields, on the device: `(inputs, targets)` for most datasets


def pick_device(
    requested: str, *, local_rank: int = 0, world_size: int = 1
) -> tuple[torch.device, str]:
    """The device to train on and the reason it was chosen.

    Under torchrun (`world_size` > 1), `auto` and `cuda` mean the GPU of this process's
    LOCAL_RANK; `cuda:N` would put every process on one GPU, so it is an error.
    """
    if world_size > 1 and requested.startswith("cuda:"):
        raise UserError(
            f"trainer.device: {requested!r} under torchrun puts every process on "
            "one GPU; use cuda or auto (each process takes its LOCAL_RANK's GPU)"
        )
    if world_size > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        return device, f"{requested}: the CUDA device of LOCAL_RANK {local_rank}"
    if requested == "auto":
        if torch.cuda.is_available():
            reason = f"auto: CUDA is available ({torch.cuda.get_device_name()})"
            return torch.device("cuda", torch.cuda.current_device()), reason
        if torch.backends.mps.is_available():
            return torch.device("mps"), "auto: no CUDA, MPS is available"
        return torch.device("cpu"), "auto: no CUDA or MPS device found"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"trainer.device: {requested!r} but CUDA is not available here "
                "(torch.cuda.is_available() is False); use auto or cpu"
            )
        if device.index is None:  # `cuda`: the current device, by its index (set_device needs one)
            device = torch.device("cuda", torch.cuda.current_device())
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"trainer.device: {requested!r} but only {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device: {requested!r} but MPS is not available; use auto or cpu")
    return device, "set by trainer.device"


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Reject precision/device pairs that cannot work, saying what to use instead."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(
            f"trainer.precision: fp16 needs a CUDA device (found {device.type}); "
            "use bf16 or fp32 here"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("trainer.precision: this CUDA device lacks bf16; use fp16 or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's autocast context, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (disabled it is a pass-through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def to_device(batch: Batch, device: torch.device, *, channels_last: bool = False) -> Batch:
    """Tensors of a batch (a tensor, or a tuple, list or dict of them) on the device."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        if not channels_last:
            return type(batch)([to_device(item, device) for item in batch])
        first, *rest = batch
        moved = [to_device(item, device) for item in rest]
        return type(batch)([to_device(first, device, channels_last=True), *moved])
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def batch_size(batch: Batch) -> int:
    """Samples in a batch: the length of its first tensor (of a tuple, list or dict)."""
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return first.shape[0]
