"""Validation metrics by name (torchmetrics): values, DDP sync, config checks, list and eval."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torchmetrics.functional as tmf
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import Result

from trainer.components import registry
from trainer.components.data import build_loaders
from trainer.components.metrics import build_metrics, check_metrics
from trainer.config import validate_config
from trainer.engine.distributed import Distributed
from trainer.engine.evaluate import evaluate

CLASSES = 6
METRICS = [
    {"name": "MulticlassAccuracy", "num_classes": CLASSES, "top_k": 5, "key": "top5"},
    {"name": "MulticlassF1Score", "num_classes": CLASSES},
]
# 37 validation samples: an odd count, so two processes get uneven shards (19 and 18).
CONFIG = {
    "name": "m",
    "model": {"name": "helpers.ddp:tanh_mlp", "num_classes": CLASSES},
    "data": {"name": "shapes", "num_classes": CLASSES, "size": 37, "image_size": 8},
    "metrics": METRICS,
    "trainer": {"device": "cpu"},
}


def by_hand(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """torchmetrics' functional forms over every prediction at once."""
    return {
        "val/top5": float(
            tmf.classification.multiclass_accuracy(outputs, targets, CLASSES, top_k=5)
        ),
        "val/MulticlassF1Score": float(
            tmf.classification.multiclass_f1_score(outputs, targets, CLASSES)
        ),
    }


def fixed_predictions() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(50, CLASSES, generator=generator), torch.randint(
        CLASSES, (50,), generator=generator
    )


class Lookup(torch.nn.Module):
    """A "model" that returns fixed predictions for the indices it is given."""

    def __init__(self, outputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.outputs[index]


def test_top5_and_f1_over_batches_equal_torchmetrics_on_all_predictions() -> None:
    outputs, targets = fixed_predictions()
    config = validate_config(CONFIG)
    metrics = build_metrics(config.metrics, device=torch.device("cpu"))
    loader = DataLoader(TensorDataset(torch.arange(50), targets), batch_size=16)
    values = evaluate(
        Lookup(outputs),
        loader,
        torch.nn.CrossEntropyLoss(),
        torch.device("cpu"),
        "fp32",
        metrics=metrics,
    )
    expected = by_hand(outputs, targets)
    assert values["val/top5"] == expected["val/top5"]
    assert values["val/MulticlassF1Score"] == expected["val/MulticlassF1Score"]
    assert values["val/top5"] != values["val/acc"]  # top-5, not top-1
    # compute() resets: a second validation starts from nothing.
    again = evaluate(
        Lookup(outputs),
        DataLoader(TensorDataset(torch.arange(16), targets[:16]), batch_size=16),
        torch.nn.CrossEntropyLoss(),
        torch.device("cpu"),
        "fp32",
        metrics=metrics,
    )
    assert again["val/top5"] == by_hand(outputs[:16], targets[:16])["val/top5"]


def evaluate_shard(rank: int, world_size: int, port: int, out: str) -> None:
    """One process of a gloo job: validate the same model on this rank's share."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        values = validate_on(Distributed(rank=rank, world_size=world_size))
        Path(out, f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        torch.distributed.destroy_process_group()


def validate_on(job: Distributed) -> dict[str, float]:
    from helpers.ddp import tanh_mlp

    config = validate_config(CONFIG)
    torch.manual_seed(0)
    model = tanh_mlp(CLASSES)
    _, val_loader = build_loaders(
        config.data, seed=0, device=torch.device("cpu"), rank=job.rank, world_size=job.world_size
    )
    metrics = build_metrics(config.metrics, device=torch.device("cpu"))
    return evaluate(
        model, val_loader, torch.nn.CrossEntropyLoss(), torch.device("cpu"), "fp32",
        job=job, metrics=metrics,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_count_each_validation_sample_once(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(
        evaluate_shard, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True
    )
    one = validate_on(Distributed())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank reports the whole set
    for key in ("val/top5", "val/MulticlassF1Score", "val/acc"):
        assert ranks[0][key] == one[key], key


def test_a_ddp_fit_logs_the_same_metrics_as_one_process(tmp_path: Path) -> None:
    """Acceptance: `trainer fit --nproc 2` (lr 0, so the weights stay those of one process)."""
    from test_distributed import trainer

    (tmp_path / "m.yaml").write_text(json.dumps(CONFIG))
    common = ["fit", "m.yaml", "optimizer.lr=0.0", "trainer.epochs=1", "data.batch_size=8"]
    for out, extra in (("one", []), ("two", ["--nproc", "2"])):
        result = trainer(tmp_path, *common, f"trainer.out_dir={out}", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
    one, two = (
        [r for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())]
        for d in ("one", "two")
    )
    assert one[-1]["val/top5"] == two[-1]["val/top5"]
    assert one[-1]["val/MulticlassF1Score"] == two[-1]["val/MulticlassF1Score"]


def test_eval_prints_the_configured_metrics(
    run_cli: Callable[..., Result],
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    plain = {k: v for k, v in CONFIG.items() if k != "metrics"} | {"name": "plain"}
    write_config(json.dumps(plain | {"trainer": {"epochs": 1, "device": "cpu"}}), "plain.yaml")
    fitted = run_cli("fit", "plain.yaml")
    assert fitted.exit_code == 0, fitted.output
    write_config(json.dumps(CONFIG), "m.yaml")
    checkpoint = tmp_path / "runs" / "plain" / "checkpoints" / "last.pt"
    result = run_cli("eval", "m.yaml", "--checkpoint", checkpoint, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)

    from helpers.ddp import tanh_mlp

    model = tanh_mlp(CLASSES)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    _, val_loader = build_loaders(validate_config(CONFIG).data, seed=0, device=torch.device("cpu"))
    inputs, targets = (torch.cat(parts) for parts in zip(*val_loader, strict=True))
    with torch.no_grad():
        expected = by_hand(model(inputs), targets)
    assert printed["val/top5"] == expected["val/top5"]
    assert printed["val/MulticlassF1Score"] == expected["val/MulticlassF1Score"]
    text = run_cli("eval", "m.yaml", "--checkpoint", checkpoint)
    assert "val/top5" in text.stdout and "val/MulticlassF1Score" in text.stdout


def test_list_metrics_shows_metrics_that_give_one_number(run_cli: Callable[..., Result]) -> None:
    result = run_cli("list", "metrics")
    assert result.exit_code == 0, result.output
    assert "MulticlassF1Score" in result.stdout and "MeanSquaredError" in result.stdout
    assert "MulticlassConfusionMatrix" not in result.stdout  # a matrix, not one number


@pytest.fixture
def without_torchmetrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [m for m in sys.modules if m.startswith("torchmetrics")]:
        monkeypatch.setitem(sys.modules, name, None)  # None: `import` raises ImportError
    registry.entries.cache_clear()
    yield
    registry.entries.cache_clear()


@pytest.mark.usefixtures("without_torchmetrics")
def test_without_torchmetrics_the_error_names_the_extra(
    run_cli: Callable[..., Result], user_error: Callable[..., str], write_config: Callable
) -> None:
    user_error("list", "metrics", expect=["metrics: needs torchmetrics", "--extra metrics"])
    everything = run_cli("list")
    assert everything.exit_code == 0, everything.output
    assert "metrics: needs torchmetrics" in everything.stdout
    assert "optimizers" in everything.stdout
    write_config(json.dumps(CONFIG))
    user_error("eval", "cfg.yaml", "--checkpoint", "x.pt", expect=["--extra metrics"])


def test_metric_keys_must_be_unique_and_not_the_runners_own(user_error: Callable) -> None:
    twice = CONFIG | {"metrics": [METRICS[1], METRICS[1]], "name": "twice"}
    own = CONFIG | {"metrics": [{"name": "MulticlassAccuracy", "key": "acc"}], "name": "own"}
    for config in (twice, own):
        Path(f"{config['name']}.yaml").write_text(json.dumps(config))
    user_error("config", "twice.yaml", expect=["metrics: ", "val/MulticlassF1Score logged twice"])
    user_error("config", "own.yaml", expect=["val/acc logged twice"])


def test_a_monitor_must_name_a_logged_metric(
    user_error: Callable, write_config: Callable[..., Path]
) -> None:
    write_config(json.dumps(CONFIG))
    user_error(
        "config",
        "cfg.yaml",
        "checkpoint.monitor=val/top_5",
        expect=[
            "checkpoint.monitor: 'val/top_5' is not a logged metric",
            "did you mean 'val/top5'",
        ],
    )


def test_a_metric_monitor_defaults_to_its_direction_and_a_contrary_mode_is_refused() -> None:
    f1 = validate_config(CONFIG | {"checkpoint": {"monitor": "val/MulticlassF1Score"}})
    assert f1.checkpoint.mode == "max" and check_metrics(f1) == []
    mse = [{"name": "MeanSquaredError", "key": "mse"}]
    contrary = validate_config(
        CONFIG | {"metrics": mse, "checkpoint": {"monitor": "val/mse", "mode": "max"}}
    )
    assert check_metrics(contrary) == [
        "checkpoint.mode: 'max' for val/mse, where lower is better; set min"
    ]
    # The key says nothing (top5); the class does (MulticlassAccuracy). torch's plateau
    # scheduler has a mode of its own (default min), which is checked, not changed.
    top5 = {"monitor": "val/top5"}
    plateau = validate_config(
        CONFIG
        | {"checkpoint": top5, "trainer": {"early_stopping": top5}}
        | {"scheduler": {"name": "ReduceLROnPlateau", "monitor": "val/top5"}}
    )
    assert plateau.checkpoint.mode == plateau.trainer.early_stopping.mode == "max"
    assert check_metrics(plateau) == [
        "scheduler.mode: 'min' for val/top5, where higher is better; set max"
    ]
    # The EMA weights' val/ema/top5 goes the same way (a keyed metric's name says nothing).
    top5 = {"monitor": "val/ema/top5"}
    ema = validate_config(
        CONFIG
        | {"checkpoint": top5, "trainer": {"early_stopping": top5, "ema": {"decay": 0.9}}}
        | {"scheduler": {"name": "ReduceLROnPlateau", "monitor": "val/ema/top5"}}
    )
    assert ema.checkpoint.mode == ema.trainer.early_stopping.mode == "max"
    assert check_metrics(ema) == [
        "scheduler.mode: 'min' for val/ema/top5, where higher is better; set max"
    ]


def test_misspelt_metric_names_and_arguments_are_config_errors() -> None:
    config = validate_config(
        CONFIG | {"metrics": [{"name": "MulticlassF1Scor"}, {"name": "MeanSquaredError", "x": 1}]}
    )
    problems = check_metrics(config)
    assert problems[0].startswith("metrics.0.name: unknown 'MulticlassF1Scor'; did you mean")
    assert problems[1].startswith("metrics.1: MeanSquaredError rejected its arguments")
    assert "`x`" in problems[1]
