"""The CUDA paths on a real GPU: device choice, fp16 with its GradScaler, bf16, channels_last,
torch.compile with inductor, pinned memory with workers, torchrun on nccl, and checkpoints
written on the GPU read on a CPU.

Every test is marked `gpu` (`pytest -m gpu` selects them) and skips without CUDA;
`scripts/gpu_check.sh` runs them on a GPU machine. Runs are tiny (shapes of 8x8 or 16x16,
a few batches), driven through `trainer fit` or `fit(load_config(...))` inside tmp_path.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.resume import assert_same_training_state, epoch_records, load, run_in, train
from rich.console import Console
from typer.testing import CliRunner

from trainer.cli import app
from trainer.config import load_config
from trainer.engine.loop import fit
from trainer.runs.metrics_file import is_epoch_record, read_metrics

# cuBLAS reads this once, at its first use in the process: set before any test runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parent.parent

# Written into each test's tmp_path and named by import path (`gpu_models:Probe`).
GPU_MODELS = '''
"""Models for the GPU tests: a probe that notes what its training forwards saw, and an MLP
that can send inf gradients back from one chosen backward."""

import torch
from torch import nn

SEEN = []  # per training forward of a Probe: the input's device and layout, the conv's dtype


class Probe(nn.Module):
    def __init__(self, num_classes: int = 4, image_size: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(x))
        if self.training:
            layout = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            SEEN.append({"device": x.device.type, "channels_last": layout, "dtype": hidden.dtype})
        return self.fc(hidden.flatten(1))


class Mlp(nn.Module):
    def __init__(self, num_classes: int = 4, image_size: int = 8, inf_grad_at=None) -> None:
        super().__init__()
        self.first = nn.Linear(3 * image_size * image_size, 32)
        self.last = nn.Linear(32, num_classes)
        self.inf_grad_at, self.backwards = inf_grad_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x.flatten(1))
        if self.training and self.inf_grad_at is not None:
            hidden.register_hook(self._on_backward)
        return self.last(torch.relu(hidden))

    def _on_backward(self, grad: torch.Tensor):
        # The loss stays finite; only the gradients of `first` become inf, once.
        self.backwards += 1
        return torch.full_like(grad, float("inf")) if self.backwards == self.inf_grad_at else None


def tensors(train: bool = True, *, device: str = "cpu", image_size: int = 8):
    """64 seeded random images with 4 classes, as a TensorDataset on `device`."""
    generator = torch.Generator().manual_seed(0 if train else 1)
    images = torch.randn(64, 3, image_size, image_size, generator=generator)
    labels = torch.randint(4, (64,), generator=generator)
    return torch.utils.data.TensorDataset(images.to(device), labels.to(device))
'''

BASE = """
name: gpu
seed: 0
model: {name: "gpu_models:Probe"}
data: {name: shapes, size: 128, image_size: 8, batch_size: 32}
optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
trainer: {epochs: 1, device: cuda, log_every: 1}
"""

# A built-in model with batch norm and pooling, for the runs through the command line.
SMALL_CNN = """
name: cnn
seed: 0
model: {name: small_cnn, num_classes: 4, width: 4}
data: {name: shapes, size: 128, image_size: 16, batch_size: 32}
optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
trainer: {epochs: 2, device: auto, log_every: 2}
"""

GPU_FP16 = ("trainer.device=cuda", "trainer.precision=fp16")
LAST = "runs/r/checkpoints/last.pt"  # of helpers.resume.CONFIG, inside the directory it ran in


@pytest.fixture
def gpu_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[Path, str]]:
    """`gpu_fit(*overrides)`: an in-process fit of BASE inside tmp_path; (run dir, output)."""
    (tmp_path / "gpu_models.py").write_text(GPU_MODELS, encoding="utf-8")
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(BASE).lstrip(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gpu_models", raising=False)  # each test its own SEEN

    def run(*overrides: str) -> tuple[Path, str]:
        output = io.StringIO()
        result = fit(
            load_config(tmp_path / "cfg.yaml", list(overrides)),
            console=Console(file=output, width=200),
        )
        return tmp_path / result.run_dir, output.getvalue()

    return run


def seen() -> list[dict[str, Any]]:
    """What the Probe noted in this test's training forwards."""
    return sys.modules["gpu_models"].SEEN


@pytest.fixture
def deterministic() -> Iterator[None]:
    """Deterministic CUDA kernels (cuBLAS with CUBLAS_WORKSPACE_CONFIG, cuDNN), for torch.equal.

    An op without a deterministic kernel warns (naming itself) rather than fails: the
    torch.equal that follows is the check."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def steps(run_dir: Path) -> list[dict[str, Any]]:
    """The per-step records of metrics.jsonl."""
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if not is_epoch_record(r)]


def last(run_dir: Path) -> dict[str, Any]:
    return load(run_dir / "checkpoints" / "last.pt")


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment, with the repository importable (`python -m trainer`) and `extra`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


# ---------------------------------------------------------------- device auto, and the CPU side


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`trainer fit` of SMALL_CNN with `device: auto`, through the CLI; (its dir, stdout)."""
    directory = tmp_path_factory.mktemp("auto")
    (directory / "cfg.yaml").write_text(textwrap.dedent(SMALL_CNN).lstrip(), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        result = CliRunner().invoke(app, ["fit", "cfg.yaml"])
    assert result.exit_code == 0, (result.exception, result.output)
    return directory, result.stdout


def test_auto_device_is_cuda_and_says_why(auto_run: tuple[Path, str]) -> None:
    _, output = auto_run
    index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    assert f"device: cuda:{index} (auto: CUDA is available ({name}))" in output


def test_a_gpu_checkpoint_is_read_on_a_machine_without_cuda(auto_run: tuple[Path, str]) -> None:
    directory, _ = auto_run
    checkpoint = directory / "runs/cnn/checkpoints/last.pt"
    assert last(directory / "runs/cnn")["rng"]["cuda"], "the run did not train on CUDA"
    no_cuda = subprocess_env(CUDA_VISIBLE_DEVICES="")
    common = {"cwd": directory, "env": no_cuda, "capture_output": True, "text": True}

    inspected = subprocess.run(
        [sys.executable, "-m", "trainer", "inspect", str(checkpoint)], timeout=120, **common
    )
    assert inspected.returncode == 0, inspected.stderr
    assert "epoch: 2 completed" in inspected.stdout, inspected.stdout

    evaluate = ["eval", "cfg.yaml", "trainer.device=cpu", "--json", "--checkpoint", str(checkpoint)]
    evaluated = subprocess.run(
        [sys.executable, "-m", "trainer", *evaluate],
        timeout=120,
        **common,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    on_cpu = json.loads(evaluated.stdout.strip().splitlines()[-1])
    on_gpu = epoch_records(directory / "runs/cnn")[-1]
    # The same weights on another device: cuDNN (TF32 convolutions) vs CPU kernels.
    assert on_cpu["val/loss"] == pytest.approx(on_gpu["val/loss"], rel=1e-2)
    assert abs(on_cpu["val/acc"] - on_gpu["val/acc"]) <= 2 / 128  # one or two of 128 may flip


# ---------------------------------------------------------------- fp16 and its GradScaler


def test_fp16_resumed_run_equals_the_straight_one_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deterministic: None
) -> None:
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = run_in(tmp_path / "straight", *GPU_FP16)
    stopped = tmp_path / "stopped"
    run_in(stopped, *GPU_FP16, "trainer.epochs=2")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(stopped)
        train(stopped / "cfg.yaml", *GPU_FP16, "trainer.epochs=4", resume=LAST)

    ours, theirs = last(stopped / "runs/r"), last(straight)
    assert ours["epoch"] == 4  # resumed in the run's own directory, not a fresh run-2
    assert_same_training_state(ours, theirs)
    assert "scale" in theirs["scalers"]["optimizer"], "the GradScaler was not enabled"
    assert ours["scalers"]["optimizer"] == theirs["scalers"]["optimizer"]
    cuda_rngs = zip(ours["rng"]["cuda"], theirs["rng"]["cuda"], strict=True)
    assert all(torch.equal(a, b) for a, b in cuda_rngs)
    # fp16 trained: the loss went down and stayed finite.
    losses = [r["train/loss"] for r in epoch_records(straight)]
    assert losses and all(math.isfinite(loss) for loss in losses), losses


def lr_ratios(run_dir: Path) -> list[float]:
    """lr of each step over the lr of the step before."""
    lrs = [r["lr/default"] for r in steps(run_dir)]
    return [after / before for before, after in itertools.pairwise(lrs)]


def test_an_inf_gradient_skips_the_step_and_the_per_step_scheduler(gpu_fit) -> None:
    at = 3  # the third optimizer step gets inf gradients
    setup = (
        "model.name=gpu_models:Mlp",
        *GPU_FP16,
        "trainer.epochs=2",
        "scheduler={name: StepLR, step_size: 1, gamma: 0.5, interval: step}",
    )
    clean, _ = gpu_fit(*setup)
    overflow, _ = gpu_fit(*setup, f"model.inf_grad_at={at}")

    # Without the inf gradient no step is skipped: the lr halves after every step.
    assert lr_ratios(clean) == [0.5] * (len(steps(clean)) - 1), "fp16 skipped a step by itself"
    # With it, the scheduler does not step after step `at`: step at+1 keeps its lr.
    expected = [1.0 if step == at else 0.5 for step in range(1, len(steps(overflow)))]
    assert lr_ratios(overflow) == expected
    assert all(math.isfinite(r["train/loss"]) for r in steps(overflow))
    # The scaler skipped exactly one more step (it halves its scale on each skip).
    overflow_scale = last(overflow)["scalers"]["optimizer"]["scale"]
    assert overflow_scale == last(clean)["scalers"]["optimizer"]["scale"] / 2


# ---------------------------------------------------------------- bf16, layout, compile


def test_bf16_autocast_on_cuda(gpu_fit) -> None:
    run_dir, _ = gpu_fit("trainer.precision=bf16")
    assert seen() and all(s["device"] == "cuda" for s in seen())
    assert {s["dtype"] for s in seen()} == {torch.bfloat16}
    weights = last(run_dir)["model"]
    assert weights["conv.weight"].dtype == torch.float32  # autocast leaves the weights in fp32
    assert all(math.isfinite(r["train/loss"]) for r in steps(run_dir))


def test_channels_last_input_and_weights_on_cuda(gpu_fit) -> None:
    run_dir, _ = gpu_fit("trainer.channels_last=true")
    assert seen() and all(s["channels_last"] and s["device"] == "cuda" for s in seen())
    weight = last(run_dir)["model"]["conv.weight"]  # torch.save keeps the strides
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()


def test_compile_with_inductor_trains_as_eager_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._dynamo.utils import counters

    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(SMALL_CNN).lstrip(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    # Full fp32 convolutions in both runs, so that they may differ by rounding alone.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    compiled: list[dict[str, Any]] = []
    real_compile = torch.compile

    def recorded(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        compiled.append(kwargs)
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", recorded)
    one_epoch = ["trainer.device=cuda", "trainer.epochs=1"]
    torch._dynamo.reset()
    counters.clear()
    fast = fit(load_config("cfg.yaml", [*one_epoch, "trainer.compile=true"]), console=quiet())
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    eager = fit(load_config("cfg.yaml", one_epoch), console=quiet())

    assert len(compiled) == 1 and compiled[0].get("backend", "inductor") == "inductor"
    assert graphs > 0, "dynamo captured no graph"
    ours, theirs = last(fast.run_dir)["model"], last(eager.run_dir)["model"]
    assert ours.keys() == theirs.keys()  # plain names, no `_orig_mod.`
    for name, tensor in theirs.items():
        assert torch.allclose(ours[name].float(), tensor.float(), rtol=1e-3, atol=1e-4), name


def quiet() -> Console:
    return Console(file=io.StringIO())


# ---------------------------------------------------------------- loading, torchrun


def test_pinned_batches_from_workers_train_as_in_memory_batches_do(
    gpu_fit, monkeypatch: pytest.MonkeyPatch, deterministic: None
) -> None:
    from torch.utils.data._utils import pin_memory as pinning

    pinned: list[bool] = []
    real_pin = pinning.pin_memory

    def recorded(data: Any, device: Any = None) -> Any:
        batch = real_pin(data, device)
        pinned.append(all(tensor.is_pinned() for tensor in batch))
        return batch

    # The DataLoader's pinning thread looks the function up in its module at each batch.
    monkeypatch.setattr(pinning, "pin_memory", recorded)
    mlp = ("model.name=gpu_models:Mlp", "trainer.epochs=2")
    workers, _ = gpu_fit(*mlp, "data.num_workers=2", "data.pin_memory=true")
    assert pinned and all(pinned), pinned
    in_memory, _ = gpu_fit(*mlp, "data.num_workers=0", "data.pin_memory=false")

    ours, theirs = last(workers)["model"], last(in_memory)["model"]
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


def test_a_dataset_already_on_the_gpu_trains_as_one_in_host_memory(
    gpu_fit, deterministic: None
) -> None:
    # Default loader settings: pin_memory is on for CUDA, which only host tensors can take.
    mlp = ("model.name=gpu_models:Mlp", "data={name: gpu_models:tensors, batch_size: 16}")
    on_gpu, _ = gpu_fit(*mlp, "data.device=cuda", "trainer.epochs=2")
    in_host, _ = gpu_fit(*mlp, "data.device=cpu", "trainer.epochs=2")

    ours, theirs = last(on_gpu)["model"], last(in_host)["model"]
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


def test_torchrun_with_one_process_trains_on_nccl(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(SMALL_CNN).lstrip(), encoding="utf-8")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    result = subprocess.run(
        [*launcher, "-m", "trainer", "fit", "cfg.yaml", "trainer.device=cuda", "trainer.epochs=1"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "distributed: 1 processes (nccl)" in result.stdout, result.stdout
    assert last(tmp_path / "runs/cnn")["epoch"] == 1


# ---------------------------------------------------------------- sharding (trainer.strategy: fsdp)


def test_fsdp_on_one_gpu_with_bf16_parameters_trains(gpu_fit) -> None:
    run_dir, output = gpu_fit(
        "trainer.device=cuda",
        "trainer.strategy=fsdp",
        "fsdp={param_dtype: bf16, reduce_dtype: fp32}",
    )
    assert "fsdp units (1," in output  # the root alone: no fsdp.units
    assert {entry["dtype"] for entry in seen()} == {torch.bfloat16}  # computed in bf16
    losses = [record["train/loss"] for record in steps(run_dir)]
    assert losses and all(math.isfinite(loss) for loss in losses)
    from trainer.state.checkpoint import load_checkpoint

    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # a DCP directory
    assert (run_dir / "checkpoints" / "last.pt").is_dir()
    assert {tensor.dtype for tensor in saved.model.values()} == {torch.float32}  # fp32 shards


def test_activation_checkpointing_lowers_the_peak_memory_of_a_training_step() -> None:
    from trainer.engine.sharding import checkpoint_activations

    def peak(recompute: bool) -> int:
        torch.manual_seed(0)
        blocks = [torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(),
                                      torch.nn.Linear(4096, 1024)) for _ in range(6)]  # fmt: skip
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 1024), torch.nn.Sequential(*blocks), torch.nn.Linear(1024, 8)
        ).cuda()
        if recompute:
            assert checkpoint_activations(model, [r"^1\.\d+$"]) == [f"1.{i}" for i in range(6)]
        inputs = torch.randn(512, 64, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        model(inputs).square().mean().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    without, with_recompute = peak(False), peak(True)
    assert with_recompute < 0.7 * without, (with_recompute, without)


def test_a_sharded_gpu_checkpoint_exports_and_is_read_on_a_machine_without_cuda(
    tmp_path: Path,
) -> None:
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(SMALL_CNN).lstrip(), encoding="utf-8")
    common = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 240}
    fitted = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "cfg.yaml", "trainer.device=cuda",
         "trainer.epochs=1", "trainer.strategy=fsdp"],
        env=subprocess_env(), **common,
    )  # fmt: skip
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    last = tmp_path / "runs/cnn/checkpoints/last.pt"
    assert last.is_dir()
    no_cuda = subprocess_env(CUDA_VISIBLE_DEVICES="")
    exported = subprocess.run(
        [sys.executable, "-m", "trainer", "export", str(last), "w.pt"], env=no_cuda, **common
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    weights = torch.load(tmp_path / "w.pt", map_location="cpu", weights_only=True)
    from trainer.state.checkpoint import load_checkpoint

    saved = load_checkpoint(last).model
    assert weights.keys() == saved.keys()
    assert all(weights[k].device.type == "cpu" and torch.equal(weights[k], saved[k]) for k in saved)
