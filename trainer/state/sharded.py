"""TEMPORARY stand-in (the helper's version replaces it)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def save_sharded_checkpoints(directory: Path, state: Any, policy: Any, *, is_best: bool) -> None:
    import torch.distributed.checkpoint as dcp

    ckpt = state.to_checkpoint()
    tensors = {"model": ckpt.pop("model"), "optimizers": ckpt.pop("optimizers")}
    target = directory / "last.pt"
    tmp = directory / ".last.pt.tmp"
    if dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save(tensors, checkpoint_id=str(tmp))
    if dist.get_rank() == 0:
        torch.save(ckpt, tmp / "trainer.pt")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    dist.barrier()


def full_to_sharded(model: Any, optimizers: dict, saved: Any) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, saved.model, options=options)
    for name, optimizer in optimizers.items():
        state = saved.optimizers[name]
        names = [p for group in state.groups.values() for p in group]
        osd = state.optimizer
        by_name = {
            "state": {names[i]: v for i, v in osd["state"].items()},
            "param_groups": [
                dict(g, params=[names[i] for i in g["params"]]) for g in osd["param_groups"]
            ],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=options)
