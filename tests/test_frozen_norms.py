"""Frozen norm layers: BatchNorm layers whose parameters are all frozen keep their running
statistics (held in eval mode while training) unless param_groups.freeze_norm_stats is false."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.loop import bn_net
from rich.console import Console
from torch import nn

from trainer.components.param_groups import held_norms
from trainer.config import load_config
from trainer.engine.loop import fit

CONFIG = textwrap.dedent(
    """
    name: bn
    seed: 0
    model: {name: "helpers.loop:bn_net"}
    data: {name: shapes, size: 64, image_size: 8, batch_size: 16}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    param_groups: {freeze: ['^[01]\\.']}
    trainer: {epochs: 2, device: cpu, log_every: 2}
    """
).lstrip()


@pytest.fixture(autouse=True)
def config_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """cfg.yaml in tmp_path, the current directory."""
    monkeypatch.chdir(tmp_path)
    Path("cfg.yaml").write_text(CONFIG, encoding="utf-8")


def trained_state(*overrides: str) -> tuple[dict, dict]:
    """(the model's state as built, its state after the run: last.pt)."""
    config = load_config(Path("cfg.yaml"), list(overrides))
    torch.manual_seed(config.seed)
    built = {k: v.clone() for k, v in bn_net().state_dict().items()}
    result = fit(config, console=Console(file=io.StringIO()))
    return built, torch.load(result.run_dir / "checkpoints/last.pt", weights_only=True)["model"]


def test_held_norms_are_the_norm_layers_whose_parameters_are_all_frozen() -> None:
    model = bn_net()
    for param in [*model[0].parameters(), *model[1].parameters(), model[4].weight]:
        param.requires_grad_(False)  # layer 4 keeps a trainable bias: not held
    assert list(held_norms(model)) == ["1"]
    assert held_norms(nn.Sequential(nn.BatchNorm1d(3, affine=False))) == {}


def test_a_frozen_batchnorm_keeps_its_running_statistics() -> None:
    built, trained = trained_state()
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(trained[key], built[key]), key
    assert not torch.equal(trained["4.running_mean"], built["4.running_mean"])  # trainable


def test_freeze_norm_stats_false_lets_them_update() -> None:
    built, trained = trained_state("param_groups.freeze_norm_stats=false")
    assert not torch.equal(trained["1.running_mean"], built["1.running_mean"])
    assert int(trained["1.num_batches_tracked"]) == 8  # 4 batches x 2 epochs


def test_trainer_groups_says_how_many_norm_layers_are_held(run_cli) -> None:
    printed = run_cli("groups", "cfg.yaml").stdout
    assert (
        "frozen: 4 tensors by param_groups.freeze, 0 by the model; 1 frozen norm layers kept "
        "in eval mode (param_groups.freeze_norm_stats)"
    ) in printed
    document = json.loads(run_cli("groups", "cfg.yaml", "--json").stdout)
    assert document["held_norms"] == ["1"]
    off = run_cli("groups", "cfg.yaml", "param_groups.freeze_norm_stats=false", "--json")
    assert json.loads(off.stdout)["held_norms"] == []


def test_freeze_norm_stats_is_global(user_error) -> None:
    Path("gan.yaml").write_text(
        textwrap.dedent(
            r"""
            model: {name: gan_mlp, latent: 4, hidden: 8}
            data: {name: ring, n: 64, batch_size: 16}
            step: {name: gan}
            optimizers:
              generator:
                params: '^generator\.'
                optimizer: {name: Adam, lr: 1.0e-3}
                param_groups: {freeze_norm_stats: false}
              discriminator:
                params: '^discriminator\.'
                optimizer: {name: Adam, lr: 1.0e-3}
            checkpoint: {monitor: train/g_loss}
            """
        ),
        encoding="utf-8",
    )
    user_error("config", "gan.yaml", expect=["freeze_norm_stats is global"])
