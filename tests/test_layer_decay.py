"""param_groups.layer_decay: each group split by layer, its lr times rate ** (top - layer);
equal to timm's `param_groups_layer_decay` on a ViT, through `trainer groups`, schedulers
and several optimizers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import Result

from trainer.components.optim import build_optimizer, optimizer_defaults
from trainer.components.param_groups import build_param_groups
from trainer.components.schedulers import build_scheduler
from trainer.config import OptimizerConfig, ParamGroupsConfig, SchedulerConfig, validate_config
from trainer.errors import UserError

timm = pytest.importorskip("timm")

LAYERS = r"^stage(\d+)\."


class Staged(nn.Module):
    """embed, stage0, pool (between the stages, matched by no `stage` regex), stage1, norm, head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 8)
        self.stage0 = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.pool = nn.Linear(8, 8)
        self.stage1 = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)


def groups_of(
    model: nn.Module, param_groups: dict[str, Any], **optimizer: Any
) -> tuple[list[dict[str, Any]], Any]:
    config = OptimizerConfig.model_validate({"name": "SGD", "lr": 0.1, **optimizer})
    return build_param_groups(
        model, optimizer_defaults(config), ParamGroupsConfig.model_validate(param_groups)
    )


def lr_and_layer(groups: list[dict[str, Any]], model: nn.Module) -> dict[str, tuple[str, float]]:
    """Parameter name → (group name, lr)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: (g["name"], g["lr"]) for g in groups for p in g["params"]}


def test_layers_before_between_and_after_the_matched_ones() -> None:
    model = Staged()
    groups, report = groups_of(model, {"layer_decay": {"rate": 0.5, "layers": LAYERS}})
    # embed: before the first stage, layer 0; pool: between stages, the layer before it (1);
    # norm and head: after the last, layer 3 (above stage1's 2), which keeps the lr.
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("default.layer00", 0.1 * 0.5**3),
        ("default.layer01", 0.1 * 0.5**2),
        ("default.layer02", 0.1 * 0.5),
        ("default.layer03", 0.1),
    ]
    assert [g.params for g in report.groups] == [
        ["embed.weight", "embed.bias"],
        [
            *(f"stage0.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")),
            "pool.weight",
            "pool.bias",
        ],
        [f"stage1.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")],
        ["norm.weight", "norm.bias", "head.weight", "head.bias"],
    ]
    assert [(g.layer, g.lr_scale) for g in report.groups] == [
        (0, 0.125),
        (1, 0.25),
        (2, 0.5),
        (3, 1.0),
    ]
    assert report.to_json()["groups"][0]["layer"] == 0
    assert report.to_json()["groups"][0]["lr_scale"] == 0.125


def test_with_head_only_its_tensors_are_on_top() -> None:
    model = Staged()
    decay = {"rate": 0.5, "layers": LAYERS, "head": r"^head\."}
    groups, _ = groups_of(model, {"layer_decay": decay})
    placed = lr_and_layer(groups, model)
    assert placed["norm.weight"] == ("default.layer02", 0.05)  # with the last stage
    assert placed["head.weight"] == ("default.layer03", 0.1)
    assert placed["embed.weight"] == ("default.layer00", 0.1 * 0.5**3)


def test_a_head_that_matches_nothing_is_an_error() -> None:
    decay = {"rate": 0.5, "layers": LAYERS, "head": r"^fc\."}
    with pytest.raises(
        UserError, match=r"param_groups\.layer_decay\.head: .* matches no parameter"
    ):
        groups_of(Staged(), {"layer_decay": decay})


def test_rules_and_no_decay_split_within_each_layer() -> None:
    model = Staged()
    rules = [{"name": "head", "match": r"^head\.", "lr_mult": 10}]
    groups, _ = groups_of(
        model,
        {"rules": rules, "no_decay": ["bias"], "layer_decay": {"rate": 0.5, "layers": LAYERS}},
        weight_decay=0.01,
    )
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups][:3] == [
        ("head.layer03", 0.1 * 10, 0.01),  # the rule's lr, at the top layer's scale 1
        ("head.layer03.no_decay", 0.1 * 10, 0.0),
        ("default.layer00", 0.1 * 0.5**3, 0.01),
    ]
    assert groups[3]["name"] == "default.layer00.no_decay"
    assert lr_and_layer(groups, model)["stage1.0.bias"] == ("default.layer02.no_decay", 0.05)


def test_freezing_does_not_renumber_the_layers() -> None:
    model = Staged()
    decay = {"rate": 0.5, "layers": LAYERS}
    groups, _ = groups_of(model, {"freeze": [r"^(embed|stage0)\."], "layer_decay": decay})
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("default.layer01", 0.1 * 0.5**2),  # pool, frozen stage0's layer
        ("default.layer02", 0.1 * 0.5),
        ("default.layer03", 0.1),
    ]


def test_without_layer_decay_nothing_changes() -> None:
    groups, report = groups_of(Staged(), {})
    assert [(g["name"], g["lr"]) for g in groups] == [("default", 0.1)]
    assert "layer" not in report.to_json()["groups"][0]


def vit() -> nn.Module:
    """A 4-block ViT of timm's (offline: no pretrained weights) on 32x32 images."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=4
    )


# The recipe that reproduces timm's split (README, "timm models"): no decay on 1-D tensors and
# on the model's no_weight_decay() tensors (cls_token and pos_embed, 3-D) by a rule; the head
# alone on top, the final norm with the last block.
VIT_RECIPE = {
    "no_decay": ["1d"],
    "rules": [{"name": "embed", "match": "^(cls_token|pos_embed)$", "weight_decay": 0.0}],
    "layer_decay": {"rate": 0.75, "layers": r"^blocks\.(\d+)\.", "head": r"^head\."},
}


def test_equal_to_timms_param_groups_layer_decay_on_a_vit() -> None:
    from timm.optim import param_groups_layer_decay

    model = vit()
    lr, wd = 1e-3, 0.05
    ours, _ = groups_of(model, VIT_RECIPE, name="AdamW", lr=lr, weight_decay=wd)
    theirs = param_groups_layer_decay(
        model, weight_decay=wd, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.75
    )
    name_of = {id(p): n for n, p in model.named_parameters()}
    ours_by = {name_of[id(p)]: (g["lr"], g["weight_decay"]) for g in ours for p in g["params"]}
    theirs_by = {
        name_of[id(p)]: (lr * g["lr_scale"], g["weight_decay"]) for g in theirs for p in g["params"]
    }
    assert len(theirs_by) == len(name_of) == 56
    assert ours_by == theirs_by  # every parameter: the same lr and weight decay, exactly
    assert len({lr for lr, _ in ours_by.values()}) == 6  # embeddings, 4 blocks, head: decayed


def test_an_optimizer_built_from_the_groups_has_their_lrs() -> None:
    model = vit()
    config = OptimizerConfig.model_validate({"name": "AdamW", "lr": 1e-3, "weight_decay": 0.05})
    groups, _ = build_param_groups(
        model, optimizer_defaults(config), ParamGroupsConfig.model_validate(VIT_RECIPE)
    )
    optimizer = build_optimizer(config, groups)
    scales = {g["name"]: g["lr"] / 1e-3 for g in optimizer.param_groups}
    assert scales["default.layer05"] == 1.0
    assert scales["default.layer00.no_decay"] == pytest.approx(0.75**5, rel=1e-12)


@pytest.mark.parametrize(
    ("scheduler", "read"),
    [
        (
            {"name": "OneCycleLR", "max_lr": 0.4},
            lambda s: {"max_lr": [g["max_lr"] for g in s.optimizer.param_groups]},
        ),
        (
            {"name": "CyclicLR", "base_lr": 0.04, "max_lr": 0.4},
            lambda s: {"base_lr": s.base_lrs, "max_lr": s.max_lrs},
        ),
    ],
)
def test_cyclic_schedules_keep_the_layer_scales(
    scheduler: dict[str, Any], read: Callable[[Any], dict[str, list[float]]]
) -> None:
    model = Staged()
    groups, _ = groups_of(model, {"layer_decay": {"rate": 0.5, "layers": LAYERS}})
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    config = SchedulerConfig.model_validate({**scheduler, "interval": "step"})
    built = build_scheduler(config, optimizer, epochs=2, steps=5)
    for name, values in read(built).items():
        given = scheduler[name]
        assert values == [given * 0.5**3, given * 0.5**2, given * 0.5, given]


def test_warmup_and_a_multiplicative_schedule_keep_the_layer_scales() -> None:
    model = Staged()
    groups, _ = groups_of(model, {"layer_decay": {"rate": 0.5, "layers": LAYERS}})
    optimizer = torch.optim.SGD(groups, lr=0.1)
    config = SchedulerConfig.model_validate(
        {"name": "CosineAnnealingLR", "interval": "step", "warmup": {"steps": 2}}
    )
    scheduler = build_scheduler(config, optimizer, epochs=2, steps=5)
    assert scheduler is not None
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert [lr / lrs[-1] for lr in lrs] == pytest.approx([0.125, 0.25, 0.5, 1.0], rel=1e-12)


@pytest.mark.parametrize(
    ("decay", "expect"),
    [
        ({"rate": 0, "layers": LAYERS}, "param_groups.layer_decay.rate"),
        ({"rate": 1.5, "layers": LAYERS}, "param_groups.layer_decay.rate"),
        ({"rate": 0.5, "layers": r"^stage\d+\."}, "has 0 capture groups; it needs exactly one"),
        ({"rate": 0.5, "layers": r"^(stage)(\d+)\."}, "has 2 capture groups"),
        ({"rate": 0.5, "layers": "^stage(\\d+"}, "invalid regex"),
        ({"rate": 0.5}, "param_groups.layer_decay.layers"),
    ],
)
def test_bad_settings_are_config_errors(
    decay: dict[str, Any],
    expect: str,
    write_config: Callable[..., Any],
    tiny_yaml: str,
    user_error: Callable[..., str],
) -> None:
    path = write_config(tiny_yaml + f"param_groups: {{layer_decay: {json.dumps(decay)}}}\n")
    user_error("groups", path, expect=[expect])


def test_layers_that_match_nothing_name_the_closest_parameters() -> None:
    pattern = r"^block\.(\d+)"
    with pytest.raises(UserError) as caught:
        groups_of(Staged(), {"layer_decay": {"rate": 0.5, "layers": pattern}})
    message = str(caught.value)
    assert f"param_groups.layer_decay.layers: {pattern!r} matches no parameter" in message
    assert "closest names: " in message


def test_a_capture_that_is_not_an_index_is_an_error() -> None:
    with pytest.raises(UserError, match=r"captures 'embed' from 'embed\.weight'; its group must"):
        groups_of(Staged(), {"layer_decay": {"rate": 0.5, "layers": r"^(\w+)\."}})


def test_several_optimizers_each_decay_their_own_layers(
    write_config: Callable[..., Any], run_cli: Callable[..., Result]
) -> None:
    path = write_config(
        r"""
        name: two
        model: {name: "helpers.blocks:blocks_mlp", depth: 2}
        data: {name: shapes, num_classes: 4, size: 32, image_size: 8, batch_size: 16}
        optimizers:
          body:
            params: '^(embed|blocks)\.'
            optimizer: {name: SGD, lr: 0.1}
            param_groups: {layer_decay: {rate: 0.5, layers: '^blocks\.(\d+)\.'}}
          top:
            params: '^(norm|head)\.'
            optimizer: {name: SGD, lr: 0.2}
        trainer: {device: cpu}
        """
    )
    result = run_cli("groups", path, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [(g["name"], g["lr"]) for g in document["optimizers"]["body"]["groups"]] == [
        ("default.layer00", 0.1 * 0.25),  # embed; blocks.1 is this optimizer's top layer
        ("default.layer01", 0.1 * 0.5),
        ("default.layer02", 0.1),
    ]
    assert [(g["name"], g["lr"]) for g in document["optimizers"]["top"]["groups"]] == [
        ("default", 0.2)
    ]


def test_layer_decay_is_per_optimizer_with_several(
    write_config: Callable[..., Any], user_error: Callable[..., str]
) -> None:
    path = write_config(
        r"""
        name: two
        model: {name: "helpers.blocks:blocks_mlp"}
        data: {name: shapes}
        optimizers:
          all: {params: '.', optimizer: {name: SGD, lr: 0.1}}
        param_groups: {layer_decay: {rate: 0.5, layers: '^blocks\.(\d+)\.'}}
        """
    )
    user_error("groups", path, expect=["optimizers.<name>.param_groups.layer_decay"])


def test_validated_config_keeps_layer_decay() -> None:
    config = validate_config(
        {
            "name": "m",
            "model": {"name": "small_cnn"},
            "data": {"name": "shapes"},
            "param_groups": {"layer_decay": {"rate": 0.75, "layers": LAYERS}},
        }
    )
    assert config.param_groups.layer_decay is not None
    resolved = {"rate": 0.75, "layers": LAYERS, "head": None}
    assert config.to_dict()["param_groups"]["layer_decay"] == resolved
