"""trainer.config.regexes: the regexes of `param_groups` and `optimizers.*.params` that could
take exponential or high polynomial time are refused by key, naming the rule; ordinary ones pass."""

from __future__ import annotations

import pytest
from helpers.configs import MINIMAL

from trainer.config import validate_config


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
