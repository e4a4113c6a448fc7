"""Sharded checkpoints: the checkpoint layout stored as a directory by every rank with
torch.distributed.checkpoint (DCP), and the optimizer states keyed by parameter name.

A sharded checkpoint keeps its name (`last.pt`, `best.pt`, `epoch-0003.pt`) and is a
directory holding:

- DCP files (`.metadata`, `__<rank>_<n>.distcp`): `{"model": <model state dict>,
  "optimizers": {<optimizer name>: <its state keyed by parameter name (FQN), as
  get_optimizer_state_dict gives it>}}`, and with trainer.ema `"ema": <the EMA weights by
  the model's names>`, each rank's shards written by that rank;
- `trainer.pt` (torch.save, weights_only-loadable): every other key of the layout (`ema`
  without its weights), and `"sharded": {"world_size": N}`, the marker of a sharded
  checkpoint.

A `.pt` file holds optimizer states keyed by parameter index (Optimizer.state_dict()); the
checkpoint's `groups` manifest maps one to the other (trainer.state.optimizer_keys).

What this module does (checkpoint.py, the owner of the layout, builds on it):
- `save_sharded(path, tensors, rest, then=...)`: collective; written under a temporary
  directory, put in place by renames (files.put_in_place).
- `read_sharded(path, tensors=True)`: the layout dict in one process, without a process
  group (full plain tensors; with tensors=False, tensors on the meta device with the saved
  shapes and dtypes, nothing of them read).
- `load_sharded_states(path, model, optimizers)`: collective; the states of a directory
  into a built (sharded or not) model and its optimizers, resharded to this world size.
- `load_full_states(model, optimizers, model_state, optimizer_states)`: collective; full
  (unsharded) states, optimizer states keyed by name, into a sharded model and optimizers.

Reading never unpickles arbitrary objects: `.metadata` is read with an unpickler that admits
DCP's own metadata classes only, and the non-tensor values with weights_only=True.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    _EmptyStateDictLoadPlanner,
)
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from trainer.errors import TrainingError, UserError
from trainer.state import files

RUNNER_FILE = "trainer.pt"  # the layout's keys other than the tensors' (model, optimizers)
MARKER = "sharded"  # trainer.pt's key: {"world_size": N}
TENSOR_KEYS = ("model", "optimizers")  # what the DCP files hold
EMA = "ema"  # and, where trainer.pt's `ema` is not null, the EMA weights


# ---------------------------------------------------------------- writing (collective)


def save_sharded(
    path: Path,
    tensors: dict[str, Any],
    rest: dict[str, Any],
    *,
    prepare: Callable[[], None] = lambda: None,
    then: Callable[[], None] = lambda: None,
) -> None:
    """Write checkpoint directory `path`; every rank calls it with its shards in `tensors`
    (`rest`, and `then`, matter on rank 0). Rank 0 picks a temporary directory beside `path`,
    every rank writes its DCP files there (fsynced), rank 0 adds trainer.pt (`rest` and the
    marker), puts the directory in place (files.put_in_place) and runs `then` (the copies).
    A failed write on any rank is a TrainingError on every rank; `path` stays as it was."""
    rank = dist.get_rank()
    failure: BaseException | None = _failure(prepare) if rank == 0 else None
    chosen: list[Any] = [None]
    if rank == 0:
        refused = None if failure is None else str(files.write_error(path, failure))
        chosen = [(str(files.temporary_name(path)), refused)]
    dist.broadcast_object_list(chosen, src=0)  # rank 0's name, or why it could not start
    name, refused = chosen[0]
    if refused is not None:
        raise TrainingError(refused)
    temporary = Path(name)
    try:
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(temporary, sync_files=True))
    except CheckpointException as err:
        failure = _cause(err)
    if failure is None and rank == 0:
        failure = _finish(temporary, path, rest | {MARKER: {"world_size": dist.get_world_size()}})
        if failure is None:
            failure = _failure(then)
    if failure is not None and rank == 0:
        files.delete(temporary)
    outcome = [None if failure is None else str(files.write_error(path, failure))]
    dist.broadcast_object_list(outcome, src=0)  # rank 0 has seen every rank's failure
    if outcome[0] is not None:
        raise TrainingError(outcome[0])


def _finish(temporary: Path, path: Path, rest: dict[str, Any]) -> BaseException | None:
    """trainer.pt into the written directory, fsynced, and the directory put in place."""

    def finish() -> None:
        with open(temporary / RUNNER_FILE, "wb") as file:
            torch.save(rest, file)
            file.flush()
            os.fsync(file.fileno())
        files.fsync_dir(temporary)
        files.put_in_place(temporary, path)

    return _failure(finish)


def _failure(action: Callable[[], None]) -> BaseException | None:
    """What `action` failed with (the OSError beneath, where there is one); None when it did
    not. Caught whatever it is: rank 0 alone runs these, and the other ranks wait for its
    outcome, so nothing may leave rank 0 before the broadcast."""
    try:
        action()
    except TrainingError as err:
        return err
    except Exception as err:
        return files.os_error(err) or err
    return None


def _cause(err: CheckpointException) -> BaseException:
    """The first rank's exception inside a DCP CheckpointException."""
    for failure in err.failures.values():  # (exception, traceback) by rank
        if isinstance(failure, tuple) and isinstance(failure[0], BaseException):
            return failure[0]
    return err


# ---------------------------------------------------------------- reading (one process)


class _MetadataUnpickler(pickle.Unpickler):
    """Admits the classes DCP's .metadata is made of, nothing else."""

    MODULES = (
        "torch.distributed.checkpoint.metadata",
        "torch.distributed.checkpoint.filesystem",
        "torch.distributed.checkpoint.planner",
    )
    NAMES = frozenset(
        {
            ("torch", "Size"),
            ("torch.serialization", "_get_layout"),
            ("collections", "OrderedDict"),
            ("pathlib", "PosixPath"),
            ("pathlib", "WindowsPath"),
            ("pathlib", "PurePosixPath"),
            ("pathlib", "PureWindowsPath"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module in self.MODULES or (module, name) in self.NAMES or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")


class _Reader(dcp.FileSystemReader):
    """A FileSystemReader whose metadata is read with `_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with open(Path(self.path) / ".metadata", "rb") as file:
            metadata = _MetadataUnpickler(file).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"a {type(metadata).__name__}, not DCP metadata")
        storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


class _WeightsOnly(DefaultLoadPlanner):
    """Non-tensor values read with torch.load(weights_only=True)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class _WholeState(_WeightsOnly, _EmptyStateDictLoadPlanner):
    """The whole saved state rebuilt from the metadata, non-tensor values weights_only."""


def read_sharded(
    path: Path, *, tensors: bool = True, parts: tuple[str, ...] = (*TENSOR_KEYS, EMA)
) -> dict[str, Any]:
    """The checkpoint dict of directory `path` in this process (no process group): trainer.pt's
    keys, `model`, `optimizers` (states keyed by parameter name, as saved) and the EMA weights
    (`ema.weights`, where `ema` is not null), or of those only `parts`. With tensors=False
    every tensor is on the meta device (saved shape and dtype, nothing read). A UserError
    naming `path` when it is not a whole, readable checkpoint."""
    rest = _runner_part(path)
    if rest.get(EMA) is None:
        parts = tuple(part for part in parts if part != EMA)
    try:
        metadata = _Reader(path).read_metadata()
        state: dict[str, Any] = {}
        if tensors:
            planner = _WholeState(keys=set(parts))
            _load_state_dict(state, storage_reader=_Reader(path), planner=planner, no_dist=True)
        else:
            state = _meta_state(path, metadata)
    except FileNotFoundError as err:
        raise UserError(
            f"{path}: not a whole sharded checkpoint (no {Path(str(err.filename)).name})"
        ) from None
    except (Exception, CheckpointException) as err:  # CheckpointException: a BaseException
        cause = _cause(err) if isinstance(err, CheckpointException) else err
        raise UserError(
            f"{path}: not a readable sharded checkpoint ({type(cause).__name__}: "
            f"{str(cause).strip().splitlines()[0] if str(cause).strip() else ''})"
        ) from None
    missing = [key for key in parts if key not in state]
    if missing:
        raise UserError(f"{path}: not a trainer checkpoint (its DCP files lack {missing})")
    read = rest | {key: state[key] for key in parts}
    if EMA in parts and isinstance(rest[EMA], dict):
        read[EMA] = rest[EMA] | {"weights": state[EMA]}
    return read


def _runner_part(path: Path) -> dict[str, Any]:
    """trainer.pt of directory `path`: the layout's non-tensor keys and the marker."""
    runner = path / RUNNER_FILE
    if not runner.is_file():
        raise UserError(f"{path}: not a trainer checkpoint (a directory without {RUNNER_FILE})")
    try:
        rest = torch.load(runner, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{runner}: not readable ({type(err).__name__}: {err})") from None
    if not isinstance(rest, dict) or not isinstance(rest.get(MARKER), dict):
        raise UserError(f"{runner}: not a sharded trainer checkpoint (no {MARKER!r} marker)")
    return rest


def _meta_state(path: Path, metadata: Metadata) -> dict[str, Any]:
    """The saved state with meta tensors (shape and dtype from the metadata) and the
    non-tensor values (optimizer hyperparameters: a few bytes) read."""
    values = [
        key
        for key, item in metadata.state_dict_metadata.items()
        if not isinstance(item, TensorStorageMetadata)
    ]
    state: dict[str, Any] = {}
    if values:
        _load_state_dict(
            state,
            storage_reader=_Reader(path),
            planner=_WholeState(keys=set(values)),
            no_dist=True,
        )
    for key, item in metadata.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            tensor = torch.empty(item.size, dtype=item.properties.dtype, device="meta")
            set_element(state, metadata.planner_data[key], tensor)
    return state


# ---------------------------------------------------------------- loading into a run (collective)


def load_sharded_states(
    path: Path,
    model: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    ema: dict[str, torch.Tensor] | None = None,
) -> None:
    """Collective: the model and optimizer states of checkpoint directory `path` loaded into
    the built `model` (sharded with fully_shard, or not) and its `optimizers` (by name), and
    its EMA weights into `ema`'s tensors in place (where given: the checkpoint must hold
    them), at any world size (DCP reshards). Everything else the checkpoint holds:
    `read_sharded`."""
    _runner_part(path)
    state: dict[str, Any] = {
        "model": get_model_state_dict(model),
        "optimizers": {
            name: get_optimizer_state_dict(model, optimizer)
            for name, optimizer in optimizers.items()
        },
    }
    if ema is not None:
        state[EMA] = ema
    try:
        dcp.load(state, storage_reader=_Reader(path), planner=_WeightsOnly())
    except CheckpointException as err:
        cause = _cause(err)
        raise UserError(
            f"{path}: its states do not load into the run ({type(cause).__name__}: "
            f"{str(cause).strip().splitlines()[0] if str(cause).strip() else ''})"
        ) from None
    set_model_state_dict(model, state["model"])
    for name, optimizer in optimizers.items():
        set_optimizer_state_dict(model, optimizer, state["optimizers"][name])


def load_full_states(
    model: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    model_state: Mapping[str, Any],
    optimizer_states: Mapping[str, Mapping[str, Any]],
) -> None:
    """Collective: full (unsharded) states, the same on every rank, loaded into a sharded
    `model` and its `optimizers`; `optimizer_states` keyed by parameter name
    (optimizer_keys.optimizer_state_by_name). Each rank keeps its own shards."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, dict(model_state), options=options)
    for name, optimizer in optimizers.items():
        set_optimizer_state_dict(model, optimizer, dict(optimizer_states[name]), options=options)
