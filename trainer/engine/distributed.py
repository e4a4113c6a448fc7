"""torch.distributed under torchrun: one process per device, DDP, rank 0 prints and writes.

`torchrun --nproc_per_node=N -m trainer fit CONFIG` (or `trainer fit CONFIG --nproc N`)
sets WORLD_SIZE, RANK and LOCAL_RANK; without them everything here is a no-op.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

Shared = TypeVar("Shared")  # a picklable object sent between ranks


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # started by torchrun: a process group, even of one process

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place; the same tensor on one process."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is True on any (e.g. a stop request)."""
        return bool(self.most([int(flag)], device)[0])

    def most(self, values: list[int], device: torch.device) -> list[int]:
        """The largest of every rank's value, for each of `values` (one all-reduce; the
        values themselves on one process)."""
        if not self.enabled:
            return values
        largest = torch.tensor(values, device=device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return largest.tolist()

    def barrier(self) -> None:
        """Every rank waits here for the others (nothing on one process)."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (what the other ranks pass is dropped: often None)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Shared) -> list[Shared]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        boxes: list[Any] = [None] * self.world_size  # filled with every rank's object
        dist.all_gather_object(boxes, obj)
        return boxes


SINGLE = Distributed()


def from_environment() -> Distributed:
    """The torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK), or a single process."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return Distributed()
    return Distributed(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
        launched=True,
    )


def start(job: Distributed, device: torch.device, *, timeout_s: int, alone: bool = False) -> None:
    """init_process_group: nccl on CUDA (one device per local rank), gloo on CPU.

    A rank that stops answering ends every rank's collective after `timeout_s`, so a fault
    on one rank ends the job instead of hanging it. `alone`: a group of this one process
    when not under torchrun (fsdp runs the same code on one process as on many).
    """
    if dist.is_initialized() or not (job.enabled or alone):
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not job.enabled:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def stop() -> None:
    """destroy_process_group, if one was started; call it from a `finally:` block.

    After a run that succeeded, the ranks first meet at a barrier (so none tears its
    connections down while another still talks to it) and objects that hold the group (DDP's
    reducer, loader iterators) are collected while the interpreter is fully alive; gloo's
    threads outliving the group made rank 1 abort at exit ("terminate called without an
    active exception"). While an exception is in flight there is no barrier: a rank that
    failed must not wait for the others.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if sys.exc_info()[0] is None:
        dist.barrier()
        gc.collect()
    dist.destroy_process_group()


def launch(nproc: int, argv: list[str], *, shutdown_timeout_s: int) -> int:
    """`trainer fit ... --nproc N`: torchrun's elastic launcher on this machine.

    A SIGINT/SIGTERM reaches the launcher, which passes it on to the workers once (each in a
    session of its own) and waits up to `shutdown_timeout_s` for them to save; then 130. The
    workers stop too if this process dies (interrupt.stop_with_parent).
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from trainer.interrupt import PARENT_ENV

    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        torchrun(
            [
                "--standalone",
                f"--nproc_per_node={nproc}",
                f"--shutdown-timeout={shutdown_timeout_s}",
                "-m",
                "trainer",
                *argv,
            ]
        )
    except SignalException:  # the workers have saved (or were given up on): no traceback
        return 130
    except ChildFailedError as err:
        failures = err.failures
        codes = {failure.exitcode for failure in failures.values()}
        # Ranks that stopped together exit 130 after last.pt is written; one torchrun ended
        # (SIGTERM) as it saw the first of them leave was stopping anyway.
        ended = {-signal.SIGTERM, -signal.SIGINT}
        if 130 in codes and codes <= {130, *ended}:
            return 130
        # Bad input every rank finds (a regex checked against the built model): torchrun may
        # end a rank before it exits 2 itself.
        return 2 if 2 in codes and codes <= {2, *ended} else 1
    return 0
