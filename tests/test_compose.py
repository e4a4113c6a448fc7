"""Configs that compose: `base:` files, several config files on the command line, `~key`
deletions, where each value came from (`trainer config --origin`), and every command that
takes CONFIG taking them all."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from trainer.cli import config_arguments
from trainer.config import MAX_BASE_DEPTH, load_config, parse_yaml, read_configs
from trainer.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def base_yaml(tiny_yaml: str) -> str:
    """The tiny config without its `name` (so the name comes from a file's stem), lines:
    seed 1, model 2, data 3, loss 4, optimizer 5, trainer 6."""
    return tiny_yaml.replace("name: tiny\n", "")


def shown(result: Result) -> dict:
    """The config `trainer config` printed, as data."""
    assert result.exit_code == 0, result.output
    return parse_yaml(result.stdout, source="stdout")


# ---------------------------------------------------------------- merging


def test_mappings_merge_deeply_lists_and_scalars_replace_null_stays_a_value(
    write_config: Callable[..., Path], base_yaml: str
) -> None:
    extra = "param_groups: {no_decay: [bias, norm]}\nscheduler: {name: StepLR, step_size: 2}\n"
    write_config(base_yaml + extra, "base.yaml")
    small = write_config(
        """
        base: base.yaml
        optimizer: {lr: 0.05}
        param_groups: {no_decay: [bias]}
        scheduler: {gamma: 0.1}
        checkpoint: {keep_last: null}
        seed: 7
        """,
        "small.yaml",
    )
    raw = read_configs(small).raw
    assert raw["optimizer"] == {"name": "SGD", "lr": 0.05, "momentum": 0.9}
    assert raw["param_groups"] == {"no_decay": ["bias"]}
    assert raw["scheduler"] == {"name": "StepLR", "step_size": 2, "gamma": 0.1}
    assert raw["trainer"] == {"epochs": 2, "device": "cpu", "log_every": 2}
    assert raw["seed"] == 7
    assert "base" not in raw
    config = load_config(small)
    assert config.checkpoint.keep_last is None  # a value, not the default (3)
    assert load_config(write_config(base_yaml, "plain.yaml")).checkpoint.keep_last == 3


def test_a_merge_into_an_aliased_mapping_changes_that_use_alone(
    write_config: Callable[..., Path], base_yaml: str
) -> None:
    write_config(base_yaml + "first: &shared {a: 1, b: 1}\nsecond: *shared\n", "base.yaml")
    child = write_config("base: base.yaml\nfirst: {a: 2}\n~second.b:\n", "child.yaml")
    raw = read_configs(child).raw
    assert (raw["first"], raw["second"]) == ({"a": 2, "b": 1}, {"a": 1})


def test_bases_merge_in_order_relative_to_the_file_that_names_them(
    tmp_path: Path, write_config: Callable[..., Path], base_yaml: str, monkeypatch
) -> None:
    for folder in ("shared", "variants", "elsewhere"):
        (tmp_path / folder).mkdir()
    write_config(base_yaml, "shared/base.yaml")
    write_config(
        "base: base.yaml\noptimizer: {lr: 0.2}\ntrainer: {epochs: 3}\n", "shared/long.yaml"
    )
    write_config("optimizer: {lr: 0.3, momentum: 0.5}\n", "variants/fast.yaml")
    write_config(
        "base: [../shared/long.yaml, fast.yaml]\noptimizer: {momentum: 0.8}\n",
        "variants/child.yaml",
    )
    monkeypatch.chdir(tmp_path / "elsewhere")  # bases are found from the file, not from here
    composed = read_configs("../variants/child.yaml")
    config = load_config("../variants/child.yaml")
    assert (config.optimizer.lr, config.optimizer.momentum) == (0.3, 0.8)  # fast, then child
    assert config.trainer.epochs == 3  # long over base
    assert config.name == "child"
    assert composed.origins[("optimizer", "lr")] == "../variants/fast.yaml:1"
    assert composed.origins[("optimizer", "momentum")] == "../variants/child.yaml:2"
    assert composed.origins[("trainer", "epochs")] == "../shared/long.yaml:3"
    assert composed.origins[("trainer", "device")] == "../shared/base.yaml:6"
    assert [str(p) for p in composed.files] == [
        "../variants/child.yaml",
        "../shared/long.yaml",
        "../shared/base.yaml",
        "../variants/fast.yaml",
    ]


def test_a_deletion_removes_a_key_and_with_the_key_replaces_a_section(
    write_config: Callable[..., Path], base_yaml: str
) -> None:
    write_config(base_yaml, "base.yaml")
    deleted = write_config(
        """
        base: base.yaml
        ~optimizer.momentum:
        ~model.width:
        model: {num_classes: 4}
        ~loss:
        """,
        "deleted.yaml",
    )
    raw = read_configs(deleted).raw
    assert raw["optimizer"] == {"name": "SGD", "lr": 0.1}
    assert raw["model"] == {"name": "small_cnn", "num_classes": 4, "in_channels": 3}
    assert "loss" not in raw
    assert load_config(deleted).loss.name == "CrossEntropyLoss"  # back to the default

    replace = "base: base.yaml\n~optimizer:\noptimizer: {name: Adam, lr: 0.01}\n"
    assert read_configs(write_config(replace, "adam.yaml")).raw["optimizer"] == {
        "name": "Adam",
        "lr": 0.01,
    }
    merged = read_configs(write_config(replace.replace("~optimizer:\n", ""), "merged.yaml"))
    assert merged.raw["optimizer"]["momentum"] == 0.9  # without the deletion: merged in


def test_several_files_on_the_command_line_then_overrides_and_deletions(
    write_config: Callable[..., Path], base_yaml: str, run_cli: Callable[..., Result]
) -> None:
    write_config(base_yaml, "base.yaml")
    write_config("optimizer: {lr: 0.05}\ntrainer: {epochs: 1}\n", "small.yaml")
    write_config("~optimizer.momentum:\nmodel: {width: 8}\noptimizer: {lr: 0.01}\n", "wide.yaml")
    config = shown(run_cli("config", "base.yaml", "small.yaml", "wide.yaml", "seed=3"))
    assert config["name"] == "wide"  # the last file's stem
    assert config["optimizer"] == {"name": "SGD", "lr": 0.01}  # wide deleted base's momentum
    assert (config["model"]["width"], config["trainer"]["epochs"], config["seed"]) == (8, 1, 3)
    config = shown(run_cli("config", "base.yaml", "small.yaml", "~optimizer.momentum", "seed=4"))
    assert (config["name"], config["optimizer"], config["seed"]) == (
        "small",
        {"name": "SGD", "lr": 0.05},
        4,
    )


def test_the_name_is_the_last_files_own_or_its_stem(
    write_config: Callable[..., Path], base_yaml: str
) -> None:
    base = write_config(base_yaml, "base.yaml")
    named = write_config("name: family\n" + base_yaml, "named.yaml")
    child = write_config("base: named.yaml\n", "child.yaml")
    renamed = write_config("base: named.yaml\nname: mine\n", "renamed.yaml")
    assert load_config(named).name == "family"
    assert load_config(child).name == "child"  # a base's name is not inherited
    assert load_config(renamed).name == "mine"
    assert load_config([named, write_config("seed: 1\n", "variant.yaml")]).name == "variant"
    assert load_config([child, named]).name == "family"
    assert load_config([base, write_config("seed: 1\n", "v.yaml")]).name == "v"
    assert load_config(child, ["name=set"]).name == "set"
    assert load_config(named, ["~name"]).name == "named"  # deleted: the stem again


def test_config_arguments_split_files_from_overrides() -> None:
    assert config_arguments("a.yaml", ["b.yaml", "c.yml", "x=1", "~y.z", "w=a=b"]) == (
        ["a.yaml", "b.yaml", "c.yml"],
        ["x=1", "~y.z", "w=a=b"],
    )
    assert config_arguments("a.yaml", None) == (["a.yaml"], [])
    with pytest.raises(UserError, match=r"b\.yaml: config files come before KEY=VALUE overrides"):
        config_arguments("a.yaml", ["x=1", "b.yaml"])


@pytest.mark.parametrize(
    "command", ["fit", "eval", "groups", "schedule", "config", "lr-find", "sweep"]
)
def test_every_command_taking_config_shows_the_form(command: str, run_cli: Callable) -> None:
    result = run_cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"{command} [OPTIONS] CONFIG [CONFIG...] [KEY=VALUE]..." in result.stdout


# ---------------------------------------------------------------- where each value came from


def test_origin_names_the_file_and_line_the_override_or_the_default(
    write_config: Callable[..., Path], base_yaml: str, run_cli: Callable[..., Result]
) -> None:
    write_config(base_yaml, "base.yaml")
    write_config("base: base.yaml\n\noptimizer:\n  lr: 0.05\n", "small.yaml")
    args = ["config", "small.yaml", "trainer.log_every=5", "data.batch_size=16"]
    result = run_cli(*args, "--origin")
    assert result.exit_code == 0, result.output
    origins = {}
    for line in result.stdout.splitlines():
        text, _, origin = line.partition("  # ")
        origins[text.strip()] = origin
    assert origins["name: small"] == "default: the stem of small.yaml"
    assert origins["lr: 0.05"] == "small.yaml:4"
    assert origins["momentum: 0.9"] == "base.yaml:5"
    assert origins["log_every: 5"] == "override trainer.log_every=5"
    assert origins["batch_size: 16"] == "override data.batch_size=16"
    assert origins["image_size: 16"] == "base.yaml:3"
    assert origins["keep_last: 3"] == "default"
    assert origins["optimizer:"] == ""  # a section: its values say where they came from
    assert re.search(r"^  lr: 0\.05 +# small\.yaml:4$", result.stdout, re.MULTILINE)
    # The annotated config is the resolved config: it loads back as the same.
    assert shown(result) == shown(run_cli(*args))


def test_a_bad_value_names_the_file_and_line_that_set_it(
    write_config: Callable[..., Path], base_yaml: str, user_error: Callable[..., str]
) -> None:
    write_config(base_yaml, "base.yaml")
    write_config("base: base.yaml\ntrainer: {epochs: ten}\n", "small.yaml")
    user_error(
        "config",
        "small.yaml",
        "optimizer.lr=-1",
        expect=[
            "trainer.epochs: Input should be a valid integer (got 'ten') (set in small.yaml:2)",
            "optimizer.lr: -1 is out of range",
            "(set in override optimizer.lr=-1)",
        ],
    )


# ---------------------------------------------------------------- errors: exit 2


def chain(count: int) -> dict[str, str]:
    """c0.yaml -> c1.yaml -> ... -> c<count-1>.yaml (the last one the tiny config)."""
    files = {f"c{i}.yaml": f"base: c{i + 1}.yaml\n" for i in range(count - 1)}
    return files | {f"c{count - 1}.yaml": "BASE"}


BAD = [
    (
        "missing-base",
        {"child.yaml": "seed: 1\nbase: nothere.yaml\n"},
        ["child.yaml"],
        ["child.yaml:2: base: nothere.yaml: no such file"],
    ),
    (
        "cycle",
        {"a.yaml": "base: b.yaml\n", "b.yaml": "base: [base.yaml, a.yaml]\n"},
        ["a.yaml"],
        ["b.yaml:1: base: a cycle of bases: a.yaml -> b.yaml -> a.yaml"],
    ),
    ("itself", {"a.yaml": "base: a.yaml\n"}, ["a.yaml"], ["a cycle of bases: a.yaml -> a.yaml"]),
    (
        "base-not-a-mapping",
        {"child.yaml": "base: list.yaml\n", "list.yaml": "- 1\n- 2\n"},
        ["child.yaml"],
        ["child.yaml: base list.yaml: expected a mapping of sections at the top, got a list"],
    ),
    (
        "base-not-a-name",
        {"child.yaml": "base: [base.yaml, 3]\n"},
        ["child.yaml"],
        [
            "child.yaml:1: base: expected a file name or a list of file names",
            "got ['base.yaml', 3]",
        ],
    ),
    (
        "too-deep",
        chain(MAX_BASE_DEPTH + 1),
        ["c0.yaml"],
        [f"c{MAX_BASE_DEPTH - 1}.yaml:1: base: bases nest more than 16 files deep (c0.yaml -> "],
    ),
    (
        "delete-nothing",
        {"child.yaml": "base: base.yaml\n\n~optimizer.momentun:\n"},
        ["child.yaml"],
        [
            "child.yaml:3: ~optimizer.momentun: nothing to delete: no key optimizer.momentun is "
            "set by its bases or the config files before it; did you mean 'momentum'?"
        ],
    ),
    (
        "delete-inside-a-section",
        {"child.yaml": "base: base.yaml\noptimizer:\n  lr: 0.2\n  ~momentum:\n"},
        ["child.yaml"],
        [
            "child.yaml:4: optimizer.~momentum: a deletion stands at the top of a file, its key "
            "dotted: ~optimizer.momentum:"
        ],
    ),
    (
        "delete-with-a-value",
        {"child.yaml": "base: base.yaml\n~optimizer: {name: Adam}\n"},
        ["child.yaml"],
        ["child.yaml:2: ~optimizer: a deletion takes no value, got {'name': 'Adam'}"],
    ),
    (
        "delete-override-nothing",
        {},
        ["base.yaml", "~optimizer.momentun"],
        [
            "override '~optimizer.momentun': nothing to delete: no key optimizer.momentun is set "
            "by the config files; did you mean 'momentum'?"
        ],
    ),
    (
        "file-after-override",
        {"small.yaml": "seed: 1\n"},
        ["base.yaml", "seed=2", "small.yaml"],
        ["small.yaml: config files come before KEY=VALUE overrides (it follows 'seed=2')"],
    ),
    (
        "duplicate-key-in-a-base",
        {"child.yaml": "base: dup.yaml\n", "dup.yaml": "seed: 0\nmodel: {}\nseed: 1\n"},
        ["child.yaml"],
        ["dup.yaml (line 3, column 1): duplicate key 'seed' (first at line 1)"],
    ),
    (
        "base-not-utf8",
        {"child.yaml": "base: latin.yaml\n", "latin.yaml": "seed: 0 # caf\xe9\n"},
        ["child.yaml"],
        ["child.yaml: base latin.yaml: not UTF-8 text (byte 0xe9 on line 1)"],
    ),
]


@pytest.mark.parametrize(("files", "args", "expect"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_composition_is_exit_2_naming_the_file_and_key(
    files: dict[str, str],
    args: list[str],
    expect: list[str],
    tmp_path: Path,
    write_config: Callable[..., Path],
    base_yaml: str,
    user_error: Callable[..., str],
) -> None:
    write_config(base_yaml, "base.yaml")
    for name, text in files.items():
        text = base_yaml if text == "BASE" else text
        (tmp_path / name).write_bytes(text.encode("latin-1"))
    user_error("fit", *args, expect=expect)
    assert not (tmp_path / "runs").exists()


def test_sixteen_files_in_a_chain_are_allowed(
    tmp_path: Path, write_config: Callable[..., Path], base_yaml: str
) -> None:
    for name, text in chain(MAX_BASE_DEPTH).items():
        write_config(base_yaml if text == "BASE" else text, name)
    assert load_config(tmp_path / "c0.yaml").name == "c0"


# ---------------------------------------------------------------- the run, trust, the tools


def test_the_runs_config_yaml_is_the_merged_config_standing_alone(
    tmp_path: Path, write_config: Callable[..., Path], base_yaml: str, run_cli: Callable
) -> None:
    write_config(base_yaml, "base.yaml")
    write_config("base: base.yaml\noptimizer: {lr: 0.05}\n", "small.yaml")
    write_config("data: {size: 64}\n", "quick.yaml")
    args = ["small.yaml", "quick.yaml", "trainer.epochs=1"]
    result = run_cli("fit", *args)
    assert result.exit_code == 0, result.output
    written = (tmp_path / "runs" / "quick" / "config.yaml").read_text(encoding="utf-8")
    assert "base" not in parse_yaml(written, source="config.yaml")
    assert parse_yaml(written, source="config.yaml") == shown(run_cli("config", *args))
    alone = load_config(tmp_path / "runs" / "quick" / "config.yaml")
    assert alone == load_config(["small.yaml", "quick.yaml"], ["trainer.epochs=1"])


def test_nproc_relaunches_fit_with_the_same_files_and_overrides(
    write_config: Callable[..., Path],
    base_yaml: str,
    run_cli: Callable,
    user_error: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trainer.engine import distributed

    launched: list[list[str]] = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "launch", lambda n, argv, **_: launched.append(argv) or 0)
    write_config(base_yaml, "base.yaml")
    write_config("seed: 1\n", "small.yaml")
    result = run_cli("fit", "base.yaml", "small.yaml", "~optimizer.momentum", "--nproc", "2")
    assert result.exit_code == 0, result.output
    assert launched == [["fit", "base.yaml", "small.yaml", "~optimizer.momentum"]]
    user_error("fit", "base.yaml", "seed=2", "small.yaml", "--nproc", "2", expect=["come before"])
    assert len(launched) == 1  # checked before anything starts


NET = "import torch\n\n\ndef net():\n    return torch.nn.Linear(3, 2)\n"


def test_a_module_beside_a_base_is_the_users_own(
    tmp_path: Path, module: Callable[..., Path], write_config: Callable[..., Path], run_cli
) -> None:
    module("own_by_base", NET, tmp_path / "shared")
    (tmp_path / "variants").mkdir()
    write_config(
        """
        model: {name: 'own_by_base:net'}
        data: {name: shapes, num_classes: 4, size: 16, image_size: 8, batch_size: 8}
        trainer: {epochs: 1, device: cpu}
        """,
        "shared/base.yaml",
    )
    write_config("base: ../shared/base.yaml\nseed: 1\n", "variants/child.yaml")
    result = run_cli("groups", "variants/child.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert '"numel": 8' in result.stdout


SECTIONS = """
data: {name: shapes, num_classes: 4, size: 16, image_size: 8, batch_size: 8}
trainer: {epochs: 1, device: cpu}
"""
EVIL = "model: {name: 'evilmod:Net'}\n"


@pytest.fixture
def elsewhere(tmp_path_factory: pytest.TempPathFactory, module: Callable[..., Path]) -> Path:
    """A directory outside the project (the current directory, tmp_path): a shared base.yaml
    without a model, and beside it evilmod.py, which writes `imported` there when imported."""
    outside = tmp_path_factory.mktemp("elsewhere").resolve()
    source = f"open({str(outside / 'imported')!r}, 'w').close()\n"
    module("evilmod", source + NET.replace("def net", "def Net"), outside)
    (outside / "base.yaml").write_text(SECTIONS, encoding="utf-8")
    return outside


def refused_outside(user_error: Callable[..., str], config: str, base: Path, outside: Path) -> None:
    """`config`'s `evilmod:Net`, beside its base `base` in `outside`, is refused unimported."""
    user_error(
        "groups",
        config,
        "--json",
        expect=[
            "model.name: 'evilmod:Net' is not trusted: 'evilmod' is "
            f"{outside / 'evilmod.py'}, beside the base {base}, whose directory {outside} lies "
            "outside the project",
            f"put {outside} on PYTHONPATH and trust a package from outside the config: "
            "TRAINER_TRUST=evilmod in the environment",
        ],
    )
    assert not (outside / "imported").exists()
    assert str(outside) not in sys.path


@pytest.mark.parametrize("named_in", ["base", "config"])
def test_a_module_beside_a_base_outside_the_project_is_refused_not_imported(
    named_in: str,
    elsewhere: Path,
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
) -> None:
    base = elsewhere / "base.yaml"
    if named_in == "base":
        base.write_text(
            EVIL + "optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\n" + SECTIONS, encoding="utf-8"
        )
        child = write_config(f"base: {base}\n~optimizer.momentum:\n", "child.yaml")
    else:
        child = write_config(f"base: {base}\n{EVIL}", "child.yaml")
    refused_outside(user_error, "child.yaml", base, elsewhere)
    assert read_configs(child).raw["data"]["size"] == 16  # merged all the same: it is data


@pytest.mark.parametrize("link", ["file", "directory"])
def test_a_symlink_in_the_project_to_a_base_outside_it_is_outside(
    link: str,
    tmp_path: Path,
    elsewhere: Path,
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
) -> None:
    (elsewhere / "base.yaml").write_text(EVIL + SECTIONS, encoding="utf-8")
    if link == "file":
        (tmp_path / "linked.yaml").symlink_to(elsewhere / "base.yaml")
        base = Path("linked.yaml")
    else:
        (tmp_path / "vendor").symlink_to(elsewhere, target_is_directory=True)
        base = Path("vendor/base.yaml")
    write_config(f"base: {base}\nseed: 1\n", "child.yaml")
    refused_outside(user_error, "child.yaml", base, elsewhere)


def test_a_module_beside_a_base_under_the_command_lines_config_is_the_users_own(
    elsewhere: Path, module: Callable[..., Path], run_cli: Callable
) -> None:
    # The project is elsewhere, not the current directory: its configs/common/base.yaml counts.
    module("own_by_common", NET, elsewhere / "configs" / "common")
    common = elsewhere / "configs" / "common" / "base.yaml"
    common.write_text("model: {name: 'own_by_common:net'}\n" + SECTIONS, encoding="utf-8")
    config = elsewhere / "configs" / "small.yaml"
    config.write_text("base: common/base.yaml\nseed: 1\n", encoding="utf-8")
    result = run_cli("groups", config, "--json")
    assert result.exit_code == 0, result.output
    assert '"numel": 8' in result.stdout


def test_lr_find_takes_several_files(
    write_config: Callable[..., Path], base_yaml: str, run_cli: Callable
) -> None:
    write_config(base_yaml, "base.yaml")
    rule = "param_groups:\n  rules:\n    - {name: head, match: '^fc\\.', lr_mult: 10}\n"
    write_config(rule, "head.yaml")
    args = ["base.yaml", "head.yaml", "data.size=64"]
    result = run_cli("lr-find", *args, "--start", "1e-4", "--end", "1", "--steps", "6", "--json")
    assert result.exit_code == 0, result.output
    group_lrs = json.loads(result.stdout)["group_lr"]
    assert sorted(group_lrs) == ["default", "head"]
    assert group_lrs["head"][0] == pytest.approx(10 * group_lrs["default"][0])
    result = run_cli("lr-find", *args, "--start", "1e-4", "--end", "3", "--steps", "30")
    assert result.exit_code == 0, result.output
    assert "use it: trainer fit base.yaml head.yaml data.size=64 optimizer.lr=" in result.stdout


def test_sweep_trials_get_the_same_files_and_overrides(
    tmp_path: Path, write_config: Callable[..., Path], base_yaml: str, run_cli: Callable
) -> None:
    write_config(base_yaml, "base.yaml")
    write_config("optimizer: {momentum: 0.5}\ntrainer: {epochs: 1}\n", "short.yaml")
    space = write_config("optimizer.lr: {choice: [0.05, 0.07]}\npruner: none\n", "space.yaml")
    command = ["base.yaml", "short.yaml", "data.size=64", "~trainer.log_every"]
    result = run_cli("sweep", *command, "--space", space, "--trials", "1")
    assert result.exit_code == 0, result.output
    study = tmp_path / "runs" / "short-sweep"  # the last file's stem
    trial = load_config(study / "trial-0000" / "config.yaml")
    assert (trial.optimizer.momentum, trial.trainer.epochs, trial.data.size) == (0.5, 1, 64)
    default = load_config(["base.yaml", "short.yaml"], ["~trainer.log_every"]).trainer.log_every
    assert trial.trainer.log_every == default != 2
    assert trial.optimizer.lr in (0.05, 0.07)
    best = (study / "best.yaml").read_text(encoding="utf-8")
    assert "base:" not in best
    assert load_config(study / "best.yaml").optimizer.momentum == 0.5


def test_the_quickstart_adamw_example(run_cli: Callable) -> None:
    example = ROOT / "configs" / "quickstart_adamw.yaml"
    config = shown(run_cli("config", example))
    assert config["name"] == "quickstart_adamw"
    assert config["optimizer"] == {"name": "AdamW", "lr": 3.0e-3, "weight_decay": 0.05}
    assert config["scheduler"]["name"] == "StepLR"  # the base's, kept
    assert config["trainer"]["epochs"] == 4
    origin = run_cli("config", example, "--origin").stdout
    assert re.search(r"^  name: StepLR +# .*configs/quickstart\.yaml:9$", origin, re.MULTILINE)


# ---------------------------------------------------------------- the printed config loads back

EXAMPLES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.stem != "quickstart_space")


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("origin", [False, True], ids=["plain", "origin"])
def test_every_examples_printed_config_loads_back_as_the_same(
    example: str, origin: bool, tmp_path: Path, run_cli: Callable[..., Result]
) -> None:
    """`trainer config X` (and its --origin form) is a config that loads back as X does: the
    several-optimizer form's defaults included (freeze and freeze_norm_stats are global)."""
    resolved = load_config(ROOT / "configs" / example)
    printed = run_cli("config", ROOT / "configs" / example, *(["--origin"] if origin else []))
    assert printed.exit_code == 0, printed.output
    (tmp_path / "printed.yaml").write_text(printed.stdout, encoding="utf-8")
    loaded = load_config(tmp_path / "printed.yaml")
    assert loaded.to_dict() == resolved.to_dict()
    assert loaded == resolved


def test_a_gan_runs_config_yaml_loads_back_as_the_run_it_trained(
    tmp_path: Path, run_cli: Callable[..., Result]
) -> None:
    args = [ROOT / "configs" / "gan.yaml", "data.n=256", "trainer.max_steps=2"]
    args += ["trainer.device=cpu", "data.val_batch_size=256"]
    result = run_cli("fit", *args)
    assert result.exit_code == 0, result.output
    written = tmp_path / "runs" / "gan" / "config.yaml"
    assert load_config(written) == load_config(args[0], [str(a) for a in args[1:]])
    again = run_cli("config", written)
    assert again.exit_code == 0, again.output
