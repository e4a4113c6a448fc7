"""trainer.ema against torch's AveragedModel (and timm's ModelEmaV3 for the warmup) in a
hand-written loop, bit for bit: a BatchNorm model (its running statistics are averaged too),
every step and every few steps; val/ema/<metric> logged and monitored for best.pt;
`eval --ema`, `export --ema`, `inspect`; the config's refusals.

The runs train `helpers.loop:bn_net` (conv → BatchNorm, no dropout) from saved initial weights
on 96 shapes of 8x8 in batches of 16 (6 steps an epoch) in a fixed order, so the hand loop
sees the same batches and must end on the same weights, raw and averaged.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.checkpoints import valid_checkpoint
from helpers.loop import bn_net
from helpers.resume import Once, run_in, write_config
from helpers.resume import train as resume_train
from rich.console import Console
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from trainer.components import registry
from trainer.config import load_config
from trainer.engine.loop import FitResult, fit
from trainer.errors import Interrupted, UserError
from trainer.runs.metrics_file import is_epoch_record, read_metrics
from trainer.state.checkpoint import load_checkpoint

EPOCHS, BATCHES, BATCH_SIZE = 2, 6, 16
LAST = "runs/r/checkpoints/last.pt"  # helpers.resume's run
DATA = {"size": BATCHES * BATCH_SIZE, "image_size": 8}

BASE = """\
name: ema
seed: 0
model: {name: "helpers.loop:bn_net", init_from: "INITIAL"}
data: {name: shapes, size: 96, image_size: 8, batch_size: 16, shuffle: false}
optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
trainer: {epochs: 2, device: cpu, log_every: 1, out_dir: OUT}
"""


@pytest.fixture
def bn_initial(tmp_path: Path) -> Path:
    """Initial weights of bn_net, shared by the runner (init_from) and the hand loop."""
    torch.manual_seed(1)
    path = tmp_path / "initial.pt"
    torch.save(bn_net().state_dict(), path)
    return path


@pytest.fixture
def config_file(tmp_path: Path, bn_initial: Path) -> Callable[..., Path]:
    """`config_file(extra_yaml)`: BASE (and `extra_yaml`) as tmp_path/cfg.yaml."""

    def write(extra: str = "") -> Path:
        text = BASE.replace("INITIAL", str(bn_initial)).replace("OUT", str(tmp_path / "runs"))
        path = tmp_path / "cfg.yaml"
        path.write_text(text + textwrap.dedent(extra), encoding="utf-8")
        return path

    return write


def train(config: Path, *overrides: str) -> tuple[FitResult, str]:
    """An in-process `fit`; (result, what it printed)."""
    output = io.StringIO()
    result = fit(load_config(config, list(overrides)), console=Console(file=output, width=200))
    return result, output.getvalue()


def loaders() -> tuple[DataLoader, DataLoader]:
    """What `data.shuffle: false` gives: 0..N-1 every epoch, in batches of 16."""
    shapes = registry.resolve("datasets", "shapes", key="data.name")
    train_loader = DataLoader(shapes(True, **DATA), batch_size=BATCH_SIZE, shuffle=False)
    val_loader = DataLoader(shapes(False, **DATA), batch_size=BATCH_SIZE, shuffle=False)
    return train_loader, val_loader


def hand_train(
    initial: Path, update: Callable[[nn.Module, int], None], *, every_steps: int = 1
) -> nn.Module:
    """The runner's loop with SGD, written out; `update(model, k)` after every
    `every_steps`-th optimizer step (k: the update's number, from 1)."""
    model = bn_net()
    model.load_state_dict(torch.load(initial, weights_only=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    train_loader, _ = loaders()
    step = 0
    model.train()
    for _ in range(EPOCHS):
        for inputs, targets in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(inputs), targets).backward()
            optimizer.step()
            step += 1
            if step % every_steps == 0:
                update(model, step // every_steps)
    return model


@torch.no_grad()
def validation(model: nn.Module) -> tuple[float, float]:
    """(val/loss, val/acc) as trainer/engine/evaluate.py computes them."""
    _, val_loader = loaders()
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    loss_sum, correct, count = torch.zeros((), dtype=torch.float64), torch.zeros(()), 0
    for inputs, targets in val_loader:
        outputs = model(inputs)
        loss_sum += loss_fn(outputs, targets).double() * inputs.shape[0]
        correct += (outputs.argmax(dim=1) == targets).sum()
        count += inputs.shape[0]
    return loss_sum.item() / count, correct.item() / count


def assert_equal_states(saved: dict[str, torch.Tensor], expected: dict[str, Any]) -> None:
    assert saved.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor), f"{name} differs"


def last(result: FitResult) -> Path:
    return result.run_dir / "checkpoints" / "last.pt"


def epoch_records(result: FitResult) -> list[dict[str, Any]]:
    return [r for r in read_metrics(result.run_dir / "metrics.jsonl") if is_epoch_record(r)]


# ---------------------------------------------------------------- the average


@pytest.mark.parametrize("every_steps", [1, 5])  # 5: updates at steps 5 and 10, across epochs
def test_ema_equals_torchs_averaged_model_in_a_hand_loop(
    every_steps: int, config_file: Callable[..., Path], bn_initial: Path
) -> None:
    result, printed = train(
        config_file(), f"trainer.ema={{decay: 0.9, every_steps: {every_steps}}}"
    )
    averaged: list[AveragedModel] = []

    def update(model: nn.Module, _: int) -> None:
        if not averaged:
            averaged.append(
                AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
            )
        averaged[0].update_parameters(model)

    model = hand_train(bn_initial, update, every_steps=every_steps)
    saved = load_checkpoint(last(result))
    assert_equal_states(saved.model, model.state_dict())  # validating the EMA left them be
    assert saved.ema is not None
    assert_equal_states(saved.ema.weights, averaged[0].module.state_dict())
    assert saved.ema.updates == int(averaged[0].n_averaged) == EPOCHS * BATCHES // every_steps
    assert (saved.ema.decay, saved.ema.every_steps, saved.ema.warmup) == (0.9, every_steps, None)
    # The average is not the weights: BatchNorm's running mean averaged too.
    assert not torch.equal(saved.ema.weights["1.running_mean"], saved.model["1.running_mean"])
    assert f"ema: decay 0.9 every {every_steps} step(s), no warmup" in printed


def test_warmup_equals_timms_model_ema_v3(
    config_file: Callable[..., Path], bn_initial: Path
) -> None:
    result, _ = train(
        config_file(),
        "trainer.ema={decay: 0.99, warmup: {power: 0.75, gamma: 2.0}}",
    )
    timm_ema: list[ModelEmaV3] = []

    def update(model: nn.Module, number: int) -> None:
        if not timm_ema:
            timm_ema.append(
                ModelEmaV3(model, decay=0.99, use_warmup=True, warmup_power=0.75, warmup_gamma=2.0)
            )
        timm_ema[0].update(model, step=number)

    hand_train(bn_initial, update)
    saved = load_checkpoint(last(result))
    assert saved.ema is not None and saved.ema.warmup == {"power": 0.75, "gamma": 2.0}
    assert_equal_states(saved.ema.weights, timm_ema[0].module.state_dict())
    # Without the warmup (decay 0.99 from the second update) the average is another.
    plain = train(config_file(), "trainer.ema={decay: 0.99}", "name=plain")[0]
    plain_ema = load_checkpoint(last(plain)).ema
    assert plain_ema is not None
    assert not torch.equal(plain_ema.weights["0.weight"], saved.ema.weights["0.weight"])


# ---------------------------------------------------------------- validation and best.pt


@pytest.fixture
def ema_run(config_file: Callable[..., Path]) -> FitResult:
    """Two epochs with trainer.ema (decay 0.5) and best.pt chosen by val/ema/acc."""
    result, _ = train(
        config_file("checkpoint: {monitor: val/ema/acc}\n"),
        "trainer.ema={decay: 0.5}",
        "metrics=[{name: MulticlassAccuracy, num_classes: 4, average: micro, key: top1}]",
    )
    return result


def test_the_ema_weights_are_validated_as_val_ema(ema_run: FitResult) -> None:
    records = epoch_records(ema_run)
    for record in records:
        assert {"val/ema/loss", "val/ema/acc", "val/ema/top1"} <= record.keys()
        assert record["val/ema/top1"] == pytest.approx(record["val/ema/acc"])
    saved = load_checkpoint(last(ema_run))
    assert saved.ema is not None
    model = bn_net()
    model.load_state_dict(saved.ema.weights)
    assert (records[-1]["val/ema/loss"], records[-1]["val/ema/acc"]) == validation(model)
    model.load_state_dict(saved.model)
    assert (records[-1]["val/loss"], records[-1]["val/acc"]) == validation(model)
    assert records[-1]["val/ema/loss"] != records[-1]["val/loss"]


def test_best_pt_is_chosen_by_the_ema_weights_accuracy(ema_run: FitResult) -> None:
    records = epoch_records(ema_run)
    best = load_checkpoint(ema_run.run_dir / "checkpoints" / "best.pt")
    values = [r["val/ema/acc"] for r in records]
    assert best.position.best is not None
    assert best.position.best["monitor"] == "val/ema/acc"
    assert best.position.best["mode"] == "max"  # as for val/acc
    assert best.position.best["value"] == max(values)
    assert best.position.epoch == values.index(max(values)) + 1


def test_early_stopping_and_a_plateau_scheduler_watch_the_ema_weights(
    config_file: Callable[..., Path],
) -> None:
    # No epoch improves val/ema/loss by 10: the plateau cuts the lr after epoch 1, and early
    # stopping (patience 1) ends the run after epoch 2 of 3.
    result, printed = train(
        config_file("scheduler: {name: ReduceLROnPlateau, monitor: val/ema/loss, patience: 0, "
                    "threshold: 10.0}\n"),
        "trainer.ema={decay: 0.5}",
        "trainer.epochs=3",
        "trainer.early_stopping={monitor: val/ema/loss, patience: 1, min_delta: 10.0}",
    )  # fmt: skip
    assert [r["lr/default"] for r in epoch_records(result)] == [0.1, pytest.approx(0.01)]
    assert "early stopping: val/ema/loss did not improve by 10.0 for 1 epochs" in printed


# ---------------------------------------------------------------- eval, export, inspect


def test_eval_ema_evaluates_the_ema_weights(
    ema_run: FitResult, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    checkpoint = last(ema_run)
    record = epoch_records(ema_run)[-1]
    config = tmp_path / "cfg.yaml"
    ema = "trainer.ema={decay: 0.5}"  # the config monitors val/ema/acc
    result = run_cli("eval", config, ema, "--checkpoint", checkpoint, "--ema", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["val/ema/loss"] == record["val/ema/loss"]
    assert metrics["val/ema/acc"] == record["val/ema/acc"]
    raw = json.loads(run_cli("eval", config, ema, "--checkpoint", checkpoint, "--json").stdout)
    assert raw["val/loss"] == record["val/loss"]
    assert "val/ema/loss" not in raw


def test_export_ema_writes_the_ema_weights_by_the_models_names(
    ema_run: FitResult, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    checkpoint = last(ema_run)
    assert run_cli("export", checkpoint, tmp_path / "ema.pt", "--ema").exit_code == 0
    assert run_cli("export", checkpoint, tmp_path / "raw.pt").exit_code == 0
    ema = torch.load(tmp_path / "ema.pt", weights_only=True)
    raw = torch.load(tmp_path / "raw.pt", weights_only=True)
    saved = load_checkpoint(checkpoint)
    assert saved.ema is not None
    assert ema.keys() == raw.keys()
    assert all(torch.equal(ema[k], saved.ema.weights[k]) for k in ema)
    assert not torch.equal(ema["0.weight"], raw["0.weight"])
    bn_net().load_state_dict(ema)  # loads into the model without the runner


def test_inspect_says_the_checkpoint_holds_ema_weights(
    ema_run: FitResult, run_cli: Callable[..., Any]
) -> None:
    result = run_cli("inspect", last(ema_run))
    assert result.exit_code == 0, result.output
    assert "ema: EMA weights, decay 0.5, every 1 step(s), 12 updates" in result.stdout


def test_eval_and_export_ema_of_a_checkpoint_without_ema_exit_2(
    config_file: Callable[..., Path], user_error: Callable[..., str], tmp_path: Path
) -> None:
    result, _ = train(config_file(), "trainer.epochs=1")
    checkpoint = last(result)
    assert load_checkpoint(checkpoint).ema is None
    for args in (
        ("eval", tmp_path / "cfg.yaml", "--checkpoint", checkpoint, "--ema"),
        ("export", checkpoint, tmp_path / "w.pt", "--ema"),
    ):
        user_error(*args, expect=["--ema:", "holds no EMA weights", "trainer.ema"])
    assert not (tmp_path / "w.pt").exists()


# ---------------------------------------------------------------- resume


def test_resume_keeps_adds_or_drops_the_average_and_says_so(
    config_file: Callable[..., Path],
) -> None:
    config = config_file()
    without, _ = train(config, "trainer.epochs=1", "name=without")
    checkpoint = str(last(without))
    added = fit(
        load_config(config, ["name=without", "trainer.ema={decay: 0.9}"]),
        resume=checkpoint,
        console=Console(file=(printed := io.StringIO()), width=300),
    )
    assert "holds no EMA weights; the average starts from the resumed weights" in (
        printed.getvalue()
    )
    ema = load_checkpoint(last(added)).ema
    assert ema is not None and ema.updates == 1 + BATCHES  # the copy, then epoch 2's steps

    changed = io.StringIO()
    fit(
        load_config(config, ["name=without", "trainer.ema={decay: 0.5}", "trainer.epochs=3"]),
        resume=str(last(added)),
        console=Console(file=changed, width=300),
    )
    assert "trainer.ema: the average of 7 updates is kept and goes on with the config's" in (
        changed.getvalue()
    )
    again = load_checkpoint(last(added)).ema
    assert again is not None and (again.updates, again.decay) == (7 + BATCHES, 0.5)

    dropped = io.StringIO()
    fit(
        load_config(config, ["name=without", "trainer.epochs=4"]),
        resume=str(last(added)),
        console=Console(file=dropped, width=300),
    )
    assert "holds EMA weights (13 updates); this config has no trainer.ema" in dropped.getvalue()
    assert load_checkpoint(last(added)).ema is None


@pytest.mark.parametrize("stop_after", [14, 20])  # mid-epoch 2 (step 14), its end (step 20)
def test_a_resumed_run_has_the_uninterrupted_runs_average_bit_for_bit(
    stop_after: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helpers.resume's run: dropout and shuffled batches; an update every 3 steps.
    ema = "trainer.ema={decay: 0.9, every_steps: 3, warmup: {power: 0.5}}"
    (tmp_path / "straight").mkdir()
    straight = run_in(tmp_path / "straight", ema)
    monkeypatch.chdir(tmp_path)
    Once.fired = False
    config = write_config(tmp_path)
    stopped, _ = resume_train(config, ema, f"model.stop_after={stop_after}")
    assert isinstance(stopped, Interrupted)
    assert load_checkpoint(LAST).position.step == stop_after
    resumed, _ = resume_train(config, ema, f"model.stop_after={stop_after}", resume=LAST)
    assert isinstance(resumed, FitResult)
    expected, got = load_checkpoint(straight / "checkpoints/last.pt"), load_checkpoint(LAST)
    assert expected.ema is not None and got.ema is not None
    assert got.ema.updates == expected.ema.updates == 40 // 3
    assert_equal_states(got.ema.weights, expected.ema.weights)
    assert_equal_states(got.model, expected.model)
    assert epoch_records_of(tmp_path / "runs/r") == epoch_records_of(straight)


def epoch_records_of(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records without their speed."""
    return [
        {k: v for k, v in r.items() if k != "train/samples_per_s"}
        for r in read_metrics(run_dir / "metrics.jsonl")
        if is_epoch_record(r)
    ]


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("ema", "expected"),
    [
        ({"weights": {"w": torch.zeros(2)}, "updates": -1}, "'ema' is "),
        ("0.9", "'ema' is '0.9' (str)"),
        ({"weights": {"other": torch.zeros(2)}}, "'ema' weights are keyed unlike 'model'"),
        ({"weights": {"w": torch.zeros(2)}, "warmup": {"power": 1.0}}, "'ema' is "),
    ],
)
def test_a_checkpoint_whose_ema_is_damaged_is_named(
    ema: Any, expected: str, tmp_path: Path
) -> None:
    checkpoint = valid_checkpoint()
    if isinstance(ema, dict):
        ema = {"weights": {}, "updates": 3, "decay": 0.9, "every_steps": 1, "warmup": None} | ema
    checkpoint["model"] = {"w": torch.ones(2)}
    torch.save(checkpoint | {"ema": ema}, tmp_path / "c.pt")
    with pytest.raises(UserError) as raised:
        load_checkpoint(tmp_path / "c.pt")
    [problem] = raised.value.problems
    assert expected in problem


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("{decay: 1.0}", "trainer.ema.decay"),
        ("{decay: 0}", "trainer.ema.decay"),
        ("{decay: -0.5}", "trainer.ema.decay"),
        ("{every_steps: 0}", "trainer.ema.every_steps"),
        ("{warmup: {power: 0}}", "trainer.ema.warmup.power"),
        ("{warmup: {gamma: -1}}", "trainer.ema.warmup.gamma"),
        ("{decy: 0.9}", "trainer.ema.decy"),
        ("0.999", "trainer.ema"),
    ],
)
def test_bad_ema_values_exit_2_by_key(
    value: str, fragment: str, user_error: Callable[..., str], tiny_yaml: str, tmp_path: Path
) -> None:
    (tmp_path / "c.yaml").write_text(tiny_yaml)
    user_error("fit", "c.yaml", f"trainer.ema={value}", expect=[fragment])
    assert not (tmp_path / "runs").exists()


def test_monitoring_val_ema_without_trainer_ema_exits_2(
    user_error: Callable[..., str], tiny_yaml: str, tmp_path: Path
) -> None:
    (tmp_path / "c.yaml").write_text(tiny_yaml)
    user_error(
        "fit",
        "c.yaml",
        "checkpoint.monitor=val/ema/acc",
        "trainer.early_stopping={monitor: val/ema/loss}",
        expect=[
            "checkpoint.monitor: 'val/ema/acc'",
            "trainer.early_stopping.monitor",
            "trainer.ema",
        ],
    )
    user_error(
        "fit",
        "c.yaml",
        "checkpoint.monitor=val/ema/acx",
        "trainer.ema={decay: 0.9}",
        expect=[
            "checkpoint.monitor: 'val/ema/acx' is not a logged metric; did you mean 'val/ema/acc'"
        ],
    )
