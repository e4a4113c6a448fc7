"""Regex safety: a regex from a config (`freeze`, a rule's `match`, `optimizers.<name>.params`)
is matched against every parameter name, so one that can backtrack for a long time is refused.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any

from pydantic import AfterValidator

if sys.version_info >= (3, 11):
    from re import _compiler as sre_compile
    from re import _constants as sre_constants
    from re import _parser as sre_parse

    _POSSESSIVE, _ATOMIC = (sre_constants.POSSESSIVE_REPEAT,), sre_constants.ATOMIC_GROUP
else:  # Python 3.10: the same parser under its old names, without possessive repeats
    import sre_compile
    import sre_constants
    import sre_parse

    _POSSESSIVE, _ATOMIC = (), None


def _check_regex(pattern: str) -> str:
    """The pattern, if it compiles and cannot backtrack for long; else a ValueError saying why."""
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid regex {pattern!r}: {err.msg} at position {err.pos}") from None
    parsed = sre_parse.parse(pattern)
    if _repeats_a_varying_part(parsed):
        raise ValueError(
            "the regex repeats a part that itself varies in length (like '(a+)+', '(a?b)*' "
            "or '(a|ab)+'), which can take exponential time on a long name; give the repeated "
            r"part one length, e.g. '[a-z0-9_.]+' for '([a-z0-9_]+\.?)+'"
        )
    degree = _degree(parsed, parsed.state)
    if degree > MAX_REGEX_DEGREE:
        raise ValueError(
            f"the regex has {degree} repeats in a row that can match the same characters "
            "(like '.*.*.*.*'), so matching it can take a name's length to the power "
            f"{degree} steps; at most {MAX_REGEX_DEGREE}: write one '.*' where several follow "
            "each other, or part them by a character they cannot match (like '\\.')"
        )
    return pattern


# Repeats in a row that can share characters: a name of length n can take ~n**degree steps
# to match (200 characters: 0.07 s at 3, 2.6 s at 4, minutes at 5).
MAX_REGEX_DEGREE = 3
_ALPHABET = [chr(code) for code in range(128)]  # what parameter names are made of


def _degree(items: Any, state: sre_parse.State) -> int:
    """The most repeats of varying length in a row that can match the same characters
    (`.*a.*b` 2, `[0-9]+,[0-9]+` 1: a character only one side matches ends a run)."""
    best = run = 0
    run_chars: set[str] = set()
    for op, arg in _inlined(items):
        if op in (sre_constants.BRANCH, sre_constants.GROUPREF_EXISTS):
            run += max((_degree(part, state) for part in _parts(op, arg)), default=0)
            run_chars = set(_ALPHABET)
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            best = max(best, _degree(arg[1], state))
        elif op == sre_constants.AT:
            continue
        else:
            low, high, body = arg if op in _REPEATS else (1, 1, [(op, arg)])
            chars = _chars(body, state)
            if low >= 1 and not chars & run_chars:  # a required character ends the run
                run, run_chars = 0, set()
            if low != high:
                run, run_chars = run + 1, run_chars | chars
        best = max(best, run)
    return best


def _inlined(items: Any) -> list[Any]:
    """Parsed regex items with groups replaced by their contents (they match alike)."""
    found = []
    for op, arg in items:
        if op in (sre_constants.SUBPATTERN, _ATOMIC):
            found += _inlined(_parts(op, arg)[0])
        else:
            found.append((op, arg))
    return found


def _chars(body: Any, state: sre_parse.State) -> set[str]:
    """The characters a parsed part can match (all of them for a part of several kinds)."""
    singles = (
        sre_constants.LITERAL,
        sre_constants.NOT_LITERAL,
        sre_constants.ANY,
        sre_constants.IN,
    )
    found: set[str] = set()
    for item in _inlined(body):
        if item[0] not in singles:
            return set(_ALPHABET)
        for flags in (0, re.IGNORECASE):  # both: a group's own (?i) is not in `state`
            matcher = sre_compile.compile(sre_parse.SubPattern(state, [item]), flags)
            found.update(char for char in _ALPHABET if matcher.fullmatch(char))
    return found


_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, *_POSSESSIVE)


def _repeats_a_varying_part(items: Any) -> bool:
    """Whether a parsed regex repeats (*, +, {m,n}) a part that can match in several lengths:
    nested repetition (star height > 1) and repeated alternatives, the backtracking blow-ups."""
    for op, arg in items:
        if op in _REPEATS and arg[1] > 1 and _varies(arg[2]):
            return True
        if any(_repeats_a_varying_part(part) for part in _parts(op, arg)):
            return True
    return False


def _varies(items: Any) -> bool:
    """Whether a parsed regex holds a repeat of several lengths or an alternative."""
    for op, arg in items:
        if op in _REPEATS and arg[0] != arg[1]:
            return True
        if op in (sre_constants.BRANCH, sre_constants.GROUPREF_EXISTS):
            return True
        if any(_varies(part) for part in _parts(op, arg)):
            return True
    return False


def _parts(op: Any, arg: Any) -> list[Any]:
    """The sub-patterns inside one parsed regex item."""
    if op in _REPEATS:
        return [arg[2]]
    if op == sre_constants.SUBPATTERN:
        return [arg[-1]]
    if op == sre_constants.BRANCH:
        return list(arg[1])
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
        return [arg[1]]
    if op == sre_constants.GROUPREF_EXISTS:
        return [part for part in arg[1:] if part is not None]
    if op == _ATOMIC:
        return [arg]
    return []


Regex = Annotated[str, AfterValidator(_check_regex)]
