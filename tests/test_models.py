"""Models: torchvision and built-in names, keyword arguments, pretrained `weights` offline, and
`model.init_from` (strict, strict: false with a new head, prefix renaming, checkpoints)."""

from __future__ import annotations

import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision.models
from torch import nn

from trainer.components import registry
from trainer.components.models import build_model, load_initial_weights, small_cnn
from trainer.config import InitFrom, ModelConfig, load_config
from trainer.engine.build import build_run
from trainer.errors import UserError

CPU = torch.device("cpu")
TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)


def last_linear(model: nn.Module) -> nn.Linear:
    return [module for module in model.modules() if isinstance(module, nn.Linear)][-1]


# ---------------------------------------------------------------- names and keyword arguments


def test_torchvision_lists_the_usual_classification_models() -> None:
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "vit_b_16"} <= set(TORCHVISION_MODELS)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_every_torchvision_classification_model_resolves(name: str) -> None:
    builder = registry.resolve("models", name, key="model.name")
    assert builder is torchvision.models.get_model_builder(name)
    assert registry.check_component("models", name, {"num_classes": 3}, key="model") == []


@pytest.mark.parametrize(
    "name",
    [
        "small_cnn",
        "resnet18",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "convnext_tiny",
        "swin_t",
        "densenet121",
        "vit_b_16",
    ],
)
def test_models_build_on_meta_with_num_classes(name: str) -> None:
    with torch.device("meta"):
        model = build_model(ModelConfig(name=name, num_classes=7))
    head = last_linear(model)
    assert head.out_features == 7
    assert all(param.is_meta for param in model.parameters())


def test_keyword_arguments_reach_the_builder() -> None:
    model = build_model(ModelConfig(name="small_cnn", num_classes=5, in_channels=1, width=2))
    assert model.conv1.weight.shape == (2, 1, 3, 3)
    assert model.fc.weight.shape == (5, 8)
    out = model(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 5)


def test_a_torchvision_model_trains_on_cpu(write_config, run_cli, tmp_path: Path) -> None:
    config = write_config(
        f"""
        name: tv
        model: {{name: resnet18, num_classes: 4}}
        data: {{name: shapes, size: 8, image_size: 32, num_classes: 4, batch_size: 4}}
        trainer: {{epochs: 1, device: cpu, out_dir: '{tmp_path / "run"}'}}
        """
    )
    result = run_cli("fit", config)
    assert result.exit_code == 0, (result.exception, result.output)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["model"]["fc.weight"].shape == (4, 512)
    assert last["step"] == 2


INTEGER_MODELS = """\
import torch


def int_tensor():
    return torch.arange(3)


def int_dict():
    return {"x": torch.zeros(3), "steps": torch.zeros(2, dtype=torch.long)}


class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.count = torch.nn.Parameter(torch.zeros(1, dtype=torch.int32), requires_grad=False)
"""


@pytest.mark.parametrize(
    ("name", "parameter", "dtype"),
    [
        ("int_tensor", "tensor", "int64"),
        ("int_dict", "steps", "int64"),
        ("Counter", "count", "int32"),
    ],
)
def test_a_parameter_must_be_floating_point(
    name, parameter, dtype, write_config, user_error, tmp_path, monkeypatch
) -> None:
    (tmp_path / "int_models.py").write_text(INTEGER_MODELS, encoding="utf-8")
    monkeypatch.delitem(sys.modules, "int_models", raising=False)
    config = write_config(
        f"model: {{name: 'int_models:{name}'}}\ndata: {{name: shapes}}\ntrainer: {{device: cpu}}\n"
    )
    user_error(
        "groups",
        config,
        expect=[
            f"model.name: 'int_models:{name}' built a parameter {parameter!r} of dtype {dtype}: "
            "a parameter must be floating point"
        ],
    )
    assert not (tmp_path / "runs").exists()


def test_unknown_model_name_suggests_the_closest(write_config, user_error) -> None:
    config = write_config(
        """
        model: {name: resnet19}
        data: {name: shapes}
        trainer: {device: cpu}
        """
    )
    user_error("fit", config, expect=["model.name: unknown 'resnet19'; did you mean 'resnet18'?"])


def unknown_keyword_config(write_config, name: str) -> Path:
    return write_config(
        f"""
        model: {{name: {name}, num_clases: 4}}
        data: {{name: shapes, size: 8, image_size: 32, num_classes: 4}}
        trainer: {{epochs: 1, device: cpu}}
        """
    )


@pytest.mark.parametrize(
    "name",
    [
        "small_cnn",
        "resnet18",
    ],
)
def test_unknown_model_keyword_names_the_key(name: str, write_config, user_error) -> None:
    config = unknown_keyword_config(write_config, name)
    user_error("fit", config, expect=["model.num_clases", "did you mean 'num_classes'?"])


def test_unknown_torchvision_model_keyword_is_a_user_error(write_config, user_error) -> None:
    config = unknown_keyword_config(write_config, "resnet18")
    user_error("fit", config, expect=["error: model", "num_clases"])


def test_pretrained_weights_offline_suggest_init_from(
    write_config, user_error, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = []

    def offline(url: str, *args: Any, **kwargs: Any) -> Any:
        tried.append(url)
        raise urllib.error.URLError("no network in tests")

    # torchvision's weights enum calls the name it imported from torch.hub, not torch.hub's.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    config = write_config(
        """
        model: {name: resnet18, weights: DEFAULT}
        data: {name: shapes, size: 8, image_size: 32}
        trainer: {epochs: 1, device: cpu}
        """
    )
    stderr = user_error(
        "fit", config, expect=["error: model.weights: 'DEFAULT'", "model.init_from"]
    )
    assert "no network in tests" in stderr
    assert tried == [torchvision.models.ResNet18_Weights.DEFAULT.url]


def test_list_models_describes_each_name(run_cli) -> None:
    result = run_cli("list", "models")
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 4 and cells[1]:
            rows[cells[1]] = cells[2]
    own = {name for name in rows if not name.startswith("timm/")}  # timm's: tests/test_timm.py
    assert own == {"small_cnn", "gan_mlp", "tiny_gpt", *TORCHVISION_MODELS}
    assert rows["small_cnn"].startswith("Small three-block CNN")
    assert rows["tiny_gpt"].startswith("A small decoder-only transformer")
    assert all(rows.values())


# ---------------------------------------------------------------- init_from


def saved_small_cnn(path: Path, *, num_classes: int = 4, rename: str = "") -> dict[str, Any]:
    """A small_cnn state dict with random weights and running stats, saved at `path`."""
    torch.manual_seed(123)
    model = small_cnn(num_classes=num_classes, width=4)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    state = model.state_dict()
    torch.save({rename + key: value for key, value in state.items()}, path)
    return state


@pytest.fixture
def built(write_config, tmp_path: Path) -> Callable[[str], tuple[nn.Module, list[str]]]:
    """`built(model_yaml)`: the model as `trainer fit` builds it, and the notes it prints."""

    def build(model: str) -> tuple[nn.Module, list[str]]:
        config = write_config(
            f"""
            name: init
            seed: 0
            model: {model}
            data: {{name: shapes, size: 8, image_size: 8, num_classes: 4, batch_size: 4}}
            trainer: {{epochs: 1, device: cpu, out_dir: '{tmp_path / "run"}'}}
            """
        )
        run = build_run(load_config(config), CPU)
        return run.module, run.notes

    return build


def assert_same_tensors(model: nn.Module, state: dict[str, torch.Tensor], keys: Any) -> None:
    own = model.state_dict()
    for key in keys:
        assert torch.equal(own[key], state[key]), key


def test_init_from_loads_an_exact_state_dict(tmp_path: Path, built) -> None:
    path = tmp_path / "weights.pt"
    state = saved_small_cnn(path)
    model, notes = built(f"{{name: small_cnn, num_classes: 4, width: 4, init_from: '{path}'}}")
    assert_same_tensors(model, state, state)
    assert notes == [f"init_from: loaded {len(state)} tensors from {path}"]
    fresh, _ = built("{name: small_cnn, num_classes: 4, width: 4}")
    assert not torch.equal(fresh.conv1.weight, state["conv1.weight"])


def test_fit_prints_the_init_from_report(tmp_path: Path, write_config, run_cli) -> None:
    path = tmp_path / "weights.pt"
    state = saved_small_cnn(path)
    config = write_config(
        f"""
        model: {{name: small_cnn, num_classes: 4, width: 4, init_from: '{path}'}}
        data: {{name: shapes, size: 8, image_size: 8, num_classes: 4, batch_size: 4}}
        trainer: {{epochs: 1, device: cpu, out_dir: '{tmp_path / "run"}'}}
        """
    )
    result = run_cli("fit", config)
    assert result.exit_code == 0, (result.exception, result.output)
    assert f"init_from: loaded {len(state)} tensors from {path}" in result.stdout


def test_strict_init_from_lists_every_mismatch(tmp_path: Path, write_config, user_error) -> None:
    path = tmp_path / "weights.pt"
    state = saved_small_cnn(path, num_classes=4)
    del state["conv1.weight"]
    state["aux.weight"] = torch.zeros(2)
    torch.save(state, path)
    config = write_config(
        f"""
        model: {{name: small_cnn, num_classes: 3, width: 4, init_from: {{path: '{path}'}}}}
        data: {{name: shapes, size: 8, image_size: 8, num_classes: 3}}
        trainer: {{epochs: 1, device: cpu}}
        """
    )
    user_error(
        "fit",
        config,
        expect=[
            f"error: model.init_from: '{path}' does not fit the model (strict: true",
            "fc.weight: shape (4, 16) in the file, (3, 16) in the model",
            "fc.bias: shape (4,) in the file, (3,) in the model",
            "aux.weight: in the file, not in the model",
            "conv1.weight: in the model, not in the file",
        ],
    )


def test_non_strict_init_from_loads_the_backbone_and_keeps_the_new_head(
    tmp_path: Path, built
) -> None:
    path = tmp_path / "weights.pt"
    state = saved_small_cnn(path, num_classes=4)
    model, notes = built(
        f"{{name: small_cnn, num_classes: 3, width: 4, "
        f"init_from: {{path: '{path}', strict: false}}}}"
    )
    backbone = [key for key in state if not key.startswith("fc.")]
    assert_same_tensors(model, state, backbone)
    fresh, _ = built("{name: small_cnn, num_classes: 3, width: 4}")
    assert torch.equal(model.fc.weight, fresh.fc.weight)  # the head stays as built
    assert model.fc.weight.shape == (3, 16)
    assert notes == [
        f"init_from: loaded {len(backbone)} tensors from {path}",
        "init_from: 2 missing (kept as built): fc.weight, fc.bias",
    ]


def test_non_strict_init_from_reports_what_it_ignored(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    state = saved_small_cnn(path)
    torch.save({**state, "aux.weight": torch.ones(3)}, path)
    model = small_cnn(num_classes=4, width=4)
    notes = load_initial_weights(model, InitFrom(path=str(path), strict=False))
    assert_same_tensors(model, state, state)
    assert notes == [
        f"init_from: loaded {len(state)} tensors from {path}",
        "init_from: 1 unexpected (ignored): aux.weight",
    ]


def test_prefix_maps_a_ddp_state_dict(tmp_path: Path, built) -> None:
    path = tmp_path / "ddp.pt"
    state = saved_small_cnn(path, rename="module.")
    model, notes = built(
        f"{{name: small_cnn, num_classes: 4, width: 4, "
        f"init_from: {{path: '{path}', prefix: {{'module.': ''}}}}}}"
    )
    assert_same_tensors(model, state, state)
    assert notes == [f"init_from: loaded {len(state)} tensors from {path}"]


def test_ddp_state_dict_without_prefix_is_a_strict_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "ddp.pt"
    saved_small_cnn(path, rename="module.")
    with pytest.raises(UserError, match=r"module\.conv1\.weight: in the file, not in the model"):
        load_initial_weights(small_cnn(num_classes=4, width=4), InitFrom(path=str(path)))


def test_init_from_accepts_a_trainer_checkpoint(
    tmp_path: Path, write_config, run_cli, built
) -> None:
    config = write_config(
        f"""
        name: first
        model: {{name: small_cnn, num_classes: 4, width: 4}}
        data: {{name: shapes, size: 8, image_size: 8, num_classes: 4, batch_size: 4}}
        trainer: {{epochs: 1, device: cpu, out_dir: '{tmp_path / "first"}'}}
        """,
        name="first.yaml",
    )
    result = run_cli("fit", config)
    assert result.exit_code == 0, (result.exception, result.output)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)["model"]
    model, notes = built(
        f"{{name: small_cnn, num_classes: 4, width: 4, init_from: '{checkpoint}'}}"
    )
    assert_same_tensors(model, state, state)
    assert notes == [f"init_from: loaded {len(state)} tensors from {checkpoint}"]


def test_missing_init_from_file_names_the_key(tmp_path: Path, write_config, user_error) -> None:
    missing = tmp_path / "nowhere.pt"
    config = write_config(
        f"""
        model: {{name: small_cnn, width: 4, init_from: '{missing}'}}
        data: {{name: shapes, size: 8, image_size: 8}}
        trainer: {{epochs: 1, device: cpu}}
        """
    )
    user_error("fit", config, expect=[f"error: model.init_from.path: no such file '{missing}'"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"not a torch file", "cannot read"), (None, "holds no state dict")],
)
def test_unreadable_init_from_file_names_the_key(
    content: bytes | None, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "weights.pt"
    if content is None:
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=f"model.init_from.path: .*{problem}"):
        load_initial_weights(small_cnn(width=4), InitFrom(path=str(path)))
