"""The `trainer` command end to end with typer's CliRunner: bad input, config, list, fit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from trainer.components.models import small_cnn
from trainer.config import load_config
from trainer.runs.metrics_file import is_epoch_record, read_metrics
from trainer.state.checkpoint import KEYS

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def edited(base: str, old: str, new: str) -> str:
    """`base` with `old` replaced by `new`; `old` must be there (so the edit cannot go stale)."""
    assert old in base, old
    return base.replace(old, new)


# ---------------------------------------------------------------- bad input: exit 2

# (id, edit of the tiny config, fragments the message must contain)
SCHEMA_CASES = [
    (
        "unknown-top-level-key",
        lambda base: base + "optimizerr: {name: SGD}\n",
        ["optimizerr: unknown key", "did you mean 'optimizer'?"],
    ),
    (
        "unknown-nested-key",
        lambda base: edited(base, "epochs: 2", "epoch: 2"),
        ["trainer.epoch: unknown key", "did you mean 'epochs'?"],
    ),
    (
        "wrong-type",
        lambda base: edited(base, "epochs: 2", "epochs: ten"),
        ["trainer.epochs:", "'ten'"],
    ),
    (
        "bad-enum",
        lambda base: edited(base, "device: cpu", "device: cpu, precision: fp8"),
        ["trainer.precision:", "'fp8'", "'fp32', 'bf16' or 'fp16'"],
    ),
    (
        "bad-device-string",
        lambda base: edited(base, "device: cpu", "device: gpu"),
        ["trainer.device:", "'gpu'", "auto, cpu, cuda, cuda:N or mps"],
    ),
    (
        "missing-model",
        lambda base: edited(
            base, "model: {name: small_cnn, num_classes: 4, in_channels: 3, width: 4}\n", ""
        ),
        ["model: required key is missing"],
    ),
]


@pytest.mark.parametrize("command", ["config", "fit"])
@pytest.mark.parametrize(
    ("edit", "expect"), [case[1:] for case in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES]
)
def test_schema_errors_exit_2_naming_the_key(
    command, edit, expect, tiny_yaml, write_config, user_error, tmp_path
) -> None:
    path = write_config(edit(tiny_yaml))
    user_error(command, path, expect=expect)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["config", "fit"])
def test_several_problems_are_reported_in_one_run(
    command, tiny_yaml, write_config, user_error
) -> None:
    text = edited(tiny_yaml, "epochs: 2, device: cpu", "epochs: ten, device: gpu, precision: fp8")
    path = write_config(text + "optimizerr: {}\n")
    stderr = user_error(
        command,
        path,
        expect=["optimizerr:", "trainer.epochs:", "trainer.device:", "trainer.precision:"],
    )
    assert stderr.count("error: ") == 4


@pytest.mark.parametrize("command", ["config", "fit"])
def test_empty_file(command, write_config, user_error) -> None:
    path = write_config("")
    user_error(command, path, expect=[f"config {path}: the file is empty"])


@pytest.mark.parametrize("command", ["config", "fit"])
def test_yaml_syntax_error_names_the_line(command, write_config, user_error) -> None:
    path = write_config(
        """
        name: broken
        model: {name: small_cnn}
        data: name: shapes
        """
    )
    user_error(command, path, expect=[f"{path} (line 3,", "not valid YAML"])


@pytest.mark.parametrize("command", ["config", "fit"])
def test_top_level_list_is_not_a_config(command, write_config, user_error) -> None:
    path = write_config("- model\n- data\n")
    user_error(command, path, expect=["expected a mapping of sections at the top, got a list"])


@pytest.mark.parametrize("command", ["config", "fit"])
def test_python_tag_is_refused_and_does_not_run(
    command, write_config, user_error, tmp_path
) -> None:
    marker = tmp_path / "pwned"
    path = write_config(
        f"""
        model: !!python/object/apply:os.system ['touch {marker}']
        data: {{name: shapes}}
        """
    )
    user_error(command, path, expect=[f"{path} (line 1,", "python/object/apply:os.system"])
    assert not marker.exists()


@pytest.mark.parametrize("command", ["config", "fit"])
def test_missing_config_file(command, user_error) -> None:
    user_error(command, "nope.yaml", expect=["config nope.yaml: no such file"])


# Component names and arguments are checked against the registry before anything is built.
COMPONENT_CASES = [
    (
        "misspelt-optimizer",
        lambda base: edited(base, "name: SGD", "name: adamm"),
        ["optimizer.name: unknown 'adamm'", "did you mean 'Adam'?", "choices:"],
    ),
    (
        "unknown-optimizer-keyword",
        lambda base: edited(base, "lr: 0.1", "lrr: 0.1"),
        ["optimizer.lrr: not an argument of SGD", "did you mean 'lr'?"],
    ),
    (
        "missing-scheduler-argument",
        lambda base: base + "scheduler: {name: StepLR}\n",
        ["scheduler.step_size: required argument of StepLR is missing"],
    ),
    (
        "import-path-that-does-not-import",
        lambda base: edited(base, "name: small_cnn", "name: 'nosuchmodule:thing'"),
        ["model.name: cannot import 'nosuchmodule'"],
    ),
    (
        "misspelt-dataset-keyword",
        lambda base: edited(base, "image_size: 16", "image_siz: 16"),
        ["data.image_siz: not an argument of shapes", "did you mean 'image_size'?"],
    ),
    (
        "bad-optimizer-value",
        lambda base: edited(base, "lr: 0.1", "lr: -0.1"),
        ["optimizer.lr: -0.1 is out of range (allowed: >= 0"],
    ),
    pytest.param(
        "cuda-without-cuda",
        lambda base: edited(base, "device: cpu", "device: cuda"),
        ["trainer.device: 'cuda'", "CUDA is not available"],
        marks=NO_CUDA,
    ),
    (
        "dataset-rejects-its-arguments",
        lambda base: edited(base, "num_classes: 4, size", "num_classes: 7, size"),
        ["data: shapes rejected its arguments", "num_classes"],
    ),
]


def _case_id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize(
    ("name", "edit", "expect"), COMPONENT_CASES, ids=[_case_id(c) for c in COMPONENT_CASES]
)
def test_component_errors_exit_2_before_anything_is_written(
    name, edit, expect, tiny_yaml, write_config, user_error, tmp_path
) -> None:
    path = write_config(edit(tiny_yaml))
    user_error("fit", path, expect=expect)
    assert not (tmp_path / "runs").exists()


def test_component_problems_are_reported_together(tiny_yaml, write_config, user_error) -> None:
    text = edited(tiny_yaml, "lr: 0.1", "lrr: 0.1") + "scheduler: {name: StepLR}\n"
    path = write_config(text)
    stderr = user_error("fit", path, expect=["optimizer.lrr:", "scheduler.step_size:"])
    assert stderr.count("error: ") == 2


@pytest.mark.parametrize("command", ["config", "fit"])
@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("optimizer.lr", ["config optimizer.lr: no such file", "an override is KEY=VALUE"]),
        ("trainer.epochs.max=3", ["override 'trainer.epochs.max=3'", "trainer.epochs is a value"]),
        ("trainer.epochs=ten", ["trainer.epochs:", "'ten'"]),
        ("trainer.epoch=3", ["trainer.epoch: unknown key", "did you mean 'epochs'?"]),
    ],
)
def test_bad_overrides_exit_2(
    command, override, expect, tiny_yaml, write_config, user_error
) -> None:
    user_error(command, write_config(tiny_yaml), override, expect=expect)


def test_list_of_an_unknown_kind_exits_2(run_cli) -> None:
    result = run_cli("list", "widgets")
    assert result.exit_code == 2
    assert "widgets" in result.stderr
    assert "optimizers" in result.stderr


def test_python_dash_m_exits_2_without_a_traceback(tiny_yaml, write_config) -> None:
    path = write_config(edited(tiny_yaml, "epochs: 2", "epoch: 2"))
    process = subprocess.run(
        [sys.executable, "-m", "trainer", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert "trainer.epoch: unknown key; did you mean 'epochs'?" in process.stderr
    assert "Traceback" not in process.stderr


# ---------------------------------------------------------------- trainer config


def resolved(run_cli, *args) -> dict:
    """The resolved config `trainer config` prints, parsed."""
    result = run_cli("config", *args)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_config_prints_the_resolved_config(tiny_yaml, write_config, run_cli) -> None:
    path = write_config(tiny_yaml)
    printed = resolved(run_cli, path)
    assert printed == load_config(path).model_dump(mode="json")
    assert printed["optimizer"] == {"name": "SGD", "lr": 0.1, "momentum": 0.9}
    assert printed["trainer"]["precision"] == "fp32"  # a default, filled in


def test_config_applies_overrides(tiny_yaml, write_config, run_cli) -> None:
    path = write_config(tiny_yaml + "param_groups: {freeze: ['^conv1\\.']}\n")
    plain = resolved(run_cli, path)
    overridden = resolved(
        run_cli, path, "optimizer.lr=0.5", "trainer.epochs=3", "param_groups.freeze=[]"
    )
    assert plain["param_groups"]["freeze"] == ["^conv1\\."]
    expected = plain
    expected["optimizer"]["lr"] = 0.5
    expected["trainer"]["epochs"] = 3
    expected["param_groups"]["freeze"] = []
    assert overridden == expected


def test_override_exponent_is_a_float(tiny_yaml, write_config, run_cli) -> None:
    lr = resolved(run_cli, write_config(tiny_yaml), "optimizer.lr=1e-3")["optimizer"]["lr"]
    assert type(lr) is float
    assert lr == 0.001


def test_override_adds_a_keyword_to_a_component(tiny_yaml, write_config, run_cli) -> None:
    path = write_config(edited(tiny_yaml, ", momentum: 0.9", ""))
    printed = resolved(run_cli, path, "optimizer.momentum=0.9", "scheduler.name=StepLR")
    assert printed["optimizer"] == {"name": "SGD", "lr": 0.1, "momentum": 0.9}
    assert printed["scheduler"]["name"] == "StepLR"


NO_TORCH_SCRIPT = """
import sys
from trainer.cli import app
code = app({args!r}, standalone_mode=False)
torch_modules = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not torch_modules, torch_modules
"""


@pytest.mark.parametrize(
    "args",
    [
        ["config", "CFG"],
        ["config", "CFG", "SMALL", "seed=2", "--origin"],
        ["--help"],
        ["fit", "--help"],
    ],
    ids=["config", "config-composed", "help", "fit-help"],
)
def test_config_and_help_do_not_import_torch(args, tiny_yaml, write_config) -> None:
    paths = {
        "CFG": write_config(tiny_yaml),
        "SMALL": write_config("base: cfg.yaml\n", "small.yaml"),
    }
    args = [str(paths[arg]) if arg in paths else arg for arg in args]
    script = textwrap.dedent(NO_TORCH_SCRIPT.format(args=args))
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert process.returncode == 0, process.stderr
    name = "name: small" if "--origin" in args else "name: tiny"  # the last file's stem
    assert (name if args[0] == "config" else "Usage") in process.stdout


# ---------------------------------------------------------------- trainer list


@pytest.mark.parametrize(
    ("kind", "present", "absent"),
    [
        ("optimizers", ["SGD", "AdamW"], ["small_cnn", "StepLR"]),
        ("models", ["small_cnn", "resnet18"], ["AdamW"]),
        ("schedulers", ["StepLR", "OneCycleLR"], ["AdamW"]),
        ("losses", ["CrossEntropyLoss"], ["AdamW"]),
        ("datasets", ["shapes"], ["AdamW"]),
    ],
)
def test_list_one_kind(kind, present, absent, run_cli) -> None:
    result = run_cli("list", kind)
    assert result.exit_code == 0, result.output
    words = set(result.stdout.replace("│", " ").split())
    assert set(present) <= words
    assert not set(absent) & words


def test_list_everything(run_cli) -> None:
    result = run_cli("list")
    assert result.exit_code == 0, result.output
    words = set(result.stdout.replace("│", " ").split())
    kinds = {"models", "datasets", "losses", "optimizers", "schedulers"}
    names = {"small_cnn", "shapes", "CrossEntropyLoss", "SGD", "StepLR"}
    assert kinds | names <= words


# ---------------------------------------------------------------- trainer fit


def fit(run_cli, path: Path, *overrides: str) -> str:
    """Run `trainer fit`; it must succeed. Returns its output."""
    result = run_cli("fit", path, *overrides)
    assert result.exit_code == 0, (result.exception, result.output)
    return result.output


def epoch_records(run_dir: Path) -> list[dict]:
    """The per-epoch records of metrics.jsonl."""
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if is_epoch_record(r)]


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def batches_per_epoch(tiny_yaml: str) -> int:
    data = yaml.safe_load(tiny_yaml)["data"]
    return math.ceil(data["size"] / data["batch_size"])


def test_fit_writes_the_run_directory(tiny_yaml, write_config, run_cli, tmp_path) -> None:
    path = write_config(tiny_yaml)
    output = fit(run_cli, path, "optimizer.lr=0.05")
    run_dir = tmp_path / "runs" / "tiny"
    assert "device: cpu (set by trainer.device)" in output
    assert "runs/tiny" in output

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == load_config(path, ["optimizer.lr=0.05"]).model_dump(mode="json")
    assert saved["optimizer"]["lr"] == 0.05

    batches = batches_per_epoch(tiny_yaml)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    epochs = epoch_records(run_dir)
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["step"] for r in epochs] == [batches, 2 * batches]
    for record in epochs:
        for key in ("val/loss", "val/acc", "lr/default", "train/samples_per_s", "train/loss"):
            assert isinstance(record[key], float), key
        assert 0.0 <= record["val/acc"] <= 1.0
        assert record["train/samples_per_s"] > 0
        assert record["lr/default"] == 0.05
    # log_every: 2 → a step record every second optimizer step.
    steps = [r for r in records if not is_epoch_record(r)]
    assert [r["step"] for r in steps] == list(range(2, 2 * batches + 1, 2))
    assert all({"epoch", "train/loss", "lr/default"} <= set(r) for r in steps)


def test_fit_checkpoint_keys(tiny_yaml, write_config, run_cli, tmp_path) -> None:
    path = write_config(tiny_yaml)
    fit(run_cli, path)
    run_dir = tmp_path / "runs" / "tiny"
    checkpoint = last_checkpoint(run_dir)
    assert set(KEYS) <= set(checkpoint)
    assert checkpoint["epoch"] == 2
    assert checkpoint["step"] == 2 * batches_per_epoch(tiny_yaml)
    assert checkpoint["batch_in_epoch"] == 0
    assert checkpoint["config"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    model = small_cnn(num_classes=4, in_channels=3, width=4)
    assert checkpoint["model"].keys() == model.state_dict().keys()
    grouped = [name for names in checkpoint["groups"]["optimizer"].values() for name in names]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    last_epoch = epoch_records(run_dir)[-1]
    assert checkpoint["metrics"]["val/loss"] == last_epoch["val/loss"]
    assert {"torch", "numpy", "python"} <= set(checkpoint["rng"])
    for name in ("best.pt", "epoch-0001.pt", "epoch-0002.pt"):
        assert (run_dir / "checkpoints" / name).is_file()


def test_second_fit_gets_a_fresh_directory(tiny_yaml, write_config, run_cli, tmp_path) -> None:
    path = write_config(tiny_yaml)
    fit(run_cli, path)
    first = tmp_path / "runs" / "tiny"
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    output = fit(run_cli, path)
    second = tmp_path / "runs" / "tiny-2"
    assert "runs/tiny-2" in output
    assert (second / "checkpoints" / "last.pt").is_file()
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_two_fits_are_deterministic(tiny_yaml, write_config, run_cli, tmp_path) -> None:
    path = write_config(tiny_yaml)
    fit(run_cli, path)
    fit(run_cli, path)
    first = last_checkpoint(tmp_path / "runs" / "tiny")
    second = last_checkpoint(tmp_path / "runs" / "tiny-2")
    assert first["model"].keys() == second["model"].keys()
    for key, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][key]), key
    timeless = [
        [{k: v for k, v in r.items() if k != "train/samples_per_s"} for r in epoch_records(run)]
        for run in (tmp_path / "runs" / "tiny", tmp_path / "runs" / "tiny-2")
    ]
    assert timeless[0] == timeless[1]


def test_fit_other_seed_trains_other_weights(tiny_yaml, write_config, run_cli, tmp_path) -> None:
    path = write_config(tiny_yaml)
    fit(run_cli, path)
    fit(run_cli, path, "seed=1")
    first = last_checkpoint(tmp_path / "runs" / "tiny")["model"]
    second = last_checkpoint(tmp_path / "runs" / "tiny-2")["model"]
    assert not torch.equal(first["fc.weight"], second["fc.weight"])


def test_out_dir_is_the_run_directory(tiny_yaml, write_config, run_cli, tmp_path) -> None:
    fit(run_cli, write_config(tiny_yaml), "trainer.out_dir=elsewhere/run-a")
    assert (tmp_path / "elsewhere" / "run-a" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "runs").exists()


def test_epoch_scheduler_lr_is_the_lr_used_during_the_epoch(
    tiny_yaml, write_config, run_cli, tmp_path
) -> None:
    path = write_config(tiny_yaml + "scheduler: {name: StepLR, step_size: 1, gamma: 0.5}\n")
    fit(run_cli, path, "trainer.epochs=3")
    run_dir = tmp_path / "runs" / "tiny"
    assert [r["lr/default"] for r in epoch_records(run_dir)] == [0.1, 0.05, 0.025]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    step_lrs = {(r["epoch"], r["lr/default"]) for r in map(json.loads, lines) if "val/acc" not in r}
    assert step_lrs == {(1, 0.1), (2, 0.05), (3, 0.025)}
    assert last_checkpoint(run_dir)["schedulers"]["optimizer"]["last_epoch"] == 3


@pytest.mark.parametrize(("size", "accumulate"), [(128, 2), (160, 2), (160, 3)])
def test_accumulate_steps_once_per_window(
    size, accumulate, tiny_yaml, write_config, run_cli, tmp_path
) -> None:
    path = write_config(tiny_yaml)
    fit(run_cli, path, f"data.size={size}", f"trainer.accumulate={accumulate}")
    batches = math.ceil(size / 32)
    per_epoch = math.ceil(batches / accumulate)  # a shorter window closes each epoch
    run_dir = tmp_path / "runs" / "tiny"
    assert [r["step"] for r in epoch_records(run_dir)] == [per_epoch, 2 * per_epoch]
    assert last_checkpoint(run_dir)["step"] == 2 * per_epoch
