"""build_param_groups: rules → torch param groups and a report (docs/concepts/param-groups.md)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

from trainer.components.optim import build_optimizer, optimizer_defaults
from trainer.components.param_groups import build_param_groups, clean_name
from trainer.config import OptimizerConfig, ParamGroupsConfig, validate_config
from trainer.errors import UserError

# ---------------------------------------------------------------- helpers


def tiny_model() -> nn.Sequential:
    """backbone.0.{weight,bias}, backbone.2.{weight,bias}, head.{weight,bias}."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
    return nn.Sequential(OrderedDict(backbone=backbone, head=nn.Linear(8, 2)))


class NormNet(nn.Module):
    """Biases, BatchNorm, LayerNorm, a bare 1-D parameter and bias-free weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.proj = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.scale = nn.Parameter(torch.ones(6))
        self.head = nn.Linear(6, 2, bias=False)


class TiedLM(nn.Module):
    """An embedding shared with the output layer: `head.weight` is `emb.weight`."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


class Wrapper(nn.Module):
    """Holds a model under `attribute`, as DDP (`module`) or torch.compile (`_orig_mod`) do."""

    def __init__(self, inner: nn.Module, attribute: str) -> None:
        super().__init__()
        setattr(self, attribute, inner)


def rules_config(**raw: Any) -> ParamGroupsConfig:
    return ParamGroupsConfig.model_validate(raw)


def sgd_options(**kwargs: Any) -> dict[str, Any]:
    return optimizer_defaults(OptimizerConfig(name="SGD", **kwargs))


def build(
    model: nn.Module, options: dict[str, Any], config: ParamGroupsConfig, optimizer: str = "SGD"
):
    return build_param_groups(model, options, config, optimizer=optimizer)


def params_of(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def group_by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {group["name"]: group for group in groups}


def assert_same_param_groups(built: torch.optim.Optimizer, by_hand: torch.optim.Optimizer) -> None:
    """Every key and value equal, and every parameter the very same tensor object."""
    assert type(built) is type(by_hand)
    assert built.defaults == by_hand.defaults
    assert len(built.param_groups) == len(by_hand.param_groups)
    for got, want in zip(built.param_groups, by_hand.param_groups, strict=True):
        assert got.keys() == want.keys()
        assert len(got["params"]) == len(want["params"])
        assert all(a is b for a, b in zip(got["params"], want["params"], strict=True))
        assert {k: v for k, v in got.items() if k != "params"} == {
            k: v for k, v in want.items() if k != "params"
        }


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    """A few steps on one fixed batch (the same batch for every caller)."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 4, generator=generator)
    targets = torch.randint(0, 2, (16,), generator=generator)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def raw_config(param_groups: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "t",
        "model": {"name": "small_cnn"},
        "data": {"name": "shapes"},
        "param_groups": param_groups,
    }


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("module.fc.weight", "fc.weight"),
        ("_orig_mod.fc.weight", "fc.weight"),
        ("module._orig_mod.layer1.0.conv1.weight", "layer1.0.conv1.weight"),
        ("_orig_mod.module.fc.bias", "fc.bias"),
        ("fc.weight", "fc.weight"),
        ("backbone.module.weight", "backbone.module.weight"),
        ("modules.0.weight", "modules.0.weight"),
    ],
)
def test_clean_name_strips_wrapper_prefixes_only_at_the_start(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


@pytest.mark.parametrize("attributes", [["module"], ["_orig_mod"], ["_orig_mod", "module"]])
def test_wrapped_model_resolves_to_clean_names(attributes: list[str]) -> None:
    inner = tiny_model()
    model: nn.Module = inner
    for attribute in attributes:
        model = Wrapper(model, attribute)
    assert next(iter(params_of(model))).startswith(attributes[-1] + ".")
    config = rules_config(
        freeze=[r"^backbone\.0\."],
        no_decay=["bias"],
        rules=[{"name": "head", "match": r"^head\.", "lr": 0.5}],
    )

    groups, report = build(model, sgd_options(lr=0.1, weight_decay=0.01), config)

    assert report.frozen_by_config == ["backbone.0.weight", "backbone.0.bias"]
    assert report.manifest() == {
        "head": ["head.weight"],
        "head.no_decay": ["head.bias"],
        "default": ["backbone.2.weight"],
        "default.no_decay": ["backbone.2.bias"],
    }
    inner_params = params_of(inner)
    assert group_by_name(groups)["head"]["params"][0] is inner_params["head.weight"]
    assert not inner_params["backbone.0.weight"].requires_grad


def test_tied_weights_appear_once_and_an_alias_name_matches() -> None:
    model = TiedLM()
    assert model.head.weight is model.emb.weight
    config = rules_config(rules=[{"name": "head", "match": r"^head\.", "lr": 0.5}])

    groups, report = build(model, sgd_options(lr=0.1), config)

    assert report.manifest() == {"head": ["emb.weight"], "default": ["mid.weight", "mid.bias"]}
    assert report.rule_hits == {"head": 1}
    ids = [id(p) for group in groups for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert len(ids) == len(set(ids)) == 3
    assert group_by_name(groups)["head"]["params"][0] is model.emb.weight
    optimizer = build_optimizer(OptimizerConfig(name="SGD", lr=0.1), groups)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 3


def test_freezing_an_alias_name_freezes_the_shared_tensor_once() -> None:
    model = TiedLM()
    _, report = build(model, sgd_options(lr=0.1), rules_config(freeze=[r"^head\."]))

    assert report.frozen_by_config == ["emb.weight"]
    assert not model.emb.weight.requires_grad
    assert report.manifest() == {"default": ["mid.weight", "mid.bias"]}


# ---------------------------------------------------------------- groups and values


def test_two_groups_with_their_own_lr_match_a_hand_written_optimizer() -> None:
    model = tiny_model()
    config = rules_config(rules=[{"name": "backbone", "match": r"^backbone\.", "lr": 1e-4}])
    optimizer_config = OptimizerConfig(name="SGD", lr=0.01, momentum=0.9)

    groups, report = build(model, optimizer_defaults(optimizer_config), config)
    built = build_optimizer(optimizer_config, groups)

    p = params_of(model)
    by_hand = torch.optim.SGD(
        [
            {
                "params": [p[n] for n in ("backbone.0.weight", "backbone.0.bias")]
                + [p[n] for n in ("backbone.2.weight", "backbone.2.bias")],
                "name": "backbone",
                "lr": 1e-4,
                "weight_decay": 0,
            },
            {
                "params": [p["head.weight"], p["head.bias"]],
                "name": "default",
                "lr": 0.01,
                "weight_decay": 0,
            },
        ],
        lr=0.01,
        momentum=0.9,
    )
    assert_same_param_groups(built, by_hand)
    assert [(g.name, g.rule, g.lr) for g in report.groups] == [
        ("backbone", "backbone", 1e-4),
        ("default", None, 0.01),
    ]
    assert report.rule_hits == {"backbone": 4}


def test_groups_are_plain_torch_groups_with_name_lr_and_weight_decay() -> None:
    model = tiny_model()
    config = rules_config(rules=[{"name": "head", "match": r"^head\.", "lr": 0.2}])

    groups, _ = build(model, sgd_options(lr=0.1, weight_decay=0.01), config)

    assert [sorted(group) for group in groups] == [
        ["lr", "name", "params", "weight_decay"],
        ["lr", "name", "params", "weight_decay"],
    ]
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("head", 0.2, 0.01),
        ("default", 0.1, 0.01),
    ]


def test_freeze_and_per_rule_lr_at_the_same_time() -> None:
    model = tiny_model()
    config = rules_config(
        freeze=[r"^backbone\.0\."],
        rules=[{"name": "backbone", "match": r"^backbone\.", "lr": 1e-4}],
    )

    groups, report = build(model, sgd_options(lr=0.01), config)

    p = params_of(model)
    assert [n for n, param in p.items() if not param.requires_grad] == [
        "backbone.0.weight",
        "backbone.0.bias",
    ]
    assert report.frozen_by_config == ["backbone.0.weight", "backbone.0.bias"]
    assert report.frozen_by_model == []
    assert report.manifest() == {
        "backbone": ["backbone.2.weight", "backbone.2.bias"],
        "default": ["head.weight", "head.bias"],
    }
    assert [g["lr"] for g in groups] == [1e-4, 0.01]
    in_groups = {id(param) for group in groups for param in group["params"]}
    assert id(p["backbone.0.weight"]) not in in_groups
    assert id(p["backbone.0.bias"]) not in in_groups


def test_tensors_the_model_froze_are_reported_apart() -> None:
    model = tiny_model()
    model.backbone[0].requires_grad_(False)
    config = rules_config(freeze=[r"^backbone\.2\.weight$"])

    _, report = build(model, sgd_options(lr=0.01), config)

    assert report.frozen_by_model == ["backbone.0.weight", "backbone.0.bias"]
    assert report.frozen_by_config == ["backbone.2.weight"]
    assert report.to_json()["frozen"] == [
        "backbone.2.weight",
        "backbone.0.weight",
        "backbone.0.bias",
    ]
    assert report.manifest() == {"default": ["backbone.2.bias", "head.weight", "head.bias"]}


def test_first_matching_rule_wins() -> None:
    model = tiny_model()
    config = rules_config(
        rules=[
            {"name": "first", "match": r"^backbone\.2\."},
            {"name": "second", "match": r"\.weight$", "lr": 0.5},
        ]
    )

    _, report = build(model, sgd_options(lr=0.01), config)

    assert report.manifest() == {
        "first": ["backbone.2.weight", "backbone.2.bias"],
        "second": ["backbone.0.weight", "head.weight"],
        "default": ["backbone.0.bias", "head.bias"],
    }
    assert report.rule_hits == {"first": 2, "second": 2}


def test_match_is_re_search_not_fullmatch() -> None:
    _, report = build(
        tiny_model(), sgd_options(), rules_config(rules=[{"name": "b", "match": "bias"}])
    )
    assert report.manifest()["b"] == ["backbone.0.bias", "backbone.2.bias", "head.bias"]


def test_lr_mult_and_wd_mult_multiply_the_optimizer_base_values() -> None:
    model = tiny_model()
    config = rules_config(
        rules=[{"name": "head", "match": r"^head\.", "lr_mult": 10, "wd_mult": 0.5}]
    )
    options = sgd_options(lr=0.01, weight_decay=5e-4)

    groups, report = build(model, options, config)

    head = group_by_name(groups)["head"]
    assert head["lr"] == 0.01 * 10
    assert head["weight_decay"] == 5e-4 * 0.5
    assert group_by_name(groups)["default"]["lr"] == 0.01
    assert group_by_name(groups)["default"]["weight_decay"] == 5e-4
    assert (report.groups[0].lr, report.groups[0].weight_decay) == (0.01 * 10, 5e-4 * 0.5)


def test_lr_mult_uses_the_optimizer_signature_default_when_the_config_has_no_lr() -> None:
    config = rules_config(rules=[{"name": "head", "match": r"^head\.", "lr_mult": 10}])
    options = optimizer_defaults(OptimizerConfig(name="SGD"))

    groups, _ = build(tiny_model(), options, config)

    assert options["lr"] == 1e-3
    assert [g["lr"] for g in groups] == [1e-3 * 10, 1e-3]


def test_absolute_lr_and_weight_decay_replace_the_base_values() -> None:
    config = rules_config(
        rules=[{"name": "head", "match": r"^head\.", "lr": 0.3, "weight_decay": 0.0}]
    )
    groups, _ = build(tiny_model(), sgd_options(lr=0.01, weight_decay=5e-4), config)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("head", 0.3, 0.0),
        ("default", 0.01, 5e-4),
    ]


def test_rule_momentum_reaches_the_torch_group_and_the_report_options() -> None:
    model = tiny_model()
    config = rules_config(
        rules=[{"name": "head", "match": r"^head\.", "momentum": 0.5, "nesterov": True}]
    )
    optimizer_config = OptimizerConfig(name="SGD", lr=0.01, momentum=0.9)

    groups, report = build(model, optimizer_defaults(optimizer_config), config)
    optimizer = build_optimizer(optimizer_config, groups)

    head, default = optimizer.param_groups
    assert (head["name"], head["momentum"], head["nesterov"]) == ("head", 0.5, True)
    assert (default["name"], default["momentum"], default["nesterov"]) == ("default", 0.9, False)
    assert report.groups[0].options == {"momentum": 0.5, "nesterov": True}
    assert report.groups[1].options == {}
    assert report.to_json()["groups"][0]["options"] == {"momentum": 0.5, "nesterov": True}


def test_optimizer_defaults_are_the_signature_then_the_config() -> None:
    sgd = optimizer_defaults(OptimizerConfig(name="SGD", lr=0.1, nesterov=True, momentum=0.9))
    assert {k: sgd[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov")} == {
        "lr": 0.1,
        "momentum": 0.9,
        "dampening": 0,
        "weight_decay": 0,
        "nesterov": True,
    }
    assert "params" not in sgd
    adamw = optimizer_defaults(OptimizerConfig(name="AdamW"))
    assert adamw["betas"] == (0.9, 0.999)
    assert adamw["weight_decay"] == 0.01


# ---------------------------------------------------------------- bit-for-bit against torch


def test_sgd_step_is_bitwise_equal_to_a_hand_written_optimizer() -> None:
    model = tiny_model()
    twin = copy.deepcopy(model)
    initial = copy.deepcopy(model.state_dict())
    optimizer_config = OptimizerConfig(
        name="SGD", lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True
    )
    config = rules_config(
        freeze=[r"^backbone\.0\."],
        no_decay=["bias"],
        rules=[{"name": "backbone", "match": r"^backbone\.", "lr": 1e-2, "momentum": 0.5}],
    )

    groups, _ = build(model, optimizer_defaults(optimizer_config), config)
    built = build_optimizer(optimizer_config, groups)

    def by_hand(target: nn.Module) -> torch.optim.SGD:
        p = params_of(target)
        return torch.optim.SGD(
            [
                {
                    "params": [p["backbone.2.weight"]],
                    "name": "backbone",
                    "lr": 1e-2,
                    "weight_decay": 1e-2,
                    "momentum": 0.5,
                },
                {
                    "params": [p["backbone.2.bias"]],
                    "name": "backbone.no_decay",
                    "lr": 1e-2,
                    "weight_decay": 0.0,
                    "momentum": 0.5,
                },
                {"params": [p["head.weight"]], "name": "default", "lr": 0.05, "weight_decay": 1e-2},
                {
                    "params": [p["head.bias"]],
                    "name": "default.no_decay",
                    "lr": 0.05,
                    "weight_decay": 0.0,
                },
            ],
            lr=0.05,
            momentum=0.9,
            weight_decay=1e-2,
            nesterov=True,
        )

    assert_same_param_groups(built, by_hand(model))

    twin.backbone[0].requires_grad_(False)
    twin_optimizer = by_hand(twin)
    train_steps(model, built)
    train_steps(twin, twin_optimizer)

    assert_same_weights(model, twin)
    after = model.state_dict()
    assert torch.equal(after["backbone.0.weight"], initial["backbone.0.weight"])
    assert not torch.equal(after["backbone.2.weight"], initial["backbone.2.weight"])
    assert not torch.equal(after["head.bias"], initial["head.bias"])


def test_adamw_with_betas_from_a_rule_is_bitwise_equal_to_a_hand_written_optimizer() -> None:
    model = tiny_model()
    twin = copy.deepcopy(model)
    optimizer_config = OptimizerConfig(name="AdamW", lr=1e-3, weight_decay=0.05)
    config = rules_config(
        no_decay=["bias"],
        rules=[
            {
                "name": "head",
                "match": r"^head\.",
                "lr_mult": 3,
                "betas": (0.8, 0.99),
                "eps": 1e-6,
            }
        ],
    )

    groups, report = build(model, optimizer_defaults(optimizer_config), config, "AdamW")
    built = build_optimizer(optimizer_config, groups)

    def by_hand(target: nn.Module) -> torch.optim.AdamW:
        p = params_of(target)
        head = {"lr": 1e-3 * 3, "betas": (0.8, 0.99), "eps": 1e-6}
        return torch.optim.AdamW(
            [
                {"params": [p["head.weight"]], "name": "head", "weight_decay": 0.05, **head},
                {"params": [p["head.bias"]], "name": "head.no_decay", "weight_decay": 0.0, **head},
                {
                    "params": [p["backbone.0.weight"], p["backbone.2.weight"]],
                    "name": "default",
                    "lr": 1e-3,
                    "weight_decay": 0.05,
                },
                {
                    "params": [p["backbone.0.bias"], p["backbone.2.bias"]],
                    "name": "default.no_decay",
                    "lr": 1e-3,
                    "weight_decay": 0.0,
                },
            ],
            lr=1e-3,
            weight_decay=0.05,
        )

    assert_same_param_groups(built, by_hand(model))
    assert report.groups[0].options == {"betas": (0.8, 0.99), "eps": 1e-6}

    twin_optimizer = by_hand(twin)
    train_steps(model, built)
    train_steps(twin, twin_optimizer)

    assert_same_weights(model, twin)


# ---------------------------------------------------------------- no_decay


NORM_NET_PARAMS = [
    "scale",
    "conv.weight",
    "conv.bias",
    "bn.weight",
    "bn.bias",
    "proj.weight",
    "proj.bias",
    "ln.weight",
    "ln.bias",
    "head.weight",
]


@pytest.mark.parametrize(
    ("kinds", "no_decay"),
    [
        (["bias"], ["conv.bias", "bn.bias", "proj.bias", "ln.bias"]),
        (["norm"], ["bn.weight", "bn.bias", "ln.weight", "ln.bias"]),
        (
            ["bias", "norm"],
            ["conv.bias", "bn.weight", "bn.bias", "proj.bias", "ln.weight", "ln.bias"],
        ),
        (
            ["1d"],
            ["scale", "conv.bias", "bn.weight", "bn.bias", "proj.bias", "ln.weight", "ln.bias"],
        ),
    ],
)
def test_no_decay_splits_biases_norm_weights_and_1d_tensors(
    kinds: list[str], no_decay: list[str]
) -> None:
    model = NormNet()
    assert list(params_of(model)) == NORM_NET_PARAMS

    groups, report = build(
        model, sgd_options(lr=0.1, weight_decay=5e-4), rules_config(no_decay=kinds)
    )

    decay = [name for name in NORM_NET_PARAMS if name not in no_decay]
    assert report.manifest() == {"default": decay, "default.no_decay": no_decay}
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("default", 0.1, 5e-4),
        ("default.no_decay", 0.1, 0.0),
    ]
    p = params_of(model)
    assert all(a is p[n] for a, n in zip(groups[1]["params"], no_decay, strict=True))


def test_no_decay_splits_each_rule_group_and_keeps_its_options() -> None:
    model = NormNet()
    config = rules_config(
        no_decay=["bias", "norm"],
        rules=[{"name": "top", "match": "^(ln|head)", "lr": 0.2, "momentum": 0.5}],
    )

    groups, report = build(model, sgd_options(lr=0.1, weight_decay=5e-4), config)

    assert report.manifest() == {
        "top": ["head.weight"],
        "top.no_decay": ["ln.weight", "ln.bias"],
        "default": ["scale", "conv.weight", "proj.weight"],
        "default.no_decay": ["conv.bias", "bn.weight", "bn.bias", "proj.bias"],
    }
    by_name = group_by_name(groups)
    assert (by_name["top.no_decay"]["lr"], by_name["top.no_decay"]["weight_decay"]) == (0.2, 0.0)
    assert by_name["top.no_decay"]["momentum"] == 0.5
    assert [g.rule for g in report.groups] == ["top", "top", None, None]
    assert report.rule_hits == {"top": 3}


def test_no_decay_with_zero_weight_decay_keeps_every_tensor_at_zero() -> None:
    model = NormNet()
    groups, _ = build(model, sgd_options(lr=0.1), rules_config(no_decay=["bias", "norm"]))
    assert {g["weight_decay"] for g in groups} == {0}
    assert sorted(n for g in groups for n in map(id, g["params"])) == sorted(
        map(id, model.parameters())
    )


def test_group_numel_counts_elements() -> None:
    model = NormNet()
    _, report = build(model, sgd_options(weight_decay=0.1), rules_config(no_decay=["1d"]))
    p = params_of(model)
    for group in report.groups:
        assert group.numel == sum(p[n].numel() for n in group.params)
    assert sum(g.numel for g in report.groups) == sum(x.numel() for x in model.parameters())


# ---------------------------------------------------------------- errors from build_param_groups


def problems_of(model: nn.Module, options: dict[str, Any], config: ParamGroupsConfig, **kw) -> list:
    with pytest.raises(UserError) as caught:
        build(model, options, config, **kw)
    return caught.value.problems


def test_freeze_pattern_that_matches_nothing_lists_the_closest_names() -> None:
    config = rules_config(freeze=["^backbone", "^heads"])
    (problem,) = problems_of(tiny_model(), sgd_options(), config)
    assert problem.startswith("param_groups.freeze.1: '^heads' matches no parameter")
    assert "closest names: head.bias, head.weight" in problem


def test_rule_that_matches_nothing_names_its_key_and_the_closest_names() -> None:
    config = rules_config(
        rules=[{"name": "body", "match": "^backbone"}, {"name": "top", "match": "^heads"}]
    )
    (problem,) = problems_of(tiny_model(), sgd_options(), config)
    assert problem.startswith("param_groups.rules.1.match: '^heads' matches no parameter")
    assert "head.weight" in problem


def test_rule_shadowed_by_earlier_rules_names_both_rules() -> None:
    config = rules_config(
        rules=[
            {"name": "backbone", "match": "^backbone"},
            {"name": "first_layer", "match": r"^backbone\.0\."},
        ]
    )
    (problem,) = problems_of(tiny_model(), sgd_options(), config)
    assert problem.startswith("param_groups.rules.1.match:")
    assert "'first_layer'" in problem
    assert "'backbone'" in problem


def test_rule_that_matches_only_frozen_tensors_is_an_error() -> None:
    config = rules_config(
        freeze=["^head"], rules=[{"name": "head", "match": r"^head\.", "lr": 0.5}]
    )
    (problem,) = problems_of(tiny_model(), sgd_options(), config)
    assert problem.startswith("param_groups.rules.0.match:")
    assert "frozen" in problem


def test_option_the_optimizer_does_not_take_is_an_error() -> None:
    config = rules_config(rules=[{"name": "head", "match": "^head", "betas": [0.9, 0.99]}])
    (problem,) = problems_of(tiny_model(), sgd_options(), config)
    assert problem.startswith("param_groups.rules.0.betas: not an option of SGD")
    assert "momentum" in problem


def test_misspelt_option_gets_a_did_you_mean() -> None:
    config = rules_config(rules=[{"name": "head", "match": "^head", "momentun": 0.5}])
    (problem,) = problems_of(tiny_model(), sgd_options(), config)
    assert "param_groups.rules.0.momentun" in problem
    assert "did you mean 'momentum'?" in problem


def test_weight_decay_settings_need_an_optimizer_with_weight_decay() -> None:
    options = optimizer_defaults(OptimizerConfig(name="LBFGS"))
    config = rules_config(
        no_decay=["bias"], rules=[{"name": "head", "match": "^head", "wd_mult": 2}]
    )
    problems = problems_of(tiny_model(), options, config, optimizer="LBFGS")
    assert problems == [
        "param_groups.rules.0.weight_decay: LBFGS has no weight_decay option",
        "param_groups.no_decay: LBFGS has no weight_decay option",
    ]


def test_nothing_left_to_train_is_an_error() -> None:
    (problem,) = problems_of(tiny_model(), sgd_options(), rules_config(freeze=["."]))
    assert "nothing left to train" in problem


def test_every_problem_is_reported_at_once() -> None:
    config = rules_config(
        freeze=["^nothing_here"],
        rules=[
            {"name": "backbone", "match": "^backbone"},
            {"name": "inner", "match": r"^backbone\.2"},
            {"name": "head", "match": "^head", "betas": [0.9, 0.99]},
        ],
    )
    problems = problems_of(tiny_model(), sgd_options(), config)
    assert [problem.split(":")[0] for problem in problems] == [
        "param_groups.freeze.0",
        "param_groups.rules.1.match",
        "param_groups.rules.2.betas",
    ]


@pytest.mark.parametrize("name", ["default", "head.no_decay"])
def test_rule_names_of_the_runners_own_groups_are_rejected(name: str) -> None:
    raw = {"name": "x", "model": {"name": "m"}, "data": {"name": "d"}}
    raw["param_groups"] = {"rules": [{"name": name, "match": r"^head\\.", "lr": 0.5}]}
    with pytest.raises(UserError, match=r"param_groups\.rules\.0\.name: 'default'"):
        validate_config(raw)


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {"name": "r", "match": "x", "lr": 0.1, "lr_mult": 2},
            "param_groups.rules.1.lr_mult: set lr or lr_mult, not both",
        ),
        (
            {"name": "r", "match": "x", "weight_decay": 0.1, "wd_mult": 2},
            "param_groups.rules.1.wd_mult: set weight_decay or wd_mult, not both",
        ),
        (
            {"name": "r", "match": "x", "lr": -0.1},
            "param_groups.rules.1.lr: Input should be greater than 0",
        ),
        (
            {"name": "r", "match": "x", "weight_decay": -1},
            "param_groups.rules.1.weight_decay: Input should be greater than or equal to 0",
        ),
        ({"name": "r"}, "param_groups.rules.1.match: required key is missing"),
    ],
)
def test_rule_validation_names_the_key_path(rule: dict[str, Any], expected: str) -> None:
    raw = raw_config({"rules": [{"name": "ok", "match": "fc"}, rule]})
    with pytest.raises(UserError) as caught:
        validate_config(raw)
    assert any(problem.startswith(expected) for problem in caught.value.problems), (
        caught.value.problems
    )


def test_both_lr_and_weight_decay_conflicts_are_reported_together() -> None:
    rule = {"name": "r", "match": "x", "lr": 0.1, "lr_mult": 2, "weight_decay": 0, "wd_mult": 1}
    with pytest.raises(UserError) as caught:
        validate_config(raw_config({"rules": [rule]}))
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "param_groups.rules.0.lr_mult",
        "param_groups.rules.0.wd_mult",
    ]


def test_invalid_rule_regexes_show_the_regex_and_the_position() -> None:
    raw = raw_config({"rules": [{"name": "a", "match": "("}, {"name": "b", "match": "^fc(a"}]})
    with pytest.raises(UserError) as caught:
        validate_config(raw)
    assert caught.value.problems == [
        "param_groups.rules.0.match: invalid regex '(': missing ), unterminated subpattern "
        "at position 0 (rule 'a', got '(')",
        "param_groups.rules.1.match: invalid regex '^fc(a': missing ), unterminated subpattern "
        "at position 3 (rule 'b', got '^fc(a')",
    ]


def test_invalid_freeze_regex_shows_the_regex_and_the_position() -> None:
    with pytest.raises(UserError) as caught:
        validate_config(raw_config({"freeze": ["^fc", "conv[12"]}))
    (problem,) = caught.value.problems
    assert problem.startswith("param_groups.freeze")
    assert "'conv[12'" in problem
    assert "position 4" in problem


def test_every_invalid_freeze_regex_is_reported_with_its_index() -> None:
    with pytest.raises(UserError) as caught:
        validate_config(raw_config({"freeze": ["(", "^fc", "conv[12"]}))
    problems = caught.value.problems
    assert any(p.startswith("param_groups.freeze.0") and "'('" in p for p in problems)
    assert any(p.startswith("param_groups.freeze.2") and "'conv[12'" in p for p in problems)


@pytest.mark.parametrize(
    ("param_groups", "expected"),
    [
        ({"no_decay": ["bn"]}, "param_groups.no_decay.0: Input should be 'bias', 'norm' or '1d'"),
        ({"freez": []}, "param_groups.freez: unknown key; did you mean 'freeze'?"),
        (
            {"rules": [{"name": "a", "match": "x"}, {"name": "a", "match": "y"}]},
            "param_groups.rules: rule names must be unique; repeated: a",
        ),
    ],
)
def test_param_groups_section_validation(param_groups: dict[str, Any], expected: str) -> None:
    with pytest.raises(UserError) as caught:
        validate_config(raw_config(param_groups))
    (problem,) = caught.value.problems
    assert problem.startswith(expected)


def test_rule_keeps_optimizer_keywords_as_options() -> None:
    config = validate_config(
        raw_config(
            {
                "rules": [
                    {"name": "a", "match": "x", "lr_mult": 2, "momentum": 0.5, "nesterov": True}
                ]
            }
        )
    )
    (rule,) = config.param_groups.rules
    assert (rule.lr, rule.lr_mult, rule.weight_decay, rule.wd_mult) == (None, 2.0, None, None)
    assert rule.options == {"momentum": 0.5, "nesterov": True}
