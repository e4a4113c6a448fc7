"""Sharded checkpoints in gloo process groups: a tiny FSDP2 model with AdamW in two param
groups, its RunState, and the jobs the tests spawn (save, load, full -> sharded).

Run as a script (`python -m helpers.sharded DIR SEED KILL STORE`), it saves sharded
checkpoints (last, best, epoch-SEED) in a one-process group and SIGKILLs itself at the
KILL-th call of os.rename or os.fsync (`rename:3`, `fsync:2`): a kill -9 at that moment.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from trainer.config import CheckpointConfig
from trainer.state.checkpoint import (
    OptimizerState,
    Position,
    RunState,
    full_to_sharded,
    load_checkpoint,
    rng_state,
    save_sharded_checkpoints,
)
from trainer.state.sharded import load_sharded_states

GROUPS = {"decay": ["0.weight", "2.weight"], "no_decay": ["0.bias", "2.bias"]}
NAME = "adamw"
POLICY = CheckpointConfig(every_epochs=1, keep_last=2)


def tiny(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def adamw(model: nn.Module) -> torch.optim.AdamW:
    """AdamW over the model's parameters in GROUPS' order (the manifest's order)."""
    params = dict(model.named_parameters())
    decay, no_decay = ([params[n] for n in GROUPS[g]] for g in ("decay", "no_decay"))
    return torch.optim.AdamW(
        [
            {"params": decay, "name": "decay"},
            {"params": no_decay, "name": "no_decay", "weight_decay": 0.0},
        ],
        lr=0.1,
    )


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """`steps` AdamW steps on one fixed batch (the same on every rank)."""
    inputs = torch.linspace(-1, 1, 8 * 4).reshape(8, 4)
    for _ in range(steps):
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()


def sharded(seed: int, world_size: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """tiny(seed) with each Linear and the root under fully_shard, and its AdamW."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = tiny(seed)
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, adamw(model)


def run_state(model: nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int) -> RunState:
    """This rank's RunState of a (sharded) model: get_model_state_dict and the optimizer's
    state keyed by parameter name, as the runner saves under fsdp."""
    return RunState(
        model=get_model_state_dict(model),
        position=Position(epoch=epoch, step=3 * epoch),
        optimizers={
            NAME: OptimizerState(
                optimizer=get_optimizer_state_dict(model, optimizer),
                scheduler=None,
                scaler={},
                updates=3 * epoch,
                groups=GROUPS,
            )
        },
        rngs=[rng_state()],
        config={"name": "tiny"},
        metrics={"epoch": epoch, "val/loss": 0.5},
    )


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full (gathered) model and optimizer states, keyed by name, on every rank."""
    options = StateDictOptions(full_state_dict=True)
    return {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
    }


def job(rank: int, world_size: int, store: str, tasks: list[tuple[str, ...]]) -> None:
    """One rank of a gloo job doing `tasks` in turn:
    - ("save", DIR): tiny(0) sharded, 3 steps, save_sharded_checkpoints into DIR (epoch 1,
      best), and (rank 0) its full states to DIR/full.pt;
    - ("load", CKPT, OUT): tiny(7) sharded, load_sharded_states(CKPT), full states to OUT;
    - ("full", PT, OUT): tiny(7) sharded, full_to_sharded(load_checkpoint(PT)), to OUT.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        for task, *paths in tasks:
            model, optimizer = sharded(0 if task == "save" else 7, world_size)
            if task == "save":
                train(model, optimizer, 3)
                state = run_state(model, optimizer, epoch=1)
                save_sharded_checkpoints(Path(paths[0]), state, POLICY, is_best=True)
                out = Path(paths[0], "full.pt")
            elif task == "load":
                load_sharded_states(Path(paths[0]), model, {NAME: optimizer})
                out = Path(paths[1])
            else:
                full_to_sharded(model, {NAME: optimizer}, load_checkpoint(paths[0]))
                out = Path(paths[1])
            full = full_states(model, optimizer)
            if rank == 0:
                torch.save(full, out)
    finally:
        dist.destroy_process_group()


def spawn(world_size: int, store: Path, *tasks: tuple[str | Path, ...]) -> None:
    """`job` on `world_size` spawned processes (store: a fresh file for the gloo rendezvous)."""
    torch.multiprocessing.spawn(
        job,
        args=(world_size, str(store), [tuple(map(str, task)) for task in tasks]),
        nprocs=world_size,
        join=True,
    )


def kill_at(spec: str) -> None:
    """SIGKILL this process at the N-th call of os.rename or os.fsync (`rename:N`)."""
    name, count = spec.split(":")
    original, calls = getattr(os, name), 0

    def deadly(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(os, name, deadly)


def save_one(directory: Path, seed: int, *, is_best: bool = False) -> None:
    """Save tiny(seed) after one step (its weights tell which save a checkpoint is) as
    sharded checkpoints (every epoch, best) in the one-process group already started."""
    model = tiny(seed)
    optimizer = adamw(model)
    train(model, optimizer, 1)
    save_sharded_checkpoints(
        directory, run_state(model, optimizer, epoch=seed), POLICY, is_best=is_best
    )


def main(directory: str, seed: str, kill: str, store: str) -> None:
    """`save_one` in a one-process group of its own, killed at `kill`."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    kill_at(kill)
    save_one(Path(directory), int(seed), is_best=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
