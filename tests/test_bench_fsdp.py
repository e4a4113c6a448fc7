"""scripts/bench_fsdp.py's logic: what it counts as activations and state, and that its
hand-written loop's AdamW groups are the runner's. One process, no FSDP: seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainer.components.param_groups import build_param_groups
from trainer.config import validate_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_fsdp


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def test_activations_count_each_storage_once_and_leave_parameters_out() -> None:
    # Linear saves its input (x), ReLU its output, the 2nd Linear the same output as its
    # input (one storage) and the weights (parameters: left out).
    model, x = mlp(), torch.randn(16, 8)
    with bench_fsdp.saved_activations() as counted:
        model(x).sum().backward()
    assert counted["bytes"] == 16 * 8 * 4 + 16 * 32 * 4


def test_activations_under_checkpoint_are_the_inputs_alone() -> None:
    model, x = mlp(), torch.randn(16, 8)
    with bench_fsdp.saved_activations() as counted:
        checkpoint(model, x, use_reentrant=False).sum().backward()
    assert counted["bytes"] == 16 * 8 * 4


def test_state_bytes_are_params_grads_and_every_optimizer_tensor() -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    size = sum(p.numel() for p in model.parameters()) * 4
    # AdamW: exp_avg and exp_avg_sq per parameter, and a scalar fp32 step per parameter.
    assert bench_fsdp.state_bytes(model, optimizer) == {
        "params": size,
        "grads": size,
        "optimizer": 2 * size + 4 * len(list(model.parameters())),
    }


def test_hand_written_groups_are_the_runners(tmp_path: Path) -> None:
    config = validate_config(json.loads(bench_fsdp.config_text("fsdp", tmp_path, 1)))
    model = bench_fsdp.ProbedGPT(**bench_fsdp.MODEL)
    options = {"lr": bench_fsdp.LR, "weight_decay": bench_fsdp.WEIGHT_DECAY}
    runner, _ = build_param_groups(model, options, config.param_groups)
    by_hand = bench_fsdp.param_groups(model)

    def described(groups: list[dict]) -> list[tuple]:
        return [
            (
                [id(p) for p in group["params"]],
                group.get("lr", bench_fsdp.LR),
                group.get("weight_decay", bench_fsdp.WEIGHT_DECAY),
            )
            for group in groups
        ]

    assert len(runner) == 5
    assert described(by_hand) == described(runner)
