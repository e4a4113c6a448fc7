"""`trainer groups CONFIG [KEY=VALUE...] [--names] [--json]`: resolved param groups, no training."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.models import small_cnn
from trainer.components.previews import plan_param_groups
from trainer.config import load_config

SMALL_CNN = """\
    name: cli-groups
    model: {name: small_cnn, num_classes: 4}
    data: {name: shapes}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}
"""

WITH_RULES = (
    SMALL_CNN
    + r"""
    param_groups:
      freeze: ['^conv1\.', '^bn1\.']
      no_decay: [bias, norm]
      rules:
        - {name: features, match: '^(conv|bn)[23]\.', lr: 0.01}
        - {name: head, match: '^fc\.', lr_mult: 10, momentum: 0.5}
"""
)

# Every option a group's optimizer will use is shown, defaults filled in.
SGD_DEFAULTS = "momentum=0.9, dampening=0, nesterov=False, maximize=False"
HEAD_OPTIONS = "momentum=0.5, dampening=0, nesterov=False, maximize=False"
SGD_OPTIONS = {"momentum": 0.9, "dampening": 0, "nesterov": False, "maximize": False}

RESNET18 = r"""
    name: finetune-resnet
    model: {name: resnet18, weights: null, num_classes: 10, init_from: no/such/weights.pt}
    data: {name: shapes}
    optimizer: {name: SGD, lr: 0.01, momentum: 0.9, weight_decay: 5.0e-4, nesterov: true}
    param_groups:
      freeze: ['^conv1\.', '^bn1\.', '^layer1\.']
      no_decay: [bias, norm]
      rules:
        - {name: backbone, match: '^layer[2-4]\.', lr: 1.0e-4}
        - {name: head,     match: '^fc\.',         lr_mult: 10}
"""

# A model from an import path: an embedding tied to the output layer, optionally wrapped
# (as DDP and torch.compile do) and with a tensor the model froze itself.
TIED_MODULE = """\
from torch import nn


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


class Wrapper(nn.Module):
    def __init__(self, inner, attribute):
        super().__init__()
        setattr(self, attribute, inner)


def build(wrap=None, freeze_mid_bias=False):
    model = TiedLM()
    if freeze_mid_bias:
        model.mid.bias.requires_grad_(False)
    return Wrapper(model, wrap) if wrap else model
"""

SMALL_CNN_NAMES = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "conv2.weight",
    "bn2.weight",
    "bn2.bias",
    "conv3.weight",
    "bn3.weight",
    "bn3.bias",
    "fc.weight",
    "fc.bias",
]


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def groups(*args: str | Path):
    return CliRunner().invoke(app, ["groups", *map(str, args)])


def tied_model_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> Path:
    (tmp_path / "tied_lm_for_groups.py").write_text(TIED_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tied_lm_for_groups", raising=False)
    return write_config(
        tmp_path,
        f"""\
        name: tied
        model: {{name: 'tied_lm_for_groups:build'{extra}}}
        data: {{name: shapes}}
        optimizer: {{name: SGD, lr: 0.1}}
        """,
    )


def table_rows(output: str, title: str) -> list[list[str]]:
    """The body rows of the rich table printed under `title`, as lists of cell texts."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def table_header(output: str, title: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    header = next(line for line in lines[start + 1 :] if line.startswith("┃"))
    return [cell.strip() for cell in header.strip("┃").split("┃")]


# ---------------------------------------------------------------- the table


def test_table_lists_groups_then_frozen_counts_and_rule_hits(tmp_path: Path) -> None:
    result = groups(write_config(tmp_path, WITH_RULES))

    assert result.exit_code == 0, result.output
    assert table_header(result.stdout, "param groups") == [
        "group",
        "rule",
        "tensors",
        "elements",
        "lr",
        "weight_decay",
        "options",
    ]
    assert table_rows(result.stdout, "param groups") == [
        ["features", "features", "2", "23,040", "0.01", "0.0001", SGD_DEFAULTS],
        ["features.no_decay", "features", "4", "192", "0.01", "0", SGD_DEFAULTS],
        ["head", "head", "1", "256", "1", "0.0001", HEAD_OPTIONS],
        ["head.no_decay", "head", "1", "4", "1", "0", HEAD_OPTIONS],
    ]
    assert "frozen: 3 tensors by param_groups.freeze, 0 by the model" in result.stdout
    assert "rule hits (tensors): features 6, head 2" in result.stdout
    assert "parameters" not in result.stdout


def test_table_without_rules_has_one_default_group(tmp_path: Path) -> None:
    result = groups(write_config(tmp_path, SMALL_CNN))

    assert result.exit_code == 0, result.output
    assert table_rows(result.stdout, "param groups") == [
        ["default", "-", "11", "23,956", "0.1", "0.0001", SGD_DEFAULTS],
    ]
    assert "frozen: 0 tensors by param_groups.freeze, 0 by the model" in result.stdout
    assert "rule hits" not in result.stdout


def test_overrides_apply_before_the_groups_are_resolved(tmp_path: Path) -> None:
    result = groups(
        write_config(tmp_path, WITH_RULES),
        "optimizer.lr=0.2",
        "param_groups.freeze=[]",
        "param_groups.no_decay=[]",
    )

    assert result.exit_code == 0, result.output
    assert table_rows(result.stdout, "param groups") == [
        ["features", "features", "6", "23,232", "0.01", "0.0001", SGD_DEFAULTS],
        ["head", "head", "2", "260", "2", "0.0001", HEAD_OPTIONS],
        ["default", "-", "3", "464", "0.2", "0.0001", SGD_DEFAULTS],
    ]
    assert "frozen: 0 tensors by param_groups.freeze, 0 by the model" in result.stdout


def test_names_lists_every_parameter_with_its_group(tmp_path: Path) -> None:
    result = groups(write_config(tmp_path, WITH_RULES), "--names")

    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout, "parameters")
    assert [row[0] for row in rows] == SMALL_CNN_NAMES
    assert {name: group for name, _, group in rows} == {
        "conv1.weight": "frozen (param_groups.freeze)",
        "bn1.weight": "frozen (param_groups.freeze)",
        "bn1.bias": "frozen (param_groups.freeze)",
        "conv2.weight": "features",
        "bn2.weight": "features.no_decay",
        "bn2.bias": "features.no_decay",
        "conv3.weight": "features",
        "bn3.weight": "features.no_decay",
        "bn3.bias": "features.no_decay",
        "fc.weight": "head",
        "fc.bias": "head.no_decay",
    }
    assert dict((name, shape) for name, shape, _ in rows)["conv2.weight"] == "32x16x3x3"
    assert table_rows(result.stdout, "param groups")[0][0] == "features"


# ---------------------------------------------------------------- --json


def test_json_round_trips_and_lists_every_trainable_parameter_once(tmp_path: Path) -> None:
    result = groups(write_config(tmp_path, WITH_RULES), "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert {"groups", "frozen", "unmatched_rules"} <= document.keys()
    assert document["unmatched_rules"] == []
    assert document["frozen"] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    listed = [name for group in document["groups"] for name in group["params"]]
    assert sorted(listed) == sorted(set(SMALL_CNN_NAMES) - set(document["frozen"]))
    assert len(listed) == len(set(listed))

    shapes = {name: p.numel() for name, p in small_cnn(num_classes=4).named_parameters()}
    for group in document["groups"]:
        assert group["numel"] == sum(shapes[name] for name in group["params"])
    summary = [
        (g["name"], g["rule"], g["lr"], g["weight_decay"], g["options"]) for g in document["groups"]
    ]
    assert summary == [
        ("features", "features", 0.01, 1e-4, SGD_OPTIONS),
        ("features.no_decay", "features", 0.01, 0.0, SGD_OPTIONS),
        ("head", "head", 0.1 * 10, 1e-4, {**SGD_OPTIONS, "momentum": 0.5}),
        ("head.no_decay", "head", 0.1 * 10, 0.0, {**SGD_OPTIONS, "momentum": 0.5}),
    ]
    assert document["groups"][1]["params"] == ["bn2.weight", "bn2.bias", "bn3.weight", "bn3.bias"]
    assert set(document["groups"][0]) == {
        "name",
        "rule",
        "lr",
        "weight_decay",
        "options",
        "params",
        "numel",
    }


def test_json_lists_tied_weights_once_and_alias_rules_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tied_model_config(tmp_path, monkeypatch, "")
    rule = "param_groups.rules=[{name: out, match: '^head', lr: 0.5}]"

    result = groups(config, rule, "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [(g["name"], g["params"], g["numel"]) for g in document["groups"]] == [
        ("out", ["emb.weight"], 40),
        ("default", ["mid.weight", "mid.bias"], 20),
    ]
    assert document["frozen"] == []


@pytest.mark.parametrize("wrap", ["module", "_orig_mod"])
def test_wrapped_model_shows_clean_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrap: str
) -> None:
    config = tied_model_config(tmp_path, monkeypatch, f", wrap: {wrap}")
    freeze = "param_groups.freeze=['^mid\\.bias$']"

    as_json = groups(config, freeze, "--json")
    as_names = groups(config, freeze, "--names")

    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["groups"][0]["params"] == ["emb.weight", "mid.weight"]
    assert document["frozen"] == ["mid.bias"]
    assert as_names.exit_code == 0, as_names.output
    assert [row[0] for row in table_rows(as_names.stdout, "parameters")] == [
        "emb.weight",
        "mid.weight",
        "mid.bias",
    ]
    assert wrap + "." not in as_names.stdout


def test_tensors_the_model_froze_are_counted_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tied_model_config(tmp_path, monkeypatch, ", freeze_mid_bias: true")

    table = groups(config, "param_groups.freeze=['^emb']", "--names")
    document = json.loads(groups(config, "param_groups.freeze=['^emb']", "--json").stdout)

    assert table.exit_code == 0, table.output
    assert "frozen: 1 tensors by param_groups.freeze, 1 by the model" in table.stdout
    assert {row[0]: row[2] for row in table_rows(table.stdout, "parameters")} == {
        "emb.weight": "frozen (param_groups.freeze)",
        "mid.weight": "default",
        "mid.bias": "frozen (by the model)",
    }
    assert sorted(document["frozen"]) == ["emb.weight", "mid.bias"]
    assert [g["params"] for g in document["groups"]] == [["mid.weight"]]


# ---------------------------------------------------------------- resnet18 on meta


def test_resnet18_design_example(tmp_path: Path) -> None:
    config = write_config(tmp_path, RESNET18)

    as_json = groups(config, "--json")
    table = groups(config)

    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    frozen = document["frozen"]
    assert len(frozen) == 15
    assert frozen[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert all(name.startswith("layer1.") for name in frozen[3:])
    assert document["rule_hits"] == {"backbone": 45, "head": 2}
    assert [
        (g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in document["groups"]
    ] == [
        ("backbone", 1e-4, 5e-4, 15),
        ("backbone.no_decay", 1e-4, 0.0, 30),
        ("head", 0.01 * 10, 5e-4, 1),
        ("head.no_decay", 0.01 * 10, 0.0, 1),
    ]
    assert document["groups"][2]["params"] == ["fc.weight"]
    assert document["groups"][2]["numel"] == 512 * 10
    listed = [name for group in document["groups"] for name in group["params"]]
    assert len(listed) + len(frozen) == 62
    assert len(set(listed) | set(frozen)) == 62
    assert table.exit_code == 0, table.output
    assert "frozen: 15 tensors by param_groups.freeze, 0 by the model" in table.stdout
    assert "rule hits (tensors): backbone 45, head 2" in table.stdout


def test_plan_param_groups_builds_resnet18_on_meta(tmp_path: Path) -> None:
    model, planned = plan_param_groups(load_config(write_config(tmp_path, RESNET18)))
    report = planned[0].report

    devices = {param.device.type for param in model.parameters()}
    assert devices == {"meta"}
    assert len(report.frozen_by_config) == 15
    assert report.rule_hits == {"backbone": 45, "head": 2}
    assert not model.conv1.weight.requires_grad
    assert model.layer2[0].conv1.weight.requires_grad


def test_missing_init_from_file_does_not_matter_for_groups(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, SMALL_CNN.replace("num_classes: 4}", "num_classes: 4, init_from: nowhere.pt}")
    )
    assert "init_from: nowhere.pt" in config.read_text()

    result = groups(config, "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["groups"][0]["params"] == SMALL_CNN_NAMES


# ---------------------------------------------------------------- errors: exit 2, no traceback


def param_groups_config(tmp_path: Path, block: str, optimizer: str = "") -> Path:
    text = textwrap.dedent(SMALL_CNN) + textwrap.dedent(block)
    if optimizer:
        text = text.replace(
            "optimizer: {name: SGD, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}", optimizer
        )
    return write_config(tmp_path, text)


ERROR_CASES = {
    "freeze matches nothing": (
        """
        param_groups:
          freeze: ['^conv1', '^conv9']
        """,
        ["param_groups.freeze.1", "'^conv9' matches no parameter", "closest names", "conv1.weight"],
    ),
    "rule matches nothing": (
        """
        param_groups:
          rules:
            - {name: body, match: '^conv'}
            - {name: top, match: '^heads'}
        """,
        ["param_groups.rules.1.match", "'^heads' matches no parameter", "closest names"],
    ),
    "rule shadowed by an earlier rule": (
        """
        param_groups:
          rules:
            - {name: convs, match: '^conv'}
            - {name: first_conv, match: '^conv1'}
        """,
        ["param_groups.rules.1.match", "'first_conv'", "'convs'"],
    ),
    "lr and lr_mult": (
        """
        param_groups:
          rules: [{name: head, match: '^fc', lr: 0.1, lr_mult: 2}]
        """,
        ["param_groups.rules.0.lr_mult", "set lr or lr_mult, not both"],
    ),
    "weight_decay and wd_mult": (
        """
        param_groups:
          rules: [{name: head, match: '^fc', weight_decay: 0.1, wd_mult: 2}]
        """,
        ["param_groups.rules.0.wd_mult", "set weight_decay or wd_mult, not both"],
    ),
    "betas with SGD": (
        """
        param_groups:
          rules: [{name: head, match: '^fc', betas: [0.9, 0.99]}]
        """,
        ["param_groups.rules.0.betas", "not an option of SGD"],
    ),
    "invalid rule regex": (
        """
        param_groups:
          rules: [{name: head, match: 'fc(weight'}]
        """,
        ["param_groups.rules.0.match", "invalid regex 'fc(weight'", "position 2"],
    ),
    "invalid freeze regex": (
        """
        param_groups:
          freeze: ['conv[12']
        """,
        ["param_groups.freeze", "invalid regex 'conv[12'", "position 4"],
    ),
    "nothing left to train": (
        """
        param_groups:
          freeze: ['.']
        """,
        ["param_groups.freeze", "nothing left to train"],
    ),
    "unknown no_decay kind": (
        """
        param_groups:
          no_decay: [bias, bn]
        """,
        ["param_groups.no_decay.1", "'bias', 'norm' or '1d'"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_exit_2_with_the_key_path_and_no_traceback(tmp_path: Path, case: str) -> None:
    block, expected = ERROR_CASES[case]

    result = groups(param_groups_config(tmp_path, block))

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    for text in expected:
        assert text in result.stderr
    assert "Traceback" not in result.output


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    block = """
        param_groups:
          freeze: ['^conv9']
          rules:
            - {name: convs, match: '^conv'}
            - {name: conv2_only, match: '^conv2'}
            - {name: head, match: '^fc', betas: [0.9, 0.99]}
        """

    result = groups(param_groups_config(tmp_path, block))

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "param_groups.freeze.0",
        "param_groups.rules.1.match",
        "param_groups.rules.2.betas",
    ]
    assert "'conv2_only'" in lines[1]
    assert "'convs'" in lines[1]


def test_adamw_takes_betas_from_a_rule(tmp_path: Path) -> None:
    block = """
        param_groups:
          rules: [{name: head, match: '^fc', betas: [0.8, 0.99], eps: 1.0e-6}]
        """
    config = param_groups_config(
        tmp_path, block, optimizer="optimizer: {name: AdamW, lr: 1.0e-3, weight_decay: 0.05}"
    )

    result = groups(config, "--json")

    assert result.exit_code == 0, result.output
    head = json.loads(result.stdout)["groups"][0]
    assert (head["name"], head["lr"], head["weight_decay"]) == ("head", 1e-3, 0.05)
    assert head["options"] == {
        "betas": [0.8, 0.99],
        "eps": 1e-6,
        "amsgrad": False,
        "maximize": False,
    }
