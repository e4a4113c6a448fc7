"""Bad input of every kind ends as exit 2 by key, with no traceback and nothing written; a bug in
the user's own code ends as exit 1 with their traceback."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from trainer.components import registry
from trainer.config import MAX_DEPTH, parse_yaml, validate_config
from trainer.errors import MAX_PROBLEM_LENGTH, UserError

MINIMAL = {"name": "m", "model": {"name": "small_cnn"}, "data": {"name": "shapes"}}


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """`module(name, source)`: a module of the user's in tmp_path; sys.modules forgets it after."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()
        return path

    return write


# ---------------------------------------------------------------- the file itself


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("model: {name: x}\n".encode("utf-16"), "UTF-16 text (a byte-order mark)"),
        ("model: {name: x}\n".encode("utf-32"), "UTF-32 text (a byte-order mark)"),
        ("model: {name: x}\n".encode("utf-16-le"), "a NUL byte on line 1"),
        (b"name: x\nmodel: {name: caf\xe9}\n", "not UTF-8 text (byte 0xe9 on line 2)"),
        (bytes(range(256)), "a NUL byte on line 1"),
    ],
    ids=["utf-16", "utf-32", "utf-16-without-bom", "latin-1", "binary"],
)
@pytest.mark.parametrize("command", ["config", "fit"])
def test_files_that_are_not_utf8_text(command, content, fragment, user_error, tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    user_error(command, path, expect=[f"config {path}: {fragment}"])
    assert not (tmp_path / "runs").exists()


def test_utf8_with_a_byte_order_mark_is_read(tiny_yaml, run_cli, tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes("\ufeff".encode() + tiny_yaml.encode())
    assert run_cli("config", path).exit_code == 0


def test_deep_nesting_is_refused_with_its_place(user_error, tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("model: " + "[" * 100_000, encoding="utf-8")
    user_error("config", path, expect=[f"{path} (line 1, column", "nested more than 100 levels"])


def test_nesting_within_the_cap_is_read() -> None:
    depth = MAX_DEPTH - 1
    assert parse_yaml("[" * depth + "]" * depth, source="t") is not None


# ---------------------------------------------------------------- duplicate keys


def test_duplicate_section_names_the_key_and_both_lines(tiny_yaml, user_error, write_config):
    path = write_config(tiny_yaml + "trainer: {epochs: 5}\n")
    first = tiny_yaml.splitlines().index("trainer: {epochs: 2, device: cpu, log_every: 2}") + 1
    last = len(tiny_yaml.splitlines()) + 1
    user_error(
        "config",
        path,
        expect=[f"{path} (line {last}, column 1): duplicate key 'trainer' (first at line {first})"],
    )


def test_duplicate_nested_keys_are_all_reported_by_their_path() -> None:
    text = "trainer:\n  epochs: 1\n  epochs: 2\nmodel: {name: a, name: b}\n"
    with pytest.raises(UserError) as info:
        parse_yaml(text, source="c.yaml")
    assert info.value.problems == [
        "c.yaml (line 3, column 3): duplicate key 'trainer.epochs' (first at line 2): keys are "
        "unique in YAML, and the second would silently replace the first",
        "c.yaml (line 4, column 18): duplicate key 'model.name' (first at line 4): keys are "
        "unique in YAML, and the second would silently replace the first",
    ]


def test_merge_keys_are_not_duplicates() -> None:
    text = "base: &b {lr: 0.1, momentum: 0.9}\noptimizer: {<<: *b, lr: 0.2}\n"
    assert parse_yaml(text, source="t")["optimizer"] == {"lr": 0.2, "momentum": 0.9}


# ---------------------------------------------------------------- alias bombs, long values


BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
model: {name: small_cnn}
data: {name: shapes}
trainer: {epochs: [*e, *e]}
"""


def test_alias_bomb_is_refused_in_a_short_message(user_error, write_config) -> None:
    stderr = user_error(
        "config", write_config(BOMB), expect=["too many values: the value here holds more than"]
    )
    assert len(stderr) < 500


def test_a_long_plain_list_says_which_limit_it_hit() -> None:
    text = "xs: [" + ", ".join(["1"] * 100_001) + "]\n"
    with pytest.raises(UserError) as info:
        parse_yaml(text, source="t")
    assert info.value.problems == [
        "t (line 1, column 5): too many values: the value here holds more than 100,000 "
        "(aliases counted as often as they are used), far more than any config"
    ]


def test_an_unhashable_mapping_key_is_named_as_such() -> None:
    with pytest.raises(UserError) as info:
        parse_yaml("a: 1\n? [a, b]\n: 1\n", source="t")
    assert info.value.problems == [
        "t (line 2, column 3): a mapping key is a list or a mapping; keys are plain values "
        "(a name, a number)"
    ]


def test_a_config_path_that_is_a_fifo_is_not_a_regular_file(user_error, tmp_path) -> None:
    os.mkfifo(tmp_path / "cfg.yaml")
    user_error("config", tmp_path / "cfg.yaml", expect=["cfg.yaml: not a regular file"])


def test_aliases_that_nest_beyond_the_cap_are_refused() -> None:
    lines, previous = [], "1"
    for index in range(20):  # each anchor nests 90 levels around the one before
        lines.append(f"a{index}: &a{index} " + "[" * 90 + previous + "]" * 90)
        previous = f"*a{index}"
    with pytest.raises(UserError, match=r"line 2, .*aliases nest the value here more than 100"):
        parse_yaml("\n".join(lines), source="t")


def test_aliases_within_the_cap_still_work() -> None:
    text = "a: &a [1, 2]\nb: [*a, *a]\n"
    assert parse_yaml(text, source="t")["b"] == [[1, 2], [1, 2]]


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(UserError, match=r"line 1, column 4\): an alias refers to a value"):
        parse_yaml("a: &a [*a]\n", source="t")


def test_echoed_values_are_short(tiny_yaml, user_error, write_config) -> None:
    huge = "x" * 1_000_000
    text = tiny_yaml.replace("epochs: 2", f"epochs: {huge}")
    stderr = user_error("config", write_config(text), expect=["trainer.epochs:", "xxx...xxx"])
    assert len(stderr) < 500


def test_no_error_line_is_longer_than_the_cap() -> None:
    (problem,) = UserError("k: " + "y" * 10 * MAX_PROBLEM_LENGTH).problems
    assert len(problem) <= MAX_PROBLEM_LENGTH
    assert problem.startswith("k: yyy") and " ... " in problem


def test_a_long_out_dir_gives_lines_within_the_cap(tiny_yaml, write_config, user_error) -> None:
    out_dir = "d" * 5_000
    stderr = user_error(
        "fit", write_config(tiny_yaml), f"trainer.out_dir={out_dir}", expect=["trainer.out_dir"]
    )
    assert max(len(line) for line in stderr.splitlines()) == MAX_PROBLEM_LENGTH


# ---------------------------------------------------------------- types and numbers


@pytest.mark.parametrize(
    ("section", "value", "problem"),
    [
        ("trainer", {"epochs": True}, "trainer.epochs: Input should be a valid integer (got True)"),
        ("seed", True, "seed: Input should be a valid integer (got True)"),
        (
            "data",
            {"name": "shapes", "batch_size": False},
            "data.batch_size: Input should be a valid integer (got False)",
        ),
        (
            "data",
            {"name": "shapes", "shuffle": 1},
            "data.shuffle: Input should be a valid boolean (got 1)",
        ),
    ],
)
def test_booleans_are_not_integers_nor_integers_booleans(section, value, problem) -> None:
    with pytest.raises(UserError) as info:
        validate_config({**MINIMAL, section: value})
    assert info.value.problems == [problem]


def test_integer_overrides_still_work(tiny_yaml, write_config, run_cli) -> None:
    result = run_cli("config", write_config(tiny_yaml), "trainer.epochs=3", "seed=4")
    assert result.exit_code == 0, result.output
    assert "epochs: 3\n" in result.stdout
    assert "seed: 4\n" in result.stdout


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("optimizer.lr=.nan", "optimizer.lr"),
        ("optimizer.weight_decay=.inf", "optimizer.weight_decay"),
        ("optimizer={name: Adam, betas: [0.9, -.inf]}", "optimizer.betas.1"),
        ("trainer.clip_grad_norm=.nan", "trainer.clip_grad_norm"),
        ("param_groups.rules=[{name: head, match: fc, lr: .nan}]", "param_groups.rules.0.lr"),
        (
            "param_groups.rules=[{name: head, match: fc, momentum: .inf}]",
            "param_groups.rules.0.momentum",
        ),
    ],
)
def test_every_float_in_a_config_is_finite(
    override, path, tiny_yaml, write_config, user_error, tmp_path
) -> None:
    stderr = user_error(
        "fit", write_config(tiny_yaml), override, expect=[f"{path}: ", "is not a finite number"]
    )
    assert stderr.count("error: ") == 1  # the schema's own verdict on the value is not repeated
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- regexes


@pytest.mark.parametrize(
    "pattern",
    [r"^([a-z0-9_]+\.?)+!$", r"(a+)+", r"(a|ab)*c", r"(\d?x)+", r"(?:[a-z]{1,3}\.)*fc"],
)
def test_catastrophic_regexes_are_refused_naming_the_rule(
    pattern, tiny_yaml, write_config, user_error
) -> None:
    text = tiny_yaml + f"param_groups:\n  rules:\n    - {{name: slow, match: '{pattern}'}}\n"
    user_error(
        "groups",
        write_config(text),
        expect=["param_groups.rules.0.match: the regex repeats a part", "rule 'slow'"],
    )


def test_catastrophic_freeze_regex_is_refused(tiny_yaml, write_config, user_error) -> None:
    text = tiny_yaml + "param_groups:\n  freeze: ['^([a-z0-9_]+\\.?)+!$']\n"
    user_error("groups", write_config(text), expect=["param_groups.freeze.0: the regex repeats"])


POLYNOMIAL = ".*" * 24 + "!"  # no nested repeat, and still C(n+24, 24) tries per name


@pytest.mark.parametrize(
    ("section", "key"),
    [
        (f"param_groups:\n  freeze: ['{POLYNOMIAL}']\n", "param_groups.freeze.0"),
        (
            f"param_groups:\n  rules:\n    - {{name: slow, match: '{POLYNOMIAL}'}}\n",
            "param_groups.rules.0.match",
        ),
        (
            "optimizers:\n  a:\n    params: '" + r"\w*\w*[a-z]*.*x" + "'\n"
            "    optimizer: {name: SGD, lr: 0.1}\n",
            "optimizers.a.params",
        ),
    ],
)
def test_regexes_of_many_repeats_in_a_row_are_refused(
    section, key, tiny_yaml, write_config, user_error
) -> None:
    text = tiny_yaml.replace("optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\n", "") + section
    degree = 24 if POLYNOMIAL in section else 4
    user_error(
        "config",
        write_config(text),
        expect=[f"{key}: the regex has {degree} repeats in a row", "at most 3"],
    )


@pytest.mark.parametrize(
    "pattern",
    [
        r"^layer[2-4]\.",
        r".*a.*b.*c",
        r"layer[0-9]+\.[0-9]+\.conv[0-9]?\.weight",
        r"^[a-z]+\.[a-z]+\.[a-z]+\.[a-z]+\.[a-z]+\.weight$",
        r"(a|b).*.*.*",
        r"^fc\.",
        r"bias$",
        r"^(conv\d)+",
        r"(ab)+",
        r"(a{3})*",
        r"^(encoder|dec)\.",
    ],
)
def test_ordinary_regexes_are_accepted(pattern: str) -> None:
    rules = {"rules": [{"name": "r", "match": pattern}], "freeze": [pattern]}
    validate_config({**MINIMAL, "param_groups": rules})


# ---------------------------------------------------------------- keys the runner sets


def test_scheduler_last_epoch_says_resume_continues_a_schedule(
    tiny_yaml, write_config, user_error, tmp_path
) -> None:
    text = tiny_yaml + "scheduler: {name: StepLR, step_size: 1, last_epoch: 3}\n"
    user_error(
        "fit",
        write_config(text),
        expect=["scheduler.last_epoch: set by the runner", "trainer fit --resume"],
    )
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- stages reported together


def test_schema_and_component_problems_in_one_message(tiny_yaml, write_config, user_error) -> None:
    stderr = user_error(
        "fit",
        write_config(tiny_yaml),
        "trainer.epoch=3",
        "optimizer.name=adamm",
        expect=["trainer.epoch: unknown key", "optimizer.name: unknown 'adamm'"],
    )
    assert stderr.count("error: ") == 2


def test_schema_and_component_problems_of_several_optimizers_in_one_message(
    tiny_yaml, write_config, user_error
) -> None:
    text = tiny_yaml.replace("optimizer: {name: SGD, lr: 0.1, momentum: 0.9}\n", "") + (
        "optimizers:\n"
        "  d_a: {params: conv, optimizer: {name: SGD, lr: 0.1}}\n"
        "  g: {params: fc, optimizer: {name: Adam, lr: 0.1}, scheduler: {name: StepLRR}}\n"
    )
    stderr = user_error(
        "config",
        write_config(text),
        "trainer.epoch=3",
        "optimizers.d_a.optimizer.name=adamm",
        "model.hiden=3",
        expect=[
            "trainer.epoch: unknown key",
            "model.hiden: not an argument of small_cnn",
            "optimizers.d_a.optimizer.name: unknown 'adamm'",
            "optimizers.g.scheduler.name: unknown 'StepLRR'",
        ],
    )
    assert stderr.count("error: ") == 4


def test_a_section_that_fails_the_schema_is_not_checked_again(
    tiny_yaml, write_config, user_error
) -> None:
    stderr = user_error(
        "fit",
        write_config(tiny_yaml),
        "data.batch_size=0",
        "optimizer.name=adamm",
        expect=["data.batch_size:", "optimizer.name: unknown 'adamm'"],
    )
    assert stderr.count("error: ") == 2


# ---------------------------------------------------------------- import paths


@pytest.mark.parametrize("path", [":", "x:", ":y", "a b:c", "x:y:z", "1x:y"])
def test_malformed_import_paths(path, tiny_yaml, write_config, user_error) -> None:
    text = tiny_yaml.replace("name: small_cnn,", f"name: {path!r},")
    user_error(
        "groups",
        write_config(text),
        expect=[f"model.name: {path!r} is not an import path: expected 'package.module:callable'"],
    )


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        ("import torch\n\ndef net(:\n", 3, "SyntaxError: invalid syntax"),
        ("import torch\nraise ValueError('boom')\n", 2, "ValueError: boom"),
        ("import torch\nimport no_such_dependency\n", 2, "No module named 'no_such_dependency'"),
        ("def helper():\n    return {}['k']\n\nhelper()\n", 2, "KeyError: 'k'"),
    ],
    ids=["syntax", "raise", "missing-dependency", "raise-in-a-function"],
)
@pytest.mark.parametrize("command", ["groups", "fit"])
def test_a_module_that_fails_to_import_names_the_place(
    command, source, line, error, module, tiny_yaml, write_config, user_error, tmp_path
) -> None:
    where = module("broken_mod", source)
    text = tiny_yaml.replace("name: small_cnn,", "name: 'broken_mod:net',")
    user_error(
        command,
        write_config(text),
        expect=[
            f"model.name: importing 'broken_mod' for 'broken_mod:net' failed at {where}:{line}",
            error,
        ],
    )
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the user's own code


USER_MODELS = """\
import torch


def net(width: int = 3):
    return torch.nn.Linear(width, 2)


class Buggy(torch.nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(width, 2)
        self.table = {}["missing"]


def positional(width, /, **options):
    return torch.nn.Linear(width, 2)
"""


def user_model_config(write_config: Callable[..., Path], tiny_yaml: str, model: str) -> Path:
    """The tiny config with `model: {model}` (a YAML flow mapping)."""
    lines = [line for line in tiny_yaml.splitlines() if not line.startswith("model:")]
    return write_config("\n".join([*lines, f"model: {model}"]) + "\n")


def test_a_bug_in_the_users_model_is_exit_1_with_their_traceback(
    module, tiny_yaml, write_config, run_cli
) -> None:
    where = module("user_models", USER_MODELS)
    config = user_model_config(write_config, tiny_yaml, "{name: 'user_models:Buggy'}")
    result = run_cli("groups", config)
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)
    (last,) = traceback.extract_tb(result.exception.__traceback__)[-1:]
    assert (last.filename, last.lineno) == (str(where), 12)
    assert "a bug in that code, not a problem of the config" in result.exception.__notes__[0]


def test_argument_problems_with_the_users_callable_stay_exit_2(
    module, tiny_yaml, write_config, user_error
) -> None:
    module("user_models", USER_MODELS)
    user_error(
        "groups",
        user_model_config(write_config, tiny_yaml, "{name: 'user_models:positional', width: 3}"),
        expect=["model: user_models:positional cannot take these arguments", "positional only"],
    )
    user_error(
        "groups",
        user_model_config(write_config, tiny_yaml, "{name: 'user_models:net', width: -1}"),
        expect=["model: user_models:net rejected its arguments", "negative dimension"],
    )


def test_registry_build_lets_the_users_own_errors_through(module, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module("user_models", USER_MODELS)
    with pytest.raises(KeyError, match="missing"):
        registry.build("models", "user_models:Buggy", {}, key="model")
    with pytest.raises(UserError, match="rejected its arguments"):
        registry.build("models", "small_cnn", {"width": -1}, key="model")


def test_console_script_imports_modules_from_the_current_directory(tmp_path) -> None:
    (tmp_path / "mymods.py").write_text(USER_MODELS, encoding="utf-8")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "cfg.yaml").write_text(
        'model: {name: "mymods:net"}\ndata: {name: shapes}\n', encoding="utf-8"
    )
    script = Path(sys.executable).parent / "trainer"  # the installed console script
    done = subprocess.run(
        [str(script), "groups", "configs/cfg.yaml", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert '"numel": 8' in done.stdout


@pytest.mark.parametrize(
    "command", [["trainer"], [sys.executable, "-m", "trainer"]], ids=["script", "python-m"]
)
def test_files_named_like_the_stdlib_or_a_package_shadow_nothing(command, tmp_path) -> None:
    """A project's own json.py, shlex.py or numpy.py: the runner imports the real ones, and
    the user's modules still import from the current directory."""
    for shadow in ("json", "shlex", "numpy", "typing_extensions"):
        (tmp_path / f"{shadow}.py").write_text(f"raise RuntimeError('my own {shadow}.py')\n")
    (tmp_path / "mymods.py").write_text(USER_MODELS, encoding="utf-8")
    (tmp_path / "cfg.yaml").write_text(
        'model: {name: "mymods:net"}\ndata: {name: shapes}\n', encoding="utf-8"
    )
    if command == ["trainer"]:
        command = [str(Path(sys.executable).parent / "trainer")]  # the installed console script
    done = subprocess.run(
        [*command, "groups", "cfg.yaml", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert '"numel": 8' in done.stdout


def test_a_module_named_like_an_installed_package_is_named_to_rename(
    tmp_path, write_config, user_error
) -> None:
    (tmp_path / "numpy.py").write_text("def net():\n    pass\n")
    config = write_config('model: {name: "numpy:net"}\ndata: {name: shapes}\n')
    user_error(
        "groups",
        config,
        expect=[
            f"model.name: 'numpy:net' imports the installed package 'numpy', not your "
            f"{tmp_path / 'numpy.py'}",
            "rename your file",
        ],
    )


def test_a_deleted_current_directory_is_one_line_and_exit_2(tmp_path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    script = Path(sys.executable).parent / "trainer"
    for command in (str(script), f"{sys.executable} -m trainer"):
        done = subprocess.run(
            ["sh", "-c", f"cd {gone} && rmdir {gone} && exec {command} config cfg.yaml"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            "error: the current directory no longer exists (it was deleted or moved); "
            "cd to a directory that exists and run the command again\n"
        )
        gone.mkdir()
