"""timm models by name (`model.name: timm/<name>`, the `timm` extra): built offline, listed,
refused by key when the name, a keyword or the extra is wrong; `trainer groups` and `trainer
fit` on them, `init_from`, and configs/timm_vit_layer_decay.yaml."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import Result

from trainer.components.models import build_model, load_initial_weights
from trainer.config import ModelConfig

timm = pytest.importorskip("timm")

REPO = Path(__file__).resolve().parent.parent
RESNET = "{name: timm/resnet10t, num_classes: 4}"

CONFIG = """
    name: timm
    seed: 0
    model: MODEL
    data: {name: shapes, num_classes: 4, size: 64, image_size: 16, batch_size: 16}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    trainer: {epochs: 1, device: cpu, log_every: 2}
"""


@pytest.fixture
def timm_config(write_config: Callable[..., Path]) -> Callable[..., Path]:
    """`timm_config(model, extra="")`: the tiny config with this `model` section."""

    def write(model: str = RESNET, extra: str = "") -> Path:
        return write_config(CONFIG.replace("MODEL", model) + extra)

    return write


def test_a_timm_model_builds_offline_as_timm_builds_it() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({"name": "timm/resnet10t", "num_classes": 4}))
    torch.manual_seed(0)
    expected = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    assert type(model) is type(expected)
    assert model.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())
    assert model.fc.out_features == 4


def test_groups_on_a_timm_model_build_it_on_meta(
    timm_config: Callable[..., Path], run_cli: Callable[..., Result]
) -> None:
    path = timm_config("{name: timm/resnet10t, num_classes: 4, pretrained: true}")
    result = run_cli("groups", path, "--json")  # pretrained: no download for the names
    assert result.exit_code == 0, result.output
    (group,) = json.loads(result.stdout)["groups"]
    names = [n for n, _ in timm.create_model("resnet10t", num_classes=4).named_parameters()]
    assert group["params"] == names
    assert group["params"][-1] == "fc.bias"


def test_groups_build_off_meta_a_model_that_cannot_build_on_it(
    timm_config: Callable[..., Path],
    run_cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create = timm.create_model
    devices = []

    def item_on_init(name: str, **kwargs: Any) -> torch.nn.Module:
        devices.append(torch.empty(0).device.type)
        if devices[-1] == "meta":  # as a model whose __init__ reads a tensor's value
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", item_on_init)
    result = run_cli("groups", timm_config(), "--json")
    assert result.exit_code == 0, result.output
    assert devices == ["meta", "cpu"]
    assert json.loads(result.stdout)["groups"][0]["params"][-1] == "fc.bias"


@pytest.mark.parametrize(
    ("model", "expect"),
    [
        (
            "{name: timm/resnet10tt}",
            "model.name: unknown 'timm/resnet10tt'; did you mean 'timm/resnet10t'?",
        ),
        ("{name: vit_tiny_patch16_224}", "did you mean 'timm/vit_tiny_patch16_224'?"),
        (
            "{name: timm/resnet10t, num_clases: 4}",
            "model.num_clases: not an argument of timm/resnet10t; did you mean 'num_classes'?",
        ),
        (
            "{name: timm/resnet10t, global_pool: nope}",
            "model: timm/resnet10t rejected its arguments: AssertionError: Invalid pool type",
        ),
    ],
)
def test_bad_names_and_keywords_are_exit_2(
    model: str, expect: str, timm_config: Callable[..., Path], user_error: Callable[..., str]
) -> None:
    user_error("fit", timm_config(model), expect=[expect])


def test_pretrained_offline_is_exit_2_suggesting_init_from(
    timm_config: Callable[..., Path],
    user_error: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = timm_config("{name: timm/resnet10t, num_classes: 4, pretrained: true}")
    user_error(
        "fit", path, expect=["model.pretrained: True needs pretrained weights", "model.init_from"]
    )
    assert not (tmp_path / "runs").exists()


def test_timm_missing_is_exit_2_naming_the_extra(
    timm_config: Callable[..., Path],
    user_error: Callable[..., str],
    run_cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    user_error(
        "groups",
        timm_config(),
        expect=["model.name: needs timm", "uv sync --extra timm", "pip install 'trainer[timm]'"],
    )
    listed = run_cli("list", "models")
    assert listed.exit_code == 0
    assert "timm/<name>" in listed.stdout and "uv sync --extra timm" in listed.stdout


def test_list_models_shows_every_timm_model(run_cli: Callable[..., Result]) -> None:
    listed = run_cli("list", "models")
    assert listed.exit_code == 0
    rows = [line.split("│")[1].strip() for line in listed.stdout.splitlines() if "│ timm/" in line]
    assert rows == [f"timm/{name}" for name in timm.list_models()]
    everything = run_cli("list")  # all kinds: timm's in one row
    assert everything.stdout.count("│ timm/") == 1
    assert f"{len(timm.list_models())} timm models" in everything.stdout


def test_fit_trains_a_timm_model_with_the_groups_lrs(
    timm_config: Callable[..., Path], run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    torch.manual_seed(3)
    initial = timm.create_model("resnet10t", num_classes=4).state_dict()
    torch.save(initial, tmp_path / "initial.pt")
    decay = "    param_groups: {layer_decay: {rate: 0.5, layers: '^layer(\\d+)\\.'}}\n"
    model = "{name: timm/resnet10t, num_classes: 4, init_from: initial.pt}"
    result = run_cli("fit", timm_config(model, extra=decay), "trainer.max_steps=3")
    assert result.exit_code == 0, result.output
    assert f"init_from: loaded {len(initial)} tensors from initial.pt" in result.output
    saved = torch.load(tmp_path / "runs/timm/checkpoints/last.pt", weights_only=False)
    assert saved["step"] == 3
    assert not torch.equal(saved["model"]["fc.weight"], initial["fc.weight"])  # it trained
    groups = saved["optimizers"]["optimizer"]["param_groups"]
    # resnet10t: the stem (conv1, bn1) layer 0, layer1..layer4 are 2..5, fc on top (6).
    assert {group["name"]: group["lr"] for group in groups} == {
        f"default.layer{i:02d}": 0.1 * 0.5 ** (6 - i) for i in (0, 2, 3, 4, 5, 6)
    }


def test_init_from_loads_a_timm_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = timm.create_model("resnet10t", num_classes=4)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    config = ModelConfig.model_validate(
        {"name": "timm/resnet10t", "num_classes": 4, "init_from": str(tmp_path / "weights.pt")}
    )
    model = build_model(config)
    assert config.init_from is not None
    report = load_initial_weights(model, config.init_from)
    assert report[0].startswith(f"init_from: loaded {len(source.state_dict())} tensors")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_the_example_config_previews_and_trains(
    run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    config = REPO / "configs/timm_vit_layer_decay.yaml"
    groups = run_cli("groups", config, "--json")
    assert groups.exit_code == 0, groups.output
    document: dict[str, Any] = json.loads(groups.stdout)
    scales = {g["name"]: (g["layer"], g["lr_scale"]) for g in document["groups"]}
    assert scales["embed.layer00"] == (0, 0.75**5)
    assert scales["default.layer05"] == (5, 1.0)
    table = run_cli("groups", config)
    assert "lr_scale" in table.stdout and "default.layer03.no_decay" in table.stdout
    fit = run_cli("fit", config, "trainer.max_steps=2")
    assert fit.exit_code == 0, fit.output
    assert (tmp_path / "runs/timm-vit-layer-decay/checkpoints/last.pt").is_file()
