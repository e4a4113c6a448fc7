"""Sharding benchmark: `tiny_gpt` on `markov_text` under 2 processes (gloo, CPU), four cases.

    ddp      `trainer fit CONFIG --nproc 2`, trainer.strategy: ddp
    fsdp     the same with trainer.strategy: fsdp, fsdp.units ['^blocks\\.\\d+$']
    fsdp+ac  fsdp, and trainer.activation_checkpointing ['^blocks\\.\\d+$']
    fsdp2    a hand-written FSDP2 loop under torchrun: fully_shard per block then the root,
             AdamW with the config's param groups, the runner's data order and batch,
             forward / backward / step / zero_grad; no runner

The cases alternate over rounds (the order rotates each round). Per case and rank it prints:

- state: bytes of parameters + gradients + optimizer state this rank holds (local shards:
  DTensor.to_local()), measured just before the 3rd optimizer step, on the run's own model and
  optimizer (the runner cases name this file's `probed_gpt` as their model: a tiny_gpt whose
  builder registers a global optimizer step pre-hook and measures; nothing in the runner
  changes);
- activations: bytes of the tensors autograd saves for backward during the 3rd training
  forward (torch.autograd.graph.saved_tensors_hooks; each storage once; parameters and their
  views left out; with activation checkpointing only what the checkpoint keeps, the block
  inputs, is seen: the recomputed tensors are not held);
- peak: on CUDA torch.cuda.max_memory_allocated; on CPU state + activations (what the ranks
  hold at the end of a forward; not counted: FSDP's transient all-gathered unit, DDP's
  gradient buckets, the loss's own saved tensors);
- samples/s: the median over epochs (all rounds) of train/samples_per_s (the runner's metric:
  samples of the epoch's steps x world size / the epoch's training time), the same definition
  for the hand-written loop.

    uv run python scripts/bench_fsdp.py [--rounds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.components.language import TinyGPT

SCRIPTS = Path(__file__).resolve().parent
OUT_ENV = "BENCH_FSDP_OUT"  # where each rank writes its measurements (JSON)
MEASURED = 3  # the training forward and optimizer step measured (Adam's state exists by then)
UNITS = r"^blocks\.\d+$"
WORLD = 2
MODEL = {"vocab_size": 16, "dim": 128, "depth": 4, "heads": 4, "seq_len": 64}
DATA: dict[str, Any] = {"vocab_size": 16, "order": 2, "seq_len": 64, "concentration": 0.2, "n": 512}
BATCH = 16  # per process
LR, BETAS, WEIGHT_DECAY, HEAD_LR_MULT = 3.0e-3, (0.9, 0.98), 0.1, 0.5
SEED = 0
CASES = ("ddp", "fsdp", "fsdp+ac", "fsdp2")


# ---- measuring, in every case's processes ----------------------------------------------------


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of this rank's part of `tensor` (a DTensor's local shard)."""
    to_local = getattr(tensor, "to_local", None)
    local = to_local() if to_local is not None else tensor
    return local.numel() * local.element_size()


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, their gradients and every tensor of the optimizer's state, held by
    this rank (local shards)."""
    params = list(model.parameters())
    state = [
        value
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if isinstance(value, torch.Tensor)
    ]
    return {
        "params": sum(tensor_bytes(p) for p in params),
        "grads": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(tensor_bytes(t) for t in state),
    }


@contextlib.contextmanager
def saved_activations() -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward in the block (into the yielded dict's
    "bytes"): each storage once; parameters (leaves that require grad, FSDP's all-gathered
    ones included) and views of them left out. Tensors saved under an inner hook (a
    non-reentrant activation checkpoint's) are not seen: the checkpoint does not hold them."""
    seen: dict[int, int] = {}
    counted = {"bytes": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if not (base.is_leaf and base.requires_grad):
            storage = tensor.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())
            counted["bytes"] = sum(seen.values())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield counted


class Probe:
    """Measures one rank's run: the activations of training forward MEASURED, then the state
    before optimizer step MEASURED, written as JSON into $BENCH_FSDP_OUT/rank<r>.json."""

    def __init__(self, model: nn.Module, out_dir: str) -> None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.model, self.out_dir = model, Path(out_dir)
        self.forwards = self.steps = 0
        self.activations: int | None = None
        register_optimizer_step_pre_hook(self.before_step)

    def before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1
        if self.steps != MEASURED:
            return
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        record: dict[str, Any] = {"rank": rank, **state_bytes(self.model, optimizer)}
        record["activations"] = self.activations
        if torch.cuda.is_available() and any(p.is_cuda for p in self.model.parameters()):
            record["cuda_peak"] = torch.cuda.max_memory_allocated()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(record))


class ProbedGPT(TinyGPT):
    """tiny_gpt (the same modules, names and initialisation) whose MEASURED-th training
    forward counts the activations it saves for backward."""

    probe: Probe | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe
        if probe is None or not (self.training and torch.is_grad_enabled()):
            return super().forward(tokens)
        probe.forwards += 1
        if probe.forwards != MEASURED:
            return super().forward(tokens)
        with saved_activations() as counted:
            logits = super().forward(tokens)
        probe.activations = counted["bytes"]
        return logits


def probed_gpt(**options: Any) -> ProbedGPT:
    """The runner cases' model (`model.name: bench_fsdp:probed_gpt`): tiny_gpt, measured into
    $BENCH_FSDP_OUT when it is set."""
    model = ProbedGPT(**options)
    if os.environ.get(OUT_ENV):
        model.probe = Probe(model, os.environ[OUT_ENV])
    return model


# ---- the hand-written FSDP2 loop (run under torchrun: --worker) ------------------------------


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The config's groups by hand, in the runner's order: rules first (embed: no decay;
    head: half the lr), then the rest; each split into decay and no_decay (biases and norms)
    where its weight decay is not 0."""
    norms = {
        f"{name}.{param_name}"
        for name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for param_name, _ in module.named_parameters(recurse=False)
    }
    named = list(model.named_parameters())

    def split(members: list[tuple[str, nn.Parameter]], **options: Any) -> list[dict[str, Any]]:
        no_decay = [p for n, p in members if n.endswith(".bias") or n in norms]
        decay = [p for n, p in members if not (n.endswith(".bias") or n in norms)]
        return [
            group
            for group in (
                {"params": decay, **options},
                {"params": no_decay, **options, "weight_decay": 0.0},
            )
            if group["params"]
        ]

    embed = [p for n, p in named if n.startswith("embed.")]
    head = [(n, p) for n, p in named if n.startswith("head.")]
    rest = [(n, p) for n, p in named if not n.startswith(("embed.", "head."))]
    return [
        {"params": embed, "weight_decay": 0.0},
        *split(head, lr=LR * HEAD_LR_MULT),
        *split(rest),
    ]


def hand_written(epochs: int, out_dir: str) -> None:
    """One rank of the hand-written FSDP2 loop; rank 0 writes the epochs' samples/s."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from trainer.components.data import epoch_seed
    from trainer.components.language import markov_text

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(SEED)
    model = probed_gpt(**MODEL)
    mesh = init_device_mesh("cpu", (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(
        param_groups(model), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY
    )
    data = markov_text(True, **DATA)
    inputs, targets = data.tensors
    speeds = []
    for epoch in range(1, epochs + 1):
        # The runner's order: a seeded permutation per epoch, padded, every world-th index.
        order = torch.randperm(
            len(inputs), generator=torch.Generator().manual_seed(epoch_seed(SEED, epoch))
        )
        order = torch.cat([order, order[: -len(order) % world]])[rank::world]
        model.train()
        losses, samples = torch.zeros(()), 0
        started = time.perf_counter()
        for index in order.split(BATCH):
            x, y = inputs[index], targets[index]
            samples += len(index)
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses += loss.detach()
        dist.all_reduce(losses)  # the epoch's one read, as the runner's epoch means
        losses.item()
        speeds.append(samples * world / (time.perf_counter() - started))
    if rank == 0:
        Path(out_dir, "speeds.json").write_text(json.dumps(speeds))
    dist.barrier()
    dist.destroy_process_group()


# ---- the benchmark ---------------------------------------------------------------------------


def config_text(case: str, out_dir: Path, epochs: int) -> str:
    """The runner cases' config (YAML is a superset of JSON)."""
    trainer: dict[str, Any] = {
        "epochs": epochs, "device": "cpu", "log_every": 20, "out_dir": str(out_dir),
        "strategy": "ddp" if case == "ddp" else "fsdp",
    }  # fmt: skip
    if case == "fsdp+ac":
        trainer["activation_checkpointing"] = [UNITS]
    config: dict[str, Any] = {
        "name": f"bench_{case.replace('+', '_')}",
        "seed": SEED,
        "model": {"name": "bench_fsdp:probed_gpt", **MODEL},
        "data": {"name": "markov_text", **DATA, "batch_size": BATCH},
        "loss": {"name": "CrossEntropyLoss"},
        "optimizer": {
            "name": "AdamW",
            "lr": LR,
            "betas": list(BETAS),
            "weight_decay": WEIGHT_DECAY,
        },
        "param_groups": {
            "no_decay": ["bias", "norm"],
            "rules": [
                {"name": "embed", "match": r"^embed\.", "weight_decay": 0.0},
                {"name": "head", "match": r"^head\.", "lr_mult": HEAD_LR_MULT},
            ],
        },
        "checkpoint": {"every_epochs": None},
        "trainer": trainer,
    }
    if case != "ddp":
        config["fsdp"] = {"units": [UNITS]}
    return json.dumps(config, indent=1)


def run_case(case: str, epochs: int, work: Path) -> tuple[list[float], list[dict[str, Any]]]:
    """One run of `case` in 2 processes: its epochs' samples/s and each rank's measurements."""
    work.mkdir(parents=True)
    measured = work / "measured"
    env = {
        **os.environ,
        OUT_ENV: str(measured),
        "OMP_NUM_THREADS": "1",  # one core per process (torchrun's default, said here)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")])),
        "TRAINER_TRUST": ",".join(filter(None, [os.environ.get("TRAINER_TRUST"), "bench_fsdp"])),
    }
    if case == "fsdp2":
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={WORLD}", str(Path(__file__).resolve()),
            "--worker", "--epochs", str(epochs), "--out", str(work),
        ]  # fmt: skip
    else:
        config = work / "config.yaml"
        config.write_text(config_text(case, work / "runs", epochs))
        command = [sys.executable, "-m", "trainer", "fit", str(config), "--nproc", str(WORLD)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{case}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if case == "fsdp2":
        speeds = json.loads((work / "speeds.json").read_text())
    else:
        from trainer.runs.metrics_file import is_epoch_record, read_metrics

        (metrics,) = (work / "runs").rglob("metrics.jsonl")
        speeds = [r["train/samples_per_s"] for r in read_metrics(metrics) if is_epoch_record(r)]
    ranks = [json.loads((measured / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return speeds, ranks


def megabytes(count: int) -> str:
    return f"{count / 2**20:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        hand_written(args.epochs, args.out)
        return

    speeds: dict[str, list[float]] = {case: [] for case in CASES}
    memory: dict[str, list[dict[str, Any]]] = {}
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    work = Path(tempfile.mkdtemp(prefix="bench_fsdp_"))
    try:
        for round_index in range(args.rounds):
            shift = round_index % len(CASES)  # each round starts with the next case
            for case in CASES[shift:] + CASES[:shift]:
                case_speeds, ranks = run_case(case, args.epochs, work / f"{round_index}_{case}")
                speeds[case] += case_speeds
                if case in memory and memory[case] != ranks:
                    print(f"note: {case}'s measurements differ between rounds")
                memory[case] = ranks
                each = " ".join(f"{speed:.0f}" for speed in case_speeds)
                print(f"round {round_index + 1} {case}: {each} samples/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    print()
    report(speeds, memory, loads=loads, rounds=args.rounds, epochs=args.epochs)
    print(f"({time.perf_counter() - started:.0f} s in all)")


def verdict(name: str, ratio: float, goal: str, met: bool) -> str:
    return f"{name}: {ratio:.3f}  (goal {goal}: {'met' if met else 'MISSED'})"


def report(
    speeds: dict[str, list[float]],
    memory: dict[str, list[dict[str, Any]]],
    *,
    loads: list[float],
    rounds: int,
    epochs: int,
) -> None:
    """The machine, what is measured, the table, the ratios against the goals."""
    model = TinyGPT(**MODEL)
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    print(
        f"{datetime.date.today()}  {platform.platform()}  "
        f"{platform.processor() or platform.machine()}  {os.cpu_count()} cores  "
        f"torch {torch.__version__}  python {platform.python_version()}  load average "
        f"before/after: {', '.join(f'{value:.1f}' for value in loads)}"
    )
    print(
        f"tiny_gpt {MODEL} ({total:,} parameters, one block {block:,}); markov_text "
        f"n={DATA['n']}; batch {BATCH} per process x {WORLD} processes (gloo, CPU, 1 thread "
        f"each); AdamW, no_decay + 2 rules; {rounds} rounds x {epochs} epochs"
    )
    print(
        "MB = 2**20 bytes. state = params + grads + AdamW state held by the rank (local shards, "
        f"before optimizer step {MEASURED}); activ = bytes saved for backward by training "
        f"forward {MEASURED} (each storage once, parameters left out); peak = state + activ "
        "(CPU: tracked tensor bytes; not counted: FSDP's transient all-gathered unit, DDP's "
        "gradient buckets, the loss's saved tensors); samples/s: median (min-max) over the "
        "epochs of all rounds"
    )
    print()
    columns = ("params", "grads", "optim", "state", "activ", "peak")
    header = f"{'case':8} {'rank':>4} " + " ".join(f"{c:>7}" for c in columns) + "  samples/s"
    print(header)
    print("-" * (len(header) + 10))
    median = {case: statistics.median(values) for case, values in speeds.items()}
    for case in CASES:
        spread = f"{median[case]:.0f} ({min(speeds[case]):.0f}-{max(speeds[case]):.0f})"
        for record in memory[case]:
            state = record["params"] + record["grads"] + record["optimizer"]
            peak = record.get("cuda_peak", state + record["activations"])
            values = (*(record[k] for k in ("params", "grads", "optimizer")), state)
            values = (*values, record["activations"], peak)
            cells = " ".join(f"{megabytes(v):>7}" for v in values)
            print(f"{case:8} {record['rank']:>4} {cells}  {spread}")
    print()

    def state_of(case: str, rank: int) -> int:
        record = memory[case][rank]
        return int(record["params"] + record["grads"] + record["optimizer"])

    for rank in range(WORLD):
        ratio = state_of("fsdp", rank) / state_of("ddp", rank)
        print(verdict(f"fsdp state / ddp state, rank {rank}", ratio, "<= 0.55", ratio <= 0.55))
    for rank in range(WORLD):
        ratio = memory["fsdp+ac"][rank]["activations"] / memory["fsdp"][rank]["activations"]
        print(verdict(f"fsdp+ac activ / fsdp activ, rank {rank}", ratio, "< 1", ratio < 1))
    ratio = median["fsdp"] / median["fsdp2"]
    print(verdict("runner fsdp samples/s / hand-written FSDP2", ratio, ">= 0.9", ratio >= 0.9))
    print(
        f"samples/s, runner ddp / runner fsdp: {median['ddp'] / median['fsdp']:.3f}; "
        f"fsdp+ac / fsdp: {median['fsdp+ac'] / median['fsdp']:.3f}"
    )


if __name__ == "__main__":
    main()
