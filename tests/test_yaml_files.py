"""trainer.config.yaml_files, the hardened YAML loader: a config file that is not UTF-8 text or
not a regular file, nesting, duplicate keys, aliases (bombs, nesting, recursion) and long values
are exit 2 with their place, no traceback and nothing written."""

from __future__ import annotations

import os

import pytest

from trainer.config import MAX_DEPTH, parse_yaml
from trainer.errors import UserError

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
